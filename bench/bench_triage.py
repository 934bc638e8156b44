"""Photo -> differential + tier + Grad-CAM latency after the model is loaded (target < 0.5 s).

    python bench/bench_triage.py [--model weights/default/model.json] [--data ../shared/data/ham10000] [--n 20]

Uses images of the model's test split when the dataset folder is available, else a
synthetic photo. Prints median and 95th-percentile seconds per step and in total.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.data.images import load_image  # noqa: E402
from derm_core.explain.maps import cam_heatmap  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402
from derm_core.settings import SHIPPED_MODEL  # noqa: E402


def photos(data: Path, n: int) -> list:
    imgs = sorted((data / "images").glob("*.jpg"))[:n] if (data / "images").is_dir() else []
    if imgs:
        return [load_image(p) for p in imgs]
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (200, 150), (224, 180, 160))
    ImageDraw.Draw(img).ellipse([60, 40, 140, 110], fill=(90, 50, 40))
    return [img] * n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(SHIPPED_MODEL))
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/ham10000"))
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args()
    pred = Predictor.from_path(a.model)
    ims = photos(Path(a.data), a.n)
    pred.predict(ims[0])
    cam_heatmap(pred, ims[0])  # warm-up
    t_pred, t_cam = [], []
    for im in ims:
        t0 = time.perf_counter()
        res = pred.predict(im)
        t1 = time.perf_counter()
        cam_heatmap(pred, im, pred.taxonomy.index(res.differential[0][0]))
        t2 = time.perf_counter()
        t_pred.append(t1 - t0)
        t_cam.append(t2 - t1)
    tot = np.add(t_pred, t_cam)
    print(f"model {pred.card.name} ({pred.card.arch}, tta={pred.tta}), {len(ims)} photos, device {pred.device}")
    for name, t in (("differential + tier", t_pred), ("Grad-CAM", t_cam), ("total", tot)):
        print(f"  {name:<20} median {np.median(t):.3f} s   p95 {np.percentile(t, 95):.3f} s")


if __name__ == "__main__":
    main()
