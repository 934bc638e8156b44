"""Skin tone around a lesion, as the individual typology angle (ITA), for the skin-tone audit.

ITA = atan2(L* - 50, b*) in degrees (CIELAB, D65), measured on the skin around the lesion: the
photo outside the lesion outline grown by a margin, inside the dermoscope's field of view, with
hairs, shadows and glare left out, summarised by the median. Its usual categories (Chardon et al.
1991, Del Bino et al. 2013) run from very light (> 55°) to dark (< -30°).

A dermoscope's light and a camera's white balance shift ITA, so it is an estimate of the
photographed skin's tone, not a Fitzpatrick type; the audit reports it with that caveat.
Daneshjou et al. (2022) found a HAM10000-trained model's AUC falling from 0.72 on Fitzpatrick I-II
to 0.57 on V-VI: the point of the audit is to show how thin the data are for darker tones.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab

# (name, lowest ITA in degrees), lightest first: Del Bino et al. 2013
TONES = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0), ("brown", -30.0),
         ("dark", -math.inf))
TONE_NAMES = tuple(n for n, _ in TONES)
UNKNOWN = "unknown"
SIDE = 128            # measured on a copy at most this large
MARGIN = 0.08         # the lesion outline grown by this share of the short side: its rim is not skin
MIN_SKIN = 0.05       # at least this share of the photo must be usable skin, else no estimate
L_RANGE = (15.0, 97.0)   # darker is hair, shadow or the dermoscope's black field; lighter is glare


def tone_range(name: str) -> str:
    """A category's ITA range in words, e.g. "41° to 55°"."""
    k = TONE_NAMES.index(name)
    low, high = TONES[k][1], TONES[k - 1][1] if k else math.inf
    if not np.isfinite(low):
        return f"≤ {high:g}°"
    return f"> {low:g}°" if not np.isfinite(high) else f"{low:g}° to {high:g}°"


def ita_text(ita: float) -> str:
    """ITA as shown beside its tone, e.g. "ITA 41°". Beyond ±90° (b* below 0: the skin looks bluish,
    from the light or the white balance) it is off the usual scale, and the text says so."""
    if abs(ita) > 90:
        return (f"ITA {ita:.0f}°, beyond the usual scale of ±90°: the skin looks bluish in this photo (light or "
                "white balance)")
    return f"ITA {ita:.0f}°"


def tone_group(ita: float | None) -> str:
    """The ITA category name; ``unknown`` for None or NaN."""
    if ita is None or not np.isfinite(ita):
        return UNKNOWN
    return next(name for name, low in TONES if ita > low)


def estimate_ita(image: Image.Image, lesion_mask: np.ndarray | None = None) -> float | None:
    """The median ITA (degrees) of the skin around the lesion; None when too little skin is seen.

    ``lesion_mask``: the lesion outline at the photo's size (the dataset's mask, or the automatic
    outline when None)."""
    from derm_core.explain.lesion import _field_of_view, find_lesion
    rgb = image.convert("RGB")
    if lesion_mask is None:
        lesion_mask = find_lesion(rgb)
    w, h = rgb.size
    f = min(1.0, SIDE / max(w, h))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = np.asarray(rgb.resize(size, Image.BILINEAR) if f < 1 else rgb, dtype=np.float32) / 255.0
    skin = _field_of_view(small)
    if lesion_mask is not None and np.any(lesion_mask):
        m = np.asarray(Image.fromarray(np.asarray(lesion_mask, dtype=np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        skin &= ~ndimage.binary_dilation(m, iterations=max(1, round(MARGIN * min(size))))
    lab = rgb2lab(small)
    skin &= (lab[..., 0] >= L_RANGE[0]) & (lab[..., 0] <= L_RANGE[1])
    if skin.mean() < MIN_SKIN:
        return None
    return float(np.median(np.degrees(np.arctan2(lab[..., 0][skin] - 50.0, lab[..., 2][skin]))))


def tone_counts(groups) -> dict[str, int]:
    """How many photos per category, lightest first, ``unknown`` last (only where there are any)."""
    groups = list(groups)
    return {n: groups.count(n) for n in order(groups)}


def training_note(group: str, counts: dict[str, int] | None) -> str:
    """What the page says beside a photo's tone: how many training photos the model saw of it."""
    if group == UNKNOWN:
        return "Too little skin around the lesion to estimate its tone."
    if not counts:
        return "The model's card records no skin-tone counts of its training photos."
    total = sum(counts.values())
    n = counts.get(group, 0)
    thin = " Few photos: expect the model to be less reliable on this tone." if n < 0.05 * total else ""
    return (f"{n:,} of the model's {total:,} training photos ({n / total:.1%}) show skin of this tone "
            f"(estimated the same way).{thin}")


def table_itas(table, progress=None) -> np.ndarray:
    """ITA per row of a dataset table (NaN where none can be estimated): the skin outside the
    dataset's lesion mask where the row has one, else outside the automatic outline."""
    out = np.full(len(table), np.nan)
    for k, (path, mask_path) in enumerate(zip(table["path"], table["mask_path"])):
        with Image.open(path) as im:
            mask = None
            if isinstance(mask_path, str) and mask_path:
                with Image.open(mask_path) as m:
                    mask = np.asarray(m.convert("L").resize(im.size, Image.NEAREST)) > 127
            ita = estimate_ita(im, mask)
        out[k] = np.nan if ita is None else ita
        if progress is not None:
            progress(k + 1, len(table))
    return out


def order(groups) -> list[str]:
    """The tone categories present in ``groups``, lightest first, ``unknown`` last."""
    present = set(groups)
    return [n for n in (*TONE_NAMES, UNKNOWN) if n in present]
