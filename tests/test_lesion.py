"""Automatic lesion mask and crop box on synthetic photos with known truth."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from derm_core.explain.lesion import box_iou, central_box, find_lesion, mask_box, mask_iou, suggest_box, suggest_mask

SKIN = (222, 176, 150)
LESION = (110, 70, 55)


def synthetic_photo(size=(200, 150), centre=(0.5, 0.5), radii=(0.22, 0.18), vignette=0.0, hairs=0,
                    shading=0.0, lesion=LESION, seed=0) -> tuple[Image.Image, np.ndarray]:
    """Skin with a soft-edged dark ellipse; optionally hairs, uneven lighting and a black
    dermoscope vignette beyond ``vignette`` half-diagonals. Returns the photo and the true mask."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    cx, cy = centre[0] * w, centre[1] * h
    inside = ((xx - cx) / (radii[0] * w)) ** 2 + ((yy - cy) / (radii[1] * h)) ** 2 <= 1
    soft = ndimage.gaussian_filter(inside.astype(float), 1.5)[..., None]
    img = (1 - soft) * np.array(SKIN) + soft * np.array(lesion)
    img *= 1 - shading * (xx / w)[..., None]
    img += rng.normal(0, 6, img.shape)
    for _ in range(hairs):
        x0, y0, x1, y1 = rng.uniform(0, 1, 4) * [w, h, w, h]
        t = np.linspace(0, 1, 400)
        rows, cols = (y0 + t * (y1 - y0)).astype(int), (x0 + t * (x1 - x0)).astype(int)
        img[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)] = 40
    if vignette:
        r = np.hypot(xx - w / 2, yy - h / 2) / np.hypot(w / 2, h / 2)
        fade = np.clip((r - vignette) / 0.06, 0, 1)[..., None]  # black corners with a soft rim
        img = (1 - fade) * img + fade * rng.uniform(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), inside


CASES = {
    "plain": {},
    "vignette": {"vignette": 0.82},
    "vignette, off centre": {"vignette": 0.82, "centre": (0.4, 0.58), "radii": (0.15, 0.14)},
    # a faint lesion inside a wide vignette: Otsu over the whole photo would split black from skin
    "vignette, wide, faint lesion": {"vignette": 0.7, "lesion": (185, 140, 112)},
    "small, hairs": {"radii": (0.08, 0.1), "hairs": 6},
    "large, shading": {"radii": (0.35, 0.33), "shading": 0.15},
    "portrait, vignette": {"size": (150, 200), "vignette": 0.82, "radii": (0.2, 0.15)},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_box_and_mask_match_the_synthetic_lesion(case):
    photo, truth = synthetic_photo(**CASES[case], seed=len(case))
    box = suggest_box(photo)
    assert box_iou(box, mask_box(truth)) > 0.8
    assert mask_iou(suggest_mask(photo), truth) > 0.8


def test_large_photo_is_segmented_at_reduced_size_but_boxed_in_original_pixels():
    photo, truth = synthetic_photo(size=(1200, 900), vignette=0.75, centre=(0.55, 0.45), seed=1)
    mask = suggest_mask(photo)
    assert mask.shape == (900, 1200)
    assert box_iou(suggest_box(photo), mask_box(truth)) > 0.8


def test_nothing_found_falls_back_to_the_central_box():
    flat = Image.new("RGB", (120, 80), SKIN)
    assert find_lesion(flat) is None
    assert suggest_box(flat) == central_box((120, 80)) == (30, 20, 90, 60)
    mask = suggest_mask(flat)
    assert mask.shape == (80, 120) and mask_box(mask) == (30, 20, 90, 60)


def test_margin_grows_the_box_within_the_photo():
    photo, truth = synthetic_photo(centre=(0.2, 0.5), radii=(0.15, 0.2), seed=2)
    tight, wide = suggest_box(photo), suggest_box(photo, margin=0.5)
    assert wide[0] == 0 < tight[0]  # clipped at the left edge
    assert wide[1] < tight[1] and wide[2] > tight[2] and wide[3] > tight[3]
    with pytest.raises(ValueError):
        suggest_box(photo, margin=-0.1)


def test_iou_functions():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        box_iou((10, 0, 0, 10), (0, 0, 1, 1))
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        mask_iou(a, np.zeros((3, 3), bool))
    assert mask_box(np.zeros((3, 3), bool)) is None
