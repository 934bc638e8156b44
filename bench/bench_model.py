"""Inference and training throughput of the default model (CPU, and GPU when present).

    python bench/bench_model.py [--model weights/default/model.json] [--seconds 10]

Prints images/s for inference at batch 1 and 32 (preprocessed tensors, inference mode) and
for training steps at batch 32 with the shipped training settings (early layers frozen).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.model.checkpoint import load_model  # noqa: E402
from derm_core.model.networks import freeze_early  # noqa: E402
from derm_core.settings import SHIPPED_MODEL  # noqa: E402


def rate(fn, n_per_call: int, seconds: float) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        done += n_per_call
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def bench(device: torch.device, model_path: Path, seconds: float) -> None:
    model, card = load_model(model_path)
    model.to(device, memory_format=torch.channels_last)
    H, W = card.input_size
    amp = dict(device_type=device.type, enabled=device.type == "cuda")
    print(f"{card.arch} {H}x{W} on {device} ({torch.get_num_threads()} CPU threads)")
    for bs in (1, 32):
        x = torch.randn(bs, 3, H, W, device=device).to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def infer():
            with torch.autocast(**amp):
                model(x)
        print(f"  inference batch {bs:>2}: {rate(infer, bs, seconds):7.1f} images/s")

    freeze_early(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    x = torch.randn(32, 3, H, W, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, len(card.classes), (32,), device=device)

    def step():
        with torch.autocast(**amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"  training batch 32:  {rate(step, 32, seconds):7.1f} images/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(SHIPPED_MODEL))
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    bench(torch.device("cpu"), Path(a.model), a.seconds)
    if torch.cuda.is_available():
        bench(torch.device("cuda"), Path(a.model), a.seconds)
    else:
        print("no CUDA device: GPU figures skipped")
