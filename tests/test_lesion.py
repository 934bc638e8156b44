"""Automatic lesion mask and crop box on synthetic photos with known truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bench.phone_photos import ellipse_lesion, phone_photo
from derm_core.explain.lesion import (box_iou, central_box, find_lesion, frame_box, lesion_box, mask_box, mask_iou,
                                      suggest_box, suggest_crop, suggest_mask)

ROOT = Path(__file__).resolve().parent.parent

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


# --------------------------------------------------------------------------- phone photos (issue 16, part 5)
LANDSCAPE, PORTRAIT = (4032, 3024), (3024, 4032)
PHONE_CASES = {  # 12 MP, the lesion filling `share` of the frame, lit unevenly by the phone's light
    "landscape, plain, light skin": dict(size=LANDSCAPE, tone=1, share=0.15),
    "portrait, plain, medium skin, small": dict(size=PORTRAIT, tone=3, share=0.05),
    "landscape, textured": dict(size=LANDSCAPE, tone=2, textured=True, share=0.1),
    "portrait, textured, dark skin, large": dict(size=PORTRAIT, tone=6, textured=True, share=0.3),
    "landscape, adapter": dict(size=LANDSCAPE, tone=2, adapter=True, share=0.15),
    "portrait, textured, adapter": dict(size=PORTRAIT, tone=4, textured=True, adapter=True, share=0.1),
}


@pytest.mark.parametrize("case", list(PHONE_CASES))
def test_a_lesion_in_a_12mp_phone_photo_is_found_and_cropped(case):
    """The old pipeline suggested (nearly) the whole frame here: uneven light made shaded skin as
    dark as the lesion. The lesion box must match, and the crop frame it as HAM10000 photos do."""
    src, mask = ellipse_lesion(radii=(0.3, 0.22), seed=len(case))
    photo, truth = phone_photo(src, mask, **PHONE_CASES[case], seed=len(case))
    true_box = mask_box(truth)
    assert box_iou(lesion_box(photo), true_box) >= 0.6
    assert lesion_box(photo) == suggest_box(photo)
    x0, y0, x1, y1 = crop = suggest_crop(photo)
    assert x0 <= true_box[0] and y0 <= true_box[1] and x1 >= true_box[2] and y1 >= true_box[3], (crop, true_box)
    w, h = x1 - x0, y1 - y0
    assert w / h == pytest.approx(4 / 3, rel=0.02) or w == photo.size[0]   # 4:3 unless the photo is too narrow
    fill = max((true_box[2] - true_box[0]) / w, (true_box[3] - true_box[1]) / h)
    assert 0.55 <= fill <= 0.8, fill     # about 2/3 along its fuller side, as in HAM10000


def test_a_flat_12mp_photo_still_falls_back():
    flat = Image.new("RGB", LANDSCAPE, SKIN)
    assert find_lesion(flat) is None
    assert suggest_box(flat) == lesion_box(flat) == central_box(LANDSCAPE)
    assert suggest_crop(flat) == frame_box(central_box(LANDSCAPE), LANDSCAPE)


def test_frame_box_adds_the_margin_widens_to_4_3_and_stays_in_the_photo():
    assert frame_box((100, 100, 200, 175), (1000, 1000), margin=0.0) == (100, 100, 200, 175)   # already 4:3
    assert frame_box((100, 100, 200, 200), (1000, 1000), margin=0.0) == (83, 100, 217, 200)    # square: widened
    assert frame_box((100, 100, 200, 175), (1000, 1000), margin=0.25) == (75, 81, 225, 194)
    assert frame_box((0, 0, 60, 100), (1000, 1000), margin=0.0) == (0, 0, 133, 100)           # moved inside
    assert frame_box((0, 0, 200, 150), (200, 150)) == (0, 0, 200, 150)                        # clipped to the photo
    assert frame_box((10, 0, 20, 300), (100, 300)) == (0, 0, 100, 300)                         # taller than 4:3 fits
    assert frame_box((100, 70, 104, 74), (200, 150)) == (91, 64, 113, 80)   # a speck: still a crop the model takes


def test_predict_crop_auto_and_the_triage_page_use_the_same_rule():
    from derm_core.cli import _crop_photo
    src, mask = ellipse_lesion(seed=1)
    photo, _ = phone_photo(src, mask, size=(1008, 756), share=0.1, seed=1)
    crop, box, how = _crop_photo(photo, "auto")
    assert box == suggest_crop(photo) and crop.size == (box[2] - box[0], box[3] - box[1]) and how.startswith("auto")
    page = (ROOT / "pages" / "triage.py").read_text()
    assert "lesion.suggest_crop(_photo)" in page and "suggest_box(" not in page


def _ham_photos(ham_dir, n):
    """The first ``n`` test-split photos of the shipped model (its split file), with their masks."""
    import pandas as pd
    split = pd.read_csv(ROOT / "weights" / "default" / "split.csv")
    for image_id in sorted(split.loc[split["split"] == "test", "image_id"])[:n]:
        photo = Image.open(ham_dir / "images" / f"{image_id}.jpg").convert("RGB")
        yield image_id, photo, np.asarray(Image.open(ham_dir / "masks" / f"{image_id}.png").convert("L")) > 127


def test_ham_photos_as_they_are_and_in_phone_photos(ham_dir):
    """Real lesions: full-frame dermoscopy (as before) and the same lesions in 12 MP phone frames
    (bench/bench_crop.py measures the whole test split; this keeps a small, fast sample honest)."""
    as_is, phone = [], []
    for k, (image_id, photo, mask) in enumerate(_ham_photos(ham_dir, 12)):
        as_is.append(box_iou(lesion_box(photo), mask_box(mask)))
        big, truth = phone_photo(photo, mask, size=LANDSCAPE if k % 2 else PORTRAIT, tone=k % 8, textured=bool(k % 3),
                                 adapter=k % 4 == 1, share=0.05 + 0.25 * (k % 5) / 4, seed=k)
        phone.append(box_iou(lesion_box(big), mask_box(truth)))
    assert np.mean(np.array(as_is) >= 0.6) >= 0.75, np.round(as_is, 2)
    assert np.mean(np.array(phone) >= 0.6) >= 0.75, np.round(phone, 2)
