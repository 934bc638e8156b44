"""Image preprocessing (torchvision transforms v2) for evaluation and inference.

One deterministic path: resize to cover the model's (H, W), then centre-crop. Training
augmentation works on whole batches of tensors (:mod:`derm_core.fit.batches`).
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

RESAMPLING = "bilinear, antialiased"   # what ResizeCover does; recorded in model cards


class ResizeCover(torch.nn.Module):
    """Resize so the image covers (H, W) keeping its aspect ratio, then centre-crop to (H, W)."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, img):
        h, w = F.get_size(img)
        H, W = self.size
        scale = max(H / h, W / w)
        img = F.resize(img, [max(H, round(h * scale)), max(W, round(w * scale))], antialias=True)
        return F.center_crop(img, [H, W])


def _finish(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(size: tuple[int, int], mean, std) -> v2.Compose:
    """Deterministic preprocessing shared by evaluation and the triage page."""
    return v2.Compose([v2.ToImage(), ResizeCover(size), *_finish(mean, std)])


def to_pil_preview(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The photo exactly as the model sees it (before normalisation), for display and overlays."""
    return F.to_pil_image(ResizeCover(size)(F.pil_to_tensor(img)))
