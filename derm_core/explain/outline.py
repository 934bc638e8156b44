"""A small learned lesion outline for close-ups, where the classical outline falls short.

The classical outline (:mod:`derm_core.explain.lesion`) divides the photo by the skin's own
brightness, estimated from the skin around the lesion. When the lesion fills much of the frame,
as in most dermoscopy, there is little skin to estimate it from, and the outline comes out too
small or too large. For those photos a U-Net of 122k parameters, trained on the lesion masks of
the model's training split (never validation or test), gives the outline instead.

It sees the photo at 64x48 px: enough for a box or an outline, and fast on any CPU. Its training
darkens half of the photos as melanin does (most in blue), as HAM10000 holds almost only light
skin. ``python -m derm_core release`` trains it (deterministic, about 4 minutes on 2 CPU cores)
and writes ``outline.safetensors`` plus its card ``outline.json`` into the bundle.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from derm_core.errors import ModelError

INPUT = (64, 48)                  # (W, H) the network sees
CHANNELS = (8, 16, 32, 64)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WEIGHTS, CARD = "outline.safetensors", "outline.json"
FORMAT = "dermtriage-outline"
LEVEL = 0.5                       # probability at which a pixel is lesion


@dataclass(frozen=True)
class OutlineTraining:
    """How the outline network is trained: the one place of these settings."""
    epochs: int = 12
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    darken: float = 0.5           # share of photos darkened like darker skin
    zoom: tuple[float, float] = (-0.4, 0.7)   # log scale of the random zoom (out > 0: the lesion smaller)


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                         nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class OutlineNet(nn.Module):
    """A four-level U-Net: lesion logits at the input's size."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        c = channels
        self.down = nn.ModuleList([_block(3, c[0])] + [_block(c[i], c[i + 1]) for i in range(len(c) - 1)])
        self.up = nn.ModuleList([_block(c[i + 1] + c[i], c[i]) for i in range(len(c) - 1)])
        self.out = nn.Conv2d(c[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], 1))
        return self.out(x)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) 0..255 -> ImageNet-normalised floats."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


def _small(image: Image.Image) -> torch.Tensor:
    """A photo as the network's (3, H, W) uint8 input."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    w, h = image.size
    k = min(w // INPUT[0], h // INPUT[1]) // 2
    image = image.reduce(k) if k >= 2 else image     # a 12 MP photo: box-reduce first (fast)
    return torch.from_numpy(np.array(image.resize(INPUT, Image.BILINEAR))).permute(2, 0, 1)


# ------------------------------------------------------------------------------ the stored network
def read_outline_card(path: str | Path) -> tuple[Path, dict]:
    """``outline.json`` (or its folder): its path and fields, checked; the one reader of that file."""
    from derm_core.model.checkpoint import read_json
    path = Path(path)
    path = path / CARD if path.is_dir() else path
    card = read_json(path, ModelError, "outline card")
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ModelError(f"{path}: not an outline card (format {FORMAT!r} expected)")
    for name, kind in (("weights_sha256", str), ("input_size", list), ("channels", list), ("training", dict)):
        if not isinstance(card.get(name), kind):
            raise ModelError(f"{path}: field {name!r} is missing or not a {kind.__name__}")
    if not isinstance(card.get("metrics", {}), dict):          # optional: added by the release after training
        raise ModelError(f"{path}: field 'metrics' is not a dict")
    if tuple(card["input_size"]) != INPUT:
        raise ModelError(f"{path}: made for input {card['input_size']}, this code uses {list(INPUT)}")
    return path, card


def record_metrics(path: str | Path, metrics: dict) -> None:
    """Add measured figures (e.g. the crop rule's box agreement per split) to the card."""
    from derm_core.model.checkpoint import atomic_write_json
    path, card = read_outline_card(path)
    atomic_write_json(path, {**card, "metrics": {**card.get("metrics", {}), **metrics}})


@dataclass(frozen=True)
class Outline:
    """The network with its card (``outline.json``): the one reader of that file."""
    net: OutlineNet
    card: dict
    path: Path

    @classmethod
    def load(cls, path: str | Path) -> "Outline":
        """Read ``outline.json`` (or its folder) and its weights, checked against each other."""
        from safetensors.torch import load_file

        from derm_core.model.card import file_sha256
        path, card = read_outline_card(path)
        weights = path.parent / WEIGHTS
        if not weights.is_file():
            raise ModelError(f"{path}: its weights {weights} are missing")
        if file_sha256(weights) != card["weights_sha256"]:
            raise ModelError(f"{weights}: these weights are not the ones {path.name} describes (hash differs)")
        net = OutlineNet(tuple(int(c) for c in card["channels"]))
        try:
            net.load_state_dict(load_file(weights))
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"{weights}: does not fit the outline network ({str(e).splitlines()[0]})") from None
        return cls(net.eval(), card, path)

    def probability(self, image: Image.Image) -> np.ndarray:
        """P(lesion) per pixel, (H, W) at :data:`INPUT`."""
        with torch.no_grad():
            return torch.sigmoid(self.net(_normalise(_small(image)[None])))[0, 0].numpy()

    def mask(self, image: Image.Image, shape: tuple[int, int], fov: np.ndarray | None = None) -> np.ndarray | None:
        """The lesion as a boolean mask of ``shape`` (H, W): the component holding the most
        probability, holes filled; None when no pixel reaches :data:`LEVEL`. ``fov`` (same
        shape) keeps it off a dermoscope's black surround."""
        h, w = shape
        p = np.asarray(Image.fromarray(self.probability(image)).resize((w, h), Image.BILINEAR))
        if fov is not None:
            p = np.where(fov, p, 0.0)
        labels, n = ndimage.label(p >= LEVEL)
        if n == 0:
            return None
        best = 1 + int(np.argmax(ndimage.sum(p, labels, range(1, n + 1))))
        return ndimage.binary_fill_holes(labels == best)


# ------------------------------------------------------------------------------ training
def _load_pairs(rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos (N, 3, H, W) uint8 and masks (N, 1, H, W) 0/1 at :data:`INPUT`."""
    xs, ms = [], []
    for path, mask_path in zip(rows["path"], rows["mask_path"]):
        with Image.open(path) as im:
            xs.append(_small(im.convert("RGB")))
        with Image.open(mask_path) as m:
            ms.append(torch.from_numpy(np.asarray(m.convert("L").resize(INPUT, Image.BILINEAR)) > 127))
    return torch.stack(xs), torch.stack(ms)[:, None].float()


def _augment(x: torch.Tensor, m: torch.Tensor, s: OutlineTraining, g: torch.Generator):
    """Flips, a random zoom and shift, exposure, and darker skin for half the photos."""
    n = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=g)   # noqa: E731
    if u(1) < 0.5:
        x, m = x.flip(3), m.flip(3)
    if u(1) < 0.5:
        x, m = x.flip(2), m.flip(2)
    scale = torch.exp(s.zoom[0] + (s.zoom[1] - s.zoom[0]) * u(n))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = 0.6 * u(n, 2) - 0.3
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    dark = (u(n, 1, 1, 1) < s.darken).float()
    gain = (0.25 + 0.75 * u(n, 1, 1, 1)) ** dark             # melanin: darker, most in blue
    gamma = 0.7 + 0.7 * u(n, 1, 1, 1)
    xf = 255 * (x.float() / 255) ** gamma * torch.cat([gain, gain ** 1.3, gain ** 1.6], 1)
    xf = F.grid_sample(_normalise(xf), grid, padding_mode="reflection", align_corners=False)
    m = (F.grid_sample(m, grid, padding_mode="zeros", align_corners=False) > 0.5).float()
    xf = xf * (0.8 + 0.4 * u(n, 3, 1, 1)) + (0.6 * u(n, 3, 1, 1) - 0.3)
    return xf, m


def fit_outline(train_rows, out: str | Path, source: dict, settings: OutlineTraining = OutlineTraining(),
                progress=print) -> Path:
    """Train the network on ``train_rows`` (the table's rows with a ``mask_path``) and write
    ``outline.safetensors`` and ``outline.json`` into ``out``; returns the card's path.
    ``source`` (e.g. the split file's name and hash) goes into the card."""
    from derm_core.model.card import file_sha256
    from derm_core.model.checkpoint import atomic_save_tensors, atomic_write_json
    rows = train_rows[train_rows["mask_path"].notna()]
    if len(rows) < settings.batch:
        raise ModelError(f"the outline network needs at least {settings.batch} training photos with a lesion mask, "
                         f"got {len(rows)}")
    t0 = time.time()
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    x, m = _load_pairs(rows)
    net = OutlineNet()
    steps = len(x) // settings.batch
    opt = torch.optim.AdamW(net.parameters(), settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.epochs * steps)
    for epoch in range(settings.epochs):
        net.train()
        order, total = torch.randperm(len(x), generator=g), 0.0
        for b in range(steps):
            idx = order[b * settings.batch:(b + 1) * settings.batch]
            xb, mb = _augment(x[idx], m[idx], settings, g)
            logits = net(xb)
            p = torch.sigmoid(logits)
            dice = 1 - (2 * (p * mb).sum((1, 2, 3)) + 1) / ((p + mb).sum((1, 2, 3)) + 1)
            loss = (F.binary_cross_entropy_with_logits(logits, mb) + dice.mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        progress(f"outline network: epoch {epoch + 1}/{settings.epochs}, loss {total / steps:.3f}")
    out = Path(out)
    weights = out / WEIGHTS
    atomic_save_tensors(weights, net.state_dict())
    card = {"format": FORMAT, "format_version": 1, "input_size": list(INPUT), "channels": list(CHANNELS),
            "weights_sha256": file_sha256(weights),
            "training": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
                         "n_photos": int(len(rows)), "seconds": round(time.time() - t0), **source}}
    atomic_write_json(out / CARD, card)
    return out / CARD
