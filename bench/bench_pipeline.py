"""Training input pipeline vs the raw training step (issue #9: the pipeline must reach >= 90%).

Prints images/s of (a) the raw all-layer training step on ready-made tensors and (b) the
same step fed by :class:`derm_core.fit.batches.TrainBatches` (uint8 cache + whole-batch
augmentation), and their ratio. Uses the first ``--images`` photos of the dataset folder.

    python bench/bench_pipeline.py --data ../shared/data/ham10000 [--arch tf_efficientnet_lite0] [--steps 12]
"""
from __future__ import annotations

import argparse
import time

import torch

from derm_core.data.dataset import load_table
from derm_core.data.taxonomy import load_taxonomy
from derm_core.fit.batches import BatchAugment, TrainBatches, image_cache, metadata_matrix
from derm_core.model.networks import create_model, data_config, get_arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--images", type=int, default=1024)
    a = ap.parse_args()
    tax = load_taxonomy("ham7")
    table = load_table(a.data, tax).iloc[: a.images].reset_index(drop=True)
    size = tuple(get_arch(a.arch).input_size)
    dcfg = data_config(a.arch)
    t = time.perf_counter()
    images = image_cache(table, size)
    print(f"decode + resize {len(table)} photos into the uint8 cache: {time.perf_counter() - t:.1f} s")
    batches = TrainBatches(images, metadata_matrix(table), table["y"].to_numpy(), a.batch_size,
                           BatchAugment(dcfg["mean"], dcfg["std"]), meta_dropout=0.3)
    model = create_model(a.arch, len(tax.classes), True, "none").to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, meta, y):
        loss = torch.nn.functional.cross_entropy(model(x, meta), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    x0, m0, y0 = next(iter(batches))
    for _ in range(2):
        step(x0, m0, y0)  # warm-up
    t = time.perf_counter()
    for _ in range(a.steps):
        step(x0, m0, y0)
    raw = a.steps * a.batch_size / (time.perf_counter() - t)

    it = iter(batches)
    t_aug = 0.0
    t = time.perf_counter()
    for _ in range(a.steps):
        ta = time.perf_counter()
        x, meta, y = next(it)
        t_aug += time.perf_counter() - ta
        step(x, meta, y)
    fed = a.steps * a.batch_size / (time.perf_counter() - t)
    print(f"raw training step:        {raw:6.1f} img/s  ({a.arch}, batch {a.batch_size}, {size[0]}x{size[1]}, "
          f"{torch.get_num_threads()} threads)")
    print(f"fed by the input pipeline: {fed:6.1f} img/s  (augmentation {1000 * t_aug / a.steps:.0f} ms/batch)")
    print(f"ratio: {fed / raw:.3f}")


if __name__ == "__main__":
    main()
