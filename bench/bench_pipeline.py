"""Training input pipeline vs the raw training step (issues #9 and #19): the pipeline must reach
>= 90% of the raw step on 2 CPU cores and >= 80% on a GPU.

Prints images/s of (a) the raw all-layer training step on one ready-made batch and (b) the same
step fed by :class:`derm_core.fit.batches.TrainBatches` (uint8 cache and augmentation on the
training device, as ``train`` runs it), and their ratio, on whatever device ``train`` would pick
(CUDA when present), with ``train``'s autocast dtype and the device's default batch size.
Uses the first ``--images`` photos of the dataset folder.

    python bench/bench_pipeline.py --data ../shared/data/ham10000 [--arch tf_efficientnet_lite0]
        [--batch-size N] [--steps 12] [--image-size H W] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.taxonomy import load_taxonomy  # noqa: E402
from derm_core.fit.batches import BatchAugment, TrainBatches, image_cache, metadata_matrix  # noqa: E402
from derm_core.fit.config import device_batch  # noqa: E402
from derm_core.model.device import amp_dtype, pick_device  # noqa: E402
from derm_core.model.networks import create_model, data_config, get_arch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--device")
    a = ap.parse_args()
    device = pick_device(a.device)
    bs = a.batch_size or device_batch(device)
    amp = amp_dtype(device)
    tax = load_taxonomy("ham7")
    table = load_table(a.data, tax).iloc[: a.images].reset_index(drop=True)
    size = tuple(a.image_size or get_arch(a.arch).input_size)
    dcfg = data_config(a.arch)
    t = time.perf_counter()
    images = image_cache(table, size)
    print(f"decode + resize {len(table)} photos into the uint8 cache: {time.perf_counter() - t:.1f} s")
    batches = TrainBatches(images, metadata_matrix(table), table["y"].to_numpy(), bs,
                           BatchAugment(dcfg["mean"], dcfg["std"]), meta_dropout=0.3, device=device)
    model = create_model(a.arch, len(tax.classes), True, "none").to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, meta, y):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x, meta).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(batches_of) -> float:
        sync()
        t = time.perf_counter()
        for x, meta, y, _ in batches_of:
            step(x, meta, y)
        sync()
        return a.steps * bs / (time.perf_counter() - t)

    x0, m0, y0, _ = next(iter(batches))
    for _ in range(3):
        step(x0, m0, y0)  # warm-up (cuDNN autotuning, allocator)
    raw = timed([(x0, m0, y0, None)] * a.steps)
    it = iter(batches)
    fed = timed(next(it) for _ in range(a.steps))
    it = iter(batches)
    sync()
    t = time.perf_counter()
    for _ in range(a.steps):
        next(it)
    sync()
    aug_ms = 1000 * (time.perf_counter() - t) / a.steps
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"raw training step:         {raw:7.1f} img/s  ({a.arch}, batch {bs}, {size[0]}x{size[1]}, {device.type}, "
          f"{threads}, autocast {amp or 'off'})")
    print(f"fed by the input pipeline: {fed:7.1f} img/s  (augmentation alone {aug_ms:.0f} ms/batch, "
          f"{1000 * bs / aug_ms if aug_ms else float('inf'):.0f} img/s)")
    print(f"ratio: {fed / raw:.3f}")


if __name__ == "__main__":
    main()
