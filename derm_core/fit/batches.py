"""Training batches as tensors: a uint8 image cache decoded once, and whole-batch augmentation.

Per-image PIL transforms in a DataLoader worker held an all-layer fine-tune on 2 CPU cores
to about half the raw training-step speed. Here every photo is decoded and resized once
into one uint8 tensor, and each batch is augmented in a few tensor ops with its own random
parameters per image: the seed papers' rotation, zoom, flips and elastic distortion as a
single ``grid_sample``, then brightness, contrast, saturation and hue.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as TF
from tqdm.auto import tqdm

from derm_core.data.clinical import META_DIM, SEXES, Clinical, encode
from derm_core.data.dataset import DataError, clinical_of
from derm_core.data.images import ImageError, load_image
from derm_core.model.transforms import ResizeCover

# where each clinical field sits in the encoded vector (see clinical.encode)
FIELD_SLICES = (slice(0, 2), slice(2, 3 + len(SEXES)), slice(3 + len(SEXES), META_DIM))


def image_cache(table: pd.DataFrame, size: tuple[int, int], progress: bool = False) -> torch.Tensor:
    """Every photo of ``table`` decoded once and resized to cover ``size``: uint8 (N, 3, H, W)."""
    from torchvision.transforms.v2 import functional as F
    resize = ResizeCover(size)
    out = torch.empty((len(table), 3, *size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(table["path"], desc="decoding", disable=not progress, leave=False)):
        try:
            img = load_image(path)
        except ImageError as e:
            raise DataError(f"{path}: {e}") from None
        out[i] = resize(F.pil_to_tensor(img))
    return out


def metadata_matrix(table: pd.DataFrame) -> torch.Tensor:
    """The encoded clinical vector of every row: float32 (N, META_DIM)."""
    rows = [encode(clinical_of(r)) for r in table.itertuples()]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, META_DIM))


def drop_fields(meta: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each clinical field of each row with probability ``p`` (as if not given), so a
    metadata model learns to work when a field is missing."""
    if p <= 0:
        return meta
    missing = torch.from_numpy(encode(Clinical())).to(meta.device)
    out = meta.clone()
    for s in FIELD_SLICES:
        hide = torch.rand(len(meta), 1, generator=gen, device=gen.device) < p
        out[:, s] = torch.where(hide, missing[s], out[:, s])
    return out


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)   # computed once on the CPU (on a GPU ``inv`` waits for the host)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device)


class BatchAugment:
    """The papers' augmentation for a whole uint8 batch, with per-image random parameters.

    Geometry (one ``grid_sample``; reflection padding, so the corners of a large rotation show
    mirrored skin rather than black): rotation by any angle, zoom to
    ``zoom`` of the side (a random crop of 45-100% of the area at the defaults), aspect
    jitter, random shift within the photo, horizontal and vertical flips, and with
    probability ``elastic_p`` a smooth elastic displacement. Colour: brightness, contrast,
    saturation and a hue rotation. Returns normalised float32 in channels-last layout.

    It runs where the batch and the generator are (both on the training device). On a GPU
    no step waits for the host: every image draws an elastic field and the ones without
    elastic distortion get it multiplied by zero. On a CPU only the distorted images draw one
    (the random stream of the CPU recipe is unchanged).
    """

    def __init__(self, mean, std, rotation: float = 180.0, zoom: tuple[float, float] = (0.67, 1.0),
                 aspect: float = 1.12, elastic_p: float = 0.2, elastic_alpha: float = 0.04,
                 brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.2, hue: float = 0.03,
                 sync_free: bool | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.rotation, self.zoom, self.aspect = rotation, zoom, aspect
        self.elastic_p, self.elastic_alpha = elastic_p, elastic_alpha
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.sync_free = sync_free   # None: off the CPU only (True tests the GPU's way on a CPU)

    def grid(self, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        """Sampling grid (N, H, W, 2) in normalised coordinates."""
        ang = torch.deg2rad(_uniform(n, -self.rotation, self.rotation, gen))
        side = _uniform(n, *self.zoom, gen)
        asp = torch.exp(_uniform(n, -math.log(self.aspect), math.log(self.aspect), gen))
        sx, sy = side * asp.sqrt(), side / asp.sqrt()
        flip_x = torch.where(torch.rand(n, generator=gen, device=gen.device) < 0.5, -1.0, 1.0)
        flip_y = torch.where(torch.rand(n, generator=gen, device=gen.device) < 0.5, -1.0, 1.0)
        tx = _uniform(n, -1, 1, gen) * (1 - sx).clamp(min=0)
        ty = _uniform(n, -1, 1, gen) * (1 - sy).clamp(min=0)
        cos, sin, r = torch.cos(ang), torch.sin(ang), h / w   # rotate in pixel space, not in [-1,1]^2
        theta = torch.stack([
            torch.stack([cos * sx * flip_x, -sin * sy * flip_y * r, tx], 1),
            torch.stack([sin * sx * flip_x / r, cos * sy * flip_y, ty], 1)], 1)
        g = TF.affine_grid(theta, [n, 3, h, w], align_corners=False)
        elastic = torch.rand(n, generator=gen, device=gen.device) < self.elastic_p
        if self.sync_free or (self.sync_free is None and gen.device.type != "cpu"):
            # no host sync: a field for every image, zero where not elastic
            coarse = torch.randn(n, 2, 6, 8, generator=gen, device=gen.device) * self.elastic_alpha
            return g + self._field(coarse * elastic.view(n, 1, 1, 1), h, w)
        if elastic.any():
            k = int(elastic.sum())
            coarse = torch.randn(k, 2, 6, 8, generator=gen) * self.elastic_alpha
            g[elastic] = g[elastic] + self._field(coarse, h, w)
        return g

    @staticmethod
    def _field(coarse: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """A smooth (N, H, W, 2) displacement from a coarse (N, 2, 6, 8) one."""
        return TF.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)

    def colour(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = len(x)
        shape = (n, 1, 1, 1)
        x = x * _uniform(n, 1 - self.brightness, 1 + self.brightness, gen).view(shape)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        c = _uniform(n, 1 - self.contrast, 1 + self.contrast, gen).view(shape)
        x = (x - grey.mean((2, 3), keepdim=True)) * c + grey.mean((2, 3), keepdim=True)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        s = _uniform(n, 1 - self.saturation, 1 + self.saturation, gen).view(shape)
        x = (x - grey) * s + grey
        if self.hue:  # rotate the chroma plane of YIQ
            a = _uniform(n, -self.hue, self.hue, gen) * 2 * math.pi
            rot = torch.zeros(n, 3, 3, device=x.device)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = a.cos(), -a.sin(), a.sin(), a.cos()
            m = _FROM_YIQ.to(x.device) @ rot @ _TO_YIQ.to(x.device)
            x = torch.einsum("nij,njhw->nihw", m, x)
        return x.clamp(0, 1)

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = batch.shape
        x = batch.float().div_(255)
        x = TF.grid_sample(x, self.grid(n, h, w, gen), mode="bilinear", padding_mode="reflection",
                           align_corners=False)
        x = self.colour(x, gen)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


class TrainBatches:
    """Shuffled, augmented training batches from the uint8 cache; the order and the
    augmentation depend on (seed, epoch) only, so a resumed run sees the same batches.
    Under DDP each rank takes every ``world``-th image of the shared permutation.

    The cache, the labels and the random generator live on ``device`` (0.8 GB of uint8 at
    150x200 for HAM10000's 9,000 photos), so on a GPU batches are cut and augmented there
    and nothing crosses from the host during an epoch.

    Each batch is ``(images, metadata, labels, soft)``: ``soft`` is the rows of ``soft_labels``
    (a teacher's probabilities, for distillation) or None without them."""

    def __init__(self, images: torch.Tensor, meta: torch.Tensor, y: np.ndarray, batch_size: int,
                 augment: BatchAugment, meta_dropout: float = 0.0, seed: int = 0, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu", soft_labels: np.ndarray | None = None):
        self.device = torch.device(device)
        self.images, self.meta = images.to(self.device), meta.to(self.device)
        self.y = torch.tensor(np.asarray(y), dtype=torch.long, device=self.device)
        self.soft = None if soft_labels is None else torch.as_tensor(soft_labels, dtype=torch.float32).to(self.device)
        self.batch_size, self.augment, self.meta_dropout = batch_size, augment, meta_dropout
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0
        n = len(images) // world
        self.drop_last = n > batch_size
        self._len = n // batch_size if self.drop_last else math.ceil(n / batch_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        gen = torch.Generator(self.device).manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.images), generator=gen, device=self.device)[self.rank::self.world]
        for b in range(self._len):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield (self.augment(self.images[idx], gen), drop_fields(self.meta[idx], self.meta_dropout, gen),
                   self.y[idx], None if self.soft is None else self.soft[idx])
