"""Synthetic phone photos with a known lesion: a real lesion photo placed on synthetic skin.

There are no phone photos with lesion masks to measure the suggested crop on, so this builds
them: the lesion of a dermoscopy photo (with its mask) is scaled so it fills a chosen share of
a 12 MP frame and blended into synthetic skin, plain or textured (pores, creases, hairs, freckles,
uneven tone), lit unevenly as by a phone's light, optionally inside the black round field of a
phone dermatoscope adapter. Shared by ``bench/bench_crop.py`` and ``tests/test_lesion.py``.

The lesion keeps its own contrast: it is carried over as the ratio of each pixel to the median
colour of the skin around it in the source photo, so on darker skin it darkens in proportion,
and a rim of the source's own skin (ratio about 1) fades into the new skin: no hard seam.
Built at a quarter of the frame's size and enlarged, so one photo takes a fraction of a second.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

# light to dark, roughly steps 2 to 9 of the Monk skin tone scale as a phone's light shows them
SKIN_TONES = ((243, 222, 205), (234, 206, 180), (215, 180, 145), (190, 145, 110), (160, 118, 86),
              (128, 90, 66), (96, 66, 50), (66, 48, 38))
RENDER = 4   # build at 1/RENDER of the frame's size, then enlarge


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    """Zero-mean, unit-spread noise with features about ``sigma`` pixels large (made small, then enlarged)."""
    k = max(1, int(sigma // 4))
    small = (max(2, shape[0] // k + 1), max(2, shape[1] // k + 1))
    n = ndimage.gaussian_filter(rng.standard_normal(small), sigma / k, mode="wrap")
    n = np.asarray(Image.fromarray(n.astype(np.float32)).resize((shape[1], shape[0]), Image.BILINEAR))
    return n / (n.std() + 1e-9)


def _lines(rng, shape, count, length, width, curl=0.0) -> np.ndarray:
    """Coverage (0..1) of ``count`` thin random strokes (hairs, creases)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        x, y, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi)
        da = rng.normal(0, curl)
        steps = int(length * rng.uniform(0.5, 1.5))
        for _ in range(steps):
            if 0 <= x < w and 0 <= y < h:
                out[int(y), int(x)] = 1.0
            x, y, a = x + np.cos(a), y + np.sin(a), a + da
    if width > 1:
        out = ndimage.grey_dilation(out, size=(width, width))
    return ndimage.gaussian_filter(out, 0.6)


def skin(shape, tone: int, textured: bool, rng) -> np.ndarray:
    """(h, w, 3) float skin of ``SKIN_TONES[tone]`` with uneven tone and, if ``textured``, pores,
    creases, hairs and a few freckles; no lighting yet."""
    h, w = shape
    base = np.array(SKIN_TONES[tone], np.float32)
    blotch = _smooth_noise(rng, shape, max(h, w) / 12)              # uneven tone, a little redder where darker
    img = base * (1 + 0.04 * blotch[..., None] * np.array([0.6, 1.0, 1.0], np.float32))
    img *= (1 + 0.015 * rng.standard_normal(shape, np.float32))[..., None]   # grain
    if textured:
        pores = ndimage.gaussian_filter((rng.random(shape) < 0.02).astype(np.float32), 0.8)
        img *= (1 - 1.6 * pores)[..., None]
        img *= (1 - 0.06 * _lines(rng, shape, 60, max(h, w) / 10, 1, curl=0.02))[..., None]   # creases
        fine = _smooth_noise(rng, shape, 2.0)
        img *= (1 + 0.03 * fine)[..., None]
        for _ in range(int(rng.integers(0, 6))):                          # freckles: small, faint, anywhere
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 4)
            yy, xx = np.ogrid[:h, :w]
            spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img *= (1 - 0.25 * spot)[..., None]
        hair = _lines(rng, shape, int(rng.integers(5, 40)), max(h, w) / 5, 2, curl=0.003)
        img = img * (1 - 0.7 * hair[..., None]) + 0.7 * hair[..., None] * np.array([45, 35, 30], np.float32)
    return img


def lighting(shape, rng, strength: float) -> np.ndarray:
    """Brightness (h, w): a phone light off centre falling off towards the edges, and a tilt."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    r = np.hypot((xx - cx) / w, (yy - cy) / h)
    a = rng.uniform(0, 2 * np.pi)
    tilt = ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a))
    return 1 - strength * (1.2 * r ** 2 + 0.3 * tilt)


def adapter_field(shape, centre, radius) -> np.ndarray:
    """Visibility (h, w) 0..1 of a phone dermatoscope adapter's round field: black outside, soft rim."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return np.clip((radius - np.hypot(xx - centre[0], yy - centre[1])) / (0.02 * radius), 0, 1)


def phone_photo(lesion: Image.Image, mask: np.ndarray, size=(4032, 3024), share: float = 0.15, tone: int = 2,
                textured: bool = False, adapter: bool = False, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A ``size`` (W, H) photo of the lesion of ``lesion`` (its boolean ``mask``) filling ``share``
    of the frame (less when its box would not fit the frame or the adapter's field) on skin of
    ``SKIN_TONES[tone]``, in any orientation, near the middle. Returns the photo and the true
    lesion mask at its size."""
    rng = np.random.default_rng(seed)
    W, H = size
    w, h = W // RENDER, H // RENDER
    src = np.asarray(lesion.convert("RGB"), np.float32)
    mask = np.asarray(mask, bool)
    if rng.random() < 0.5:                      # any orientation of the lesion in the frame
        src, mask = np.rot90(src), np.rot90(mask)
    # the lesion as a ratio to its own surrounding skin (skipping a dermoscope's black border)
    ring = ndimage.binary_dilation(mask, iterations=6) & ~mask
    ring &= src.max(axis=2) > 60
    if ring.sum() < 50:
        ring = ~mask & (src.max(axis=2) > 60)
    if ring.sum() < 50:                         # the lesion fills the photo: its brightest tenth stands in for skin
        ring = src.max(axis=2) >= np.percentile(src.max(axis=2), 90)
    ratio = src / np.maximum(np.median(src[ring], axis=0), 1.0)
    # a window of the source: the lesion and a rim of its skin (ratio ~1) to blend over, padded
    # with skin where it runs past the source photo or into a dermoscope's black border
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    pad = max(3, round(0.15 * max(rows[-1] - rows[0], cols[-1] - cols[0])))
    seen = np.pad(src.max(axis=2) > 60, pad)
    ratio = np.pad(ratio, ((pad, pad), (pad, pad), (0, 0)), constant_values=1.0)
    mask = np.pad(mask, pad)
    win = np.s_[rows[0]:rows[-1] + 1 + 2 * pad, cols[0]:cols[-1] + 1 + 2 * pad]
    ratio, mask, seen = ratio[win], mask[win], seen[win]
    ratio[~seen] = 1.0
    # a lesion cut off by the source's edge fades out there rather than ending in a straight seam
    fade = np.clip(ndimage.distance_transform_edt(seen) / max(2.0, pad * 0.5), 0, 1)
    mask &= fade >= 0.5
    alpha = np.clip(1 - ndimage.distance_transform_edt(~mask) / max(2.0, pad * 0.8), 0, 1) * fade
    # how large: ``share`` of the frame, less if the lesion's box would not fit the frame (or the
    # adapter's field, a circle about as wide as the frame's short side)
    circle = ((w / 2 * rng.uniform(0.97, 1.03), h / 2 * rng.uniform(0.97, 1.03)), min(w, h) / 2 * rng.uniform(0.9, 1.1))
    f = np.sqrt(share * W * H / mask.sum()) / RENDER                   # source pixel -> render pixel
    if adapter:
        f = min(f, 0.9 * 2 * circle[1] / np.hypot(*mask.shape))
    f = min(f, 0.95 * w / mask.shape[1], 0.95 * h / mask.shape[0])
    lw, lh = max(1, round(mask.shape[1] * f)), max(1, round(mask.shape[0] * f))

    def resized(a):
        return np.asarray(Image.fromarray(np.asarray(a, np.float32)).resize((lw, lh), Image.BILINEAR))

    rat = np.stack([resized(ratio[..., c]) for c in range(3)], axis=-1)
    al = resized(alpha)
    # where: near the middle of the frame, or of the adapter's field
    if adapter:
        room = max(0.0, circle[1] - np.hypot(lw, lh) / 2)
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * room
        x0, y0 = circle[0][0] + d * np.cos(a) - lw / 2, circle[0][1] + d * np.sin(a) - lh / 2
    else:
        x0, y0 = (w - lw) / 2 * (1 + rng.uniform(-0.6, 0.6)), (h - lh) / 2 * (1 + rng.uniform(-0.6, 0.6))
    x0, y0 = int(np.clip(x0, 0, w - lw)), int(np.clip(y0, 0, h - lh))
    img = skin((h, w), tone, textured, rng)
    win = img[y0:y0 + lh, x0:x0 + lw]
    win *= 1 - al[..., None] + al[..., None] * rat
    img *= lighting((h, w), rng, rng.uniform(0.1, 0.45))[..., None]
    if adapter:
        vis = adapter_field((h, w), *circle)[..., None]
        img = img * vis + (1 - vis) * rng.uniform(0, 8, img.shape)
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((W, H), Image.BICUBIC)
    # the true mask at full size, from the source mask (not the render) so its edge is as sharp as it is
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize((lw * RENDER, lh * RENDER), Image.BILINEAR)
    truth = np.zeros((H, W), bool)
    truth[y0 * RENDER:(y0 + lh) * RENDER, x0 * RENDER:(x0 + lw) * RENDER] = np.asarray(m) >= 128
    return photo, truth


def ellipse_lesion(size=(200, 150), radii=(0.3, 0.25), colour=(110, 70, 55), seed: int = 0):
    """A plain source lesion (soft-edged dark ellipse on skin) and its mask, for tests without HAM."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - w / 2) / (radii[0] * w)) ** 2 + ((yy - h / 2) / (radii[1] * h)) ** 2 <= 1
    soft = ndimage.gaussian_filter(inside.astype(float), 1.5)[..., None]
    img = (1 - soft) * np.array([222, 176, 150]) + soft * np.array(colour) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), inside
