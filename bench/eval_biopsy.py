"""Biopsy-site and lesion-box evaluation on the HAM10000 test split (with its masks).

    python bench/eval_biopsy.py --data ../shared/data/ham10000 [--model weights/default/model.json] [--n 200]

For each photo the Triage page's own pipeline runs, as for an uploaded photo: the suggested crop
(lesion.suggest_crop, the page's rule), the automatic lesion outline of that crop
(lesion.suggest_mask), LIME at the page defaults on the crop, and the biopsy site
(lesion.biopsy_site, the page's choice). Reported: the share of biopsy sites inside the
dataset's ground-truth lesion mask, against the earlier choice (explain.biopsy_site alone) and
three baselines (the outline's deepest point, the Grad-CAM peak and the crop centre), and the
IoU of the automatic lesion box/mask with the dataset's boxes/masks over the whole split.

``--n 0`` uses every test photo. ``--cache DIR`` keeps each photo's LIME result, so a rerun
(e.g. after changing the choice of site) only rescores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.images import load_image  # noqa: E402
from derm_core.data.splits import load_splits  # noqa: E402
from derm_core.explain import maps as E  # noqa: E402
from derm_core.explain.lesion import biopsy_site, box_iou, mask_box, mask_iou, suggest_box, suggest_crop, suggest_mask  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402
from derm_core.settings import SHIPPED_MODEL  # noqa: E402
from derm_core.triage.rules import biopsy_class  # noqa: E402


def inside(mask: np.ndarray, point: tuple[int, int]) -> bool:
    x, y = point
    return bool(mask[y, x])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=str(SHIPPED_MODEL))
    ap.add_argument("--n", type=int, default=200, help="test photos for the LIME part, 0: all (all are used for boxes)")
    ap.add_argument("--cache", help="folder for per-photo LIME results (reused by a rerun)")
    ap.add_argument("--skip-boxes", action="store_true", help="only the biopsy part")
    ap.add_argument("--cached-only", action="store_true", help="only the photos with a LIME result in --cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()
    pred = Predictor.from_path(a.model)
    table = load_table(a.data, pred.taxonomy)
    split = load_splits(table, pred.card.split_file)
    test = table[(split == "test").to_numpy() & table["mask_path"].notna().to_numpy()].reset_index(drop=True)

    box_ious, bbox_ious, mask_ious = [], [], []
    for r in tqdm([] if a.skip_boxes else list(test.itertuples()), total=len(test), desc="lesion boxes"):
        photo = load_image(r.path)
        truth = np.asarray(Image.open(r.mask_path).convert("L")) > 127
        box = suggest_box(photo)
        box_ious.append(box_iou(box, mask_box(truth)))
        mask_ious.append(mask_iou(suggest_mask(photo), truth))
        if hasattr(r, "bbox_left"):  # the dataset's own boxes (metadata.csv)
            bbox_ious.append(box_iou(box, (r.bbox_left, r.bbox_top, r.bbox_right, r.bbox_bottom)))

    sample = test if a.n <= 0 else test.sample(n=min(a.n, len(test)), random_state=a.seed)
    hits = {"biopsy site (page: lesion.biopsy_site)": [], "explain.biopsy_site alone (before)": [],
            "outline's deepest point": [], "Grad-CAM peak": [], "crop centre": []}
    seconds, misses = [], []
    cache = Path(a.cache) if a.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        if a.cached_only:
            sample = sample[[(cache / f"{i}.npz").is_file() for i in sample["image_id"]]]
    for r in tqdm(list(sample.itertuples()), total=len(sample), desc="biopsy sites"):
        photo = load_image(r.path)
        truth = np.asarray(Image.open(r.mask_path).convert("L")) > 127
        left, top, right, bottom = suggest_crop(photo)       # the page's suggested crop
        crop = photo.crop((left, top, right, bottom))
        # the page's class: the differential's most urgent (rules.biopsy_class)
        target = pred.taxonomy.index(biopsy_class(pred.predict(crop, anyway=True), pred.taxonomy))
        t0 = time.perf_counter()
        hit = cache / f"{r.image_id}.npz" if cache else None
        z = np.load(hit) if hit is not None and hit.is_file() else None
        if z is not None and int(z["target"]) == target:      # a cached map of another class is made again
            lime = E.LimeResult(z["segments"], dict(zip(z["ids"].tolist(), z["w"].tolist())), int(z["target"]),
                                float(z["seconds"]), int(z["num_samples"]), tuple(z["image_size"].tolist()))
        else:
            lime = E.lime_explanation(pred, crop, target)
            if hit is not None:
                np.savez_compressed(hit, segments=lime.segments, ids=np.array(list(lime.weights)),
                                    w=np.array(list(lime.weights.values())), target=lime.target, seconds=lime.seconds,
                                    num_samples=lime.num_samples, image_size=np.array(lime.image_size))
        outline = suggest_mask(crop)
        site = biopsy_site(lime, outline, "the automatic lesion outline")
        seconds.append(time.perf_counter() - t0)
        before = E.biopsy_site(lime, outline)
        geo = lime.geometry

        def orig(x, y):
            u, v = geo.point_to_original(x, y)
            return u + left, v + top
        ok = inside(truth, orig(site.x, site.y))
        hits["biopsy site (page: lesion.biopsy_site)"].append(ok)
        if not ok:
            misses.append(r.image_id)
        hits["explain.biopsy_site alone (before)"].append(inside(truth, orig(before.x, before.y)))
        m = E.mask_to_model(outline, lime.segments.shape)
        d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        yy, xx = np.unravel_index(int(np.argmax(d)), d.shape)
        hits["outline's deepest point"].append(inside(truth, orig(int(xx), int(yy))))
        cam = E.cam_heatmap(pred, crop, lime.target)
        hits["Grad-CAM peak"].append(inside(truth, orig(*E.cam_peak(cam.heatmap))))
        hits["crop centre"].append(inside(truth, orig(*E.crop_centre(pred.card.input_size))))

    boxes = {} if a.skip_boxes else {
        "n_box": len(test), "box_iou_mean": float(np.mean(box_ious)), "box_iou_median": float(np.median(box_ious)),
        "box_iou_ge_0.5": float(np.mean(np.array(box_ious) >= 0.5)), "mask_iou_mean": float(np.mean(mask_ious)),
        "metadata_bbox_iou_mean": float(np.mean(bbox_ious)) if bbox_ious else None}
    res = {**boxes, "n_biopsy": len(sample), "lime_biopsy_seconds_median": float(np.median(seconds)),
           "inside_mask": {k: float(np.mean(v)) for k, v in hits.items()},
           "inside_count": {k: int(np.sum(v)) for k, v in hits.items()}, "biopsy_misses": misses}
    if boxes:
        print(f"automatic lesion box vs dataset masks ({len(test)} test photos): IoU mean {res['box_iou_mean']:.3f}, "
              f"median {res['box_iou_median']:.3f}, share >= 0.5: {res['box_iou_ge_0.5']:.3f}; "
              f"mask IoU mean {res['mask_iou_mean']:.3f}; IoU with metadata.csv boxes {res['metadata_bbox_iou_mean']}")
    print(f"point inside the ground-truth lesion mask ({len(sample)} test photos):")
    for k, v in res["inside_mask"].items():
        print(f"  {k:<40} {v:.3f} ({res['inside_count'][k]}/{len(sample)})")
    print(f"LIME + biopsy median {res['lime_biopsy_seconds_median']:.2f} s per photo")
    print(f"biopsy sites outside the true lesion: {' '.join(misses) or 'none'}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
