"""The inference fast path against fp32: agreement and speed (issue #9, item 7).

    python bench/bench_fastpath.py --data ../shared/data/ham10000 [--model weights/default/model.json]
        [--split test] [--limit N] [--chunks 4,8,16,256] [--fast-only]

On the model's split (default: test) it runs the evaluation pass (predictions + embeddings,
flip TTA) once on the fp32 path and once on the fast path, and prints images/s of each, the
share of images whose most-likely class agrees, and the largest change of a calibrated
probability. ``--chunks`` also times the fast path's evaluation pass with the frozen backbone
fed that many views at a time (``Runner.chunk``; 256 = a whole batch of 64 photos x 4 flips).
Then the time of photo -> differential + tier through the Predictor.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.images import load_image  # noqa: E402
from derm_core.data.splits import split_rows  # noqa: E402
from derm_core.model.calibration import softmax  # noqa: E402
from derm_core.model.checkpoint import load_model  # noqa: E402
from derm_core.model.inference import fast_path  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--photos", type=int, default=30)
    ap.add_argument("--chunks", help="comma-separated views per backbone call to compare")
    ap.add_argument("--fast-only", action="store_true", help="time the fast path's evaluation pass only")
    a = ap.parse_args()
    model, card = load_model(a.model)
    table = load_table(a.data, card.taxonomy)
    if a.split != "all":
        table = split_rows(table, card.split_file, a.split)
    if a.limit:
        table = table.iloc[: a.limit].reset_index(drop=True)
    cpu = torch.device("cpu")
    fast = fast_path(cpu)
    out = {}

    def evaluation_pass(path: str, chunk: int | None = None) -> dict:
        t0 = time.perf_counter()
        pred = Predictor(model, card, cpu, fast_path=path, out_of_scope=False)
        pred.runner.chunk = chunk or pred.runner.chunk
        res = pred.predict_table(table, progress=False, embeddings=True)
        dt = time.perf_counter() - t0
        print(f"{path:9s} evaluation pass, {pred.runner.chunk:3d} views per call: {len(table)} images in "
              f"{dt:6.1f} s = {len(table) / dt:6.1f} img/s (9,000 images: {9000 / (len(table) / dt) / 60:.1f} min)")
        return res

    for chunk in map(int, a.chunks.split(",")) if a.chunks else ():
        evaluation_pass(fast, chunk)
    if a.fast_only:
        evaluation_pass(fast)
        return
    for path in ("fp32", fast):
        out[path] = evaluation_pass(path)
    pf, pb = (softmax(out[p]["logits"], card.temperature) for p in ("fp32", fast))
    print(f"{fast} vs fp32 on {len(table)} {a.split} images: most-likely class agrees for "
          f"{(pf.argmax(1) == pb.argmax(1)).mean():.4f}, max |dp| {np.abs(pf - pb).max():.4f}, "
          f"99th percentile |dp| {np.percentile(np.abs(pf - pb).max(1), 99):.4f}")
    pred = Predictor(model, card, cpu)
    photos = [load_image(p) for p in table["path"][: a.photos]]
    pred.predict(photos[0])
    times = []
    for im in photos:
        t0 = time.perf_counter()
        pred.predict(im)
        times.append(time.perf_counter() - t0)
    print(f"photo -> differential + tier ({pred.fast_path}, TTA {pred.tta}): median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s over {len(times)} photos")


if __name__ == "__main__":
    main()
