"""Biopsy-site and lesion-box evaluation on the HAM10000 test split (with its masks).

    python bench/eval_biopsy.py --data ../shared/data/ham10000 [--model weights/default/model.json] [--n 200]

For each photo the page's own pipeline runs: the automatic lesion outline (lesion.suggest_mask,
as for an uploaded photo), LIME at the page defaults, and the biopsy site. Reported: the share
of biopsy sites inside the dataset's ground-truth lesion mask, against two baselines (the
Grad-CAM peak and the crop centre), and the IoU of the automatic lesion box/mask with the
dataset's boxes/masks over the whole split.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core import explain as E  # noqa: E402
from derm_core.checkpoint import DEFAULT_MODEL  # noqa: E402
from derm_core.data import load_table  # noqa: E402
from derm_core.images import load_image  # noqa: E402
from derm_core.lesion import box_iou, mask_box, mask_iou, suggest_box, suggest_mask  # noqa: E402
from derm_core.predictor import Predictor  # noqa: E402
from derm_core.splits import load_splits  # noqa: E402


def inside(mask: np.ndarray, point: tuple[int, int]) -> bool:
    x, y = point
    return bool(mask[y, x])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--n", type=int, default=200, help="test photos for the LIME part (all are used for boxes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()
    pred = Predictor.from_path(a.model)
    table = load_table(a.data, pred.taxonomy)
    split = load_splits(table, pred.card.split_file)
    test = table[(split == "test").to_numpy() & table["mask_path"].notna().to_numpy()].reset_index(drop=True)

    box_ious, bbox_ious, mask_ious = [], [], []
    for r in tqdm(test.itertuples(), total=len(test), desc="lesion boxes"):
        photo = load_image(r.path)
        truth = np.asarray(Image.open(r.mask_path).convert("L")) > 127
        box = suggest_box(photo)
        box_ious.append(box_iou(box, mask_box(truth)))
        mask_ious.append(mask_iou(suggest_mask(photo), truth))
        if hasattr(r, "bbox_left"):  # the dataset's own boxes (metadata.csv)
            bbox_ious.append(box_iou(box, (r.bbox_left, r.bbox_top, r.bbox_right, r.bbox_bottom)))

    sample = test.sample(n=min(a.n, len(test)), random_state=a.seed)
    hits = {"biopsy (LIME, automatic outline)": [], "Grad-CAM peak": [], "crop centre": []}
    seconds = []
    for r in tqdm(sample.itertuples(), total=len(sample), desc="biopsy sites"):
        photo = load_image(r.path)
        truth = np.asarray(Image.open(r.mask_path).convert("L")) > 127
        t0 = time.perf_counter()
        lime = E.lime_explanation(pred, photo)
        site = E.biopsy_site(lime, suggest_mask(photo))
        seconds.append(time.perf_counter() - t0)
        geo = lime.geometry
        hits["biopsy (LIME, automatic outline)"].append(inside(truth, geo.point_to_original(site.x, site.y)))
        cam = E.cam_heatmap(pred, photo, lime.target)
        hits["Grad-CAM peak"].append(inside(truth, geo.point_to_original(*E.cam_peak(cam.heatmap))))
        hits["crop centre"].append(inside(truth, geo.point_to_original(*E.crop_centre(pred.card.input_size))))

    res = {"n_box": len(test), "box_iou_mean": float(np.mean(box_ious)), "box_iou_median": float(np.median(box_ious)),
           "box_iou_ge_0.5": float(np.mean(np.array(box_ious) >= 0.5)), "mask_iou_mean": float(np.mean(mask_ious)),
           "metadata_bbox_iou_mean": float(np.mean(bbox_ious)) if bbox_ious else None,
           "n_biopsy": len(sample), "lime_biopsy_seconds_median": float(np.median(seconds)),
           "inside_mask": {k: float(np.mean(v)) for k, v in hits.items()}}
    print(f"automatic lesion box vs dataset masks ({len(test)} test photos): IoU mean {res['box_iou_mean']:.3f}, "
          f"median {res['box_iou_median']:.3f}, share >= 0.5: {res['box_iou_ge_0.5']:.3f}; mask IoU mean {res['mask_iou_mean']:.3f}; "
          f"IoU with metadata.csv boxes {res['metadata_bbox_iou_mean']}")
    print(f"point inside the ground-truth lesion mask ({len(sample)} test photos):")
    for k, v in res["inside_mask"].items():
        print(f"  {k:<34} {v:.3f}")
    print(f"LIME + biopsy median {res['lime_biopsy_seconds_median']:.2f} s per photo")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
