"""How far to trust the maps, on a model's test photos (README "How far to trust a map").

For each photo (cropped to the dataset's lesion box, as the example cases are), Grad-CAM and
LIME of the predicted class:

* faithfulness: deletion / insertion AUC (``derm_core.explain.mapquality``; lower deletion than a random
  pixel order = faithful) and, for Grad-CAM, ROAD (``pytorch_grad_cam.metrics``);
* share of the map's weight inside the dataset's lesion mask, against the mask's area share;
* model-randomisation sanity check (Adebayo et al. 2018): the same maps from copies of the
  network with the head, and then every layer, re-initialised; the Spearman rank correlation
  with the trained network's map must be low (a map that survives randomisation explains the
  photo, not the model).

    python bench/sanity_maps.py --data ../shared/data/ham10000 [--model CARD] [--n 10] [--no-road]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.images import load_image  # noqa: E402
from derm_core.data.splits import split_rows  # noqa: E402
from derm_core.explain import mapquality as Q  # noqa: E402
from derm_core.explain import maps as E  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402


def _crop_and_mask(row):
    from PIL import Image
    photo = load_image(row["path"])
    mask = None
    if isinstance(row.get("mask_path"), str) and Path(row["mask_path"]).is_file():
        mask = np.asarray(Image.open(row["mask_path"]).convert("L").resize(photo.size)) > 127
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        mx, my = int(0.15 * (xs.max() - xs.min() + 1)), int(0.15 * (ys.max() - ys.min() + 1))
        box = (max(0, xs.min() - mx), max(0, ys.min() - my), min(w, xs.max() + 1 + mx), min(h, ys.max() + 1 + my))
        return photo.crop(box), mask[box[1]:box[3], box[0]:box[2]]
    return photo, None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/ham10000")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--samples", type=int, default=E.LIME_SAMPLES)
    ap.add_argument("--no-road", action="store_true", help="skip ROAD (the slowest part)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, threads {torch.get_num_threads()}")
    pred = Predictor.from_path(a.model)
    nets = {"head randomised": Q.randomised_copy(pred.model, seed=1, head_only=True),
            "all layers randomised": Q.randomised_copy(pred.model, seed=1)}
    rand = {k: Predictor(v, pred.card, pred.device) for k, v in nets.items()}
    table = load_table(a.data, pred.taxonomy)
    test = split_rows(table, pred.card.split_file, "test")
    rows = test.sample(n=min(a.n, len(test)), random_state=0)
    res = {m: {k: [] for k in ("del", "rdel", "ins", "inside", "area", "faithful", "road", "sim_head", "sim_all", "sec")}
           for m in ("gradcam", "lime")}
    for _, row in rows.iterrows():
        crop, mask = _crop_and_mask(row)
        target = E.predicted_class(pred, crop)
        t0 = time.perf_counter()
        maps = {"gradcam": E.cam_heatmap(pred, crop, target, "gradcam").heatmap,
                "lime": Q.lime_attribution(E.lime_explanation(pred, crop, target, num_samples=a.samples))}
        for m, att in maps.items():
            q = Q.map_quality(pred, crop, att, target, method=m, lesion_mask=mask)
            r = res[m]
            r["del"].append(q.deletion), r["rdel"].append(q.random_deletion), r["ins"].append(q.insertion)
            r["faithful"].append(q.faithful)
            if q.inside_lesion is not None:
                r["inside"].append(q.inside_lesion), r["area"].append(q.lesion_area)
            if m == "gradcam" and not a.no_road:
                r["road"].append(Q.road_score(pred, crop, att, target))
            for key, rp in (("sim_head", rand["head randomised"]), ("sim_all", rand["all layers randomised"])):
                other = (E.cam_heatmap(rp, crop, target, "gradcam").heatmap if m == "gradcam" else
                         Q.lime_attribution(E.lime_explanation(rp, crop, target, num_samples=a.samples)))
                r[key].append(Q.map_similarity(att, other))
        print(f"{row['image_id']} ({row['label']}): {time.perf_counter() - t0:.1f} s", flush=True)
    mean = lambda v: float(np.nanmean(v)) if len(v) else float("nan")  # noqa: E731
    print(f"\n{len(rows)} test photos; means (deletion: lower is better, insertion: higher is better)")
    print("map      deletion  random-del  insertion  faithful  ROAD    inside-lesion  lesion-area  "
          "rank-corr(head rand.)  rank-corr(all rand.)")
    for m, r in res.items():
        print(f"{m:<8} {mean(r['del']):.3f}     {mean(r['rdel']):.3f}       {mean(r['ins']):.3f}      "
              f"{mean(r['faithful']):.2f}      {mean(r['road']):+.3f}  {mean(r['inside']):.3f}          "
              f"{mean(r['area']):.3f}        {mean(r['sim_head']):+.3f}                 {mean(r['sim_all']):+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
