"""Automatic lesion outline and crop box for any photo: classical, with a learned outline for close-ups.

The triage page needs a lesion mask (for the biopsy site) and a crop suggestion even for
photos that come without a ground-truth mask: full-frame dermoscopy, where the lesion fills
much of the frame, and 12 MP phone photos, where it may fill only 5% of it, on skin lit
unevenly by the phone's light, perhaps inside a dermatoscope adapter's black round field.
Pigmented lesions are darker than the skin around them, so a classical pipeline does well where
there is skin around the lesion:

1. work on a copy at most :data:`WORK_SIDE` pixels large (a 12 MP photo in well under 0.1 s);
2. drop the black vignette or adapter field (near-black areas connected to a corner), or Otsu
   would split black from skin;
3. take the blue channel (melanin and blood absorb it most), close over thin dark lines
   (hairs), blur it and divide it by the skin's own brightness, estimated by a grey closing
   that fills in anything darker and smaller than a large disk: a phone's uneven light would
   otherwise make shaded skin darker than a small lesion, and Otsu then split lit from shaded
   skin, the lesion lost in a dark half of the frame (the old whole-frame suggestion);
4. Otsu-threshold that, a little towards the skin (Otsu alone cuts a lesion's lighter rim
   off), prefer a large, central component that does not touch the border, let it grow into
   its lighter rim (hysteresis, within a band around it so it cannot run off into the skin),
   fill its holes;
5. when that lesion's box covers :data:`CLOSE_UP` of the photo or more (a close-up, as most
   dermoscopy), there was too little skin for step 3 and the outline is often too small or
   too large: the learned outline of :mod:`derm_core.explain.outline` (shipped with the model,
   trained on its training split's masks) replaces it, where one is installed.

Settings were chosen on validation-split photos; ``bench/bench_crop.py`` measures them on the
test split, on HAM10000 photos as they are and placed into synthetic phone photos.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label
from skimage.morphology import disk

from derm_core.data.images import MIN_SIDE
from derm_core.settings import SHIPPED_MODEL

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive as in PIL crop

WORK_SIDE = 256          # segment a copy at most this large: fast, and plenty for an outline
VIGNETTE_LEVEL = 0.25    # brightness (max channel, 0..1) below which corner-connected pixels are vignette ...
VIGNETTE_SHARE = 0.4     # ... or below this share of the bright skin's brightness (dark skin, adapter field)
HAIR = 100               # dark lines thinner than about 2 / HAIR of the short side are hairs, closed over
MIN_AREA = 0.002         # components smaller than this share of the field of view are noise
BORDER_PENALTY = 0.3     # score factor for components touching the border / vignette
CENTRE_SIGMA = 0.35      # centrality fall-off, in half-diagonals from the image centre
SKIN_DISK = 0.3          # the skin-brightness closing's disk radius, share of the short side (lesions up to
                         # about this radius are filled in; larger ones are only partly flattened)
CORE_LEVEL = 0.3         # the lesion's core: darker than Otsu's level moved this far towards the skin's median
RIM_LEVEL = 0.45         # its rim: pixels darker than the level this far towards the skin, joined to the core ...
RIM_BAND = 0.2           # ... within this share of the core's radius of it
CLOSE_UP = 0.25          # a found lesion box covering this share of the photo or more: a close-up (step 5)
CROP_MARGIN = 0.25       # crop margin per side, share of the lesion box: the lesion then fills about 2/3 of the
                         # crop along its fuller side, as in HAM10000 (median 0.65), which the model was trained on
CROP_ASPECT = 4 / 3      # ... and the crop is widened to the model's 4:3 landscape frame


def central_box(size: tuple[int, int], share: float = 0.5) -> Box:
    """The fallback: a centred box covering ``share`` of each side of a (W, H) image."""
    w, h = size
    bw, bh = max(1, round(w * share)), max(1, round(h * share))
    left, top = (w - bw) // 2, (h - bh) // 2
    return left, top, left + bw, top + bh


def _work_copy(image: Image.Image) -> np.ndarray:
    """RGB (0..1) copy at most WORK_SIDE large; a phone photo is first box-reduced (fast), then resized."""
    image = image if image.mode in ("RGB", "L") else image.convert("RGB")
    w, h = image.size
    f = min(1.0, WORK_SIDE / max(w, h))
    if f < 1:
        k = int(1 / f) // 2
        image = image.reduce(k) if k >= 2 else image
        image = image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _field_of_view(rgb: np.ndarray) -> np.ndarray:
    """False on near-black areas connected to an image corner (a dermoscope's or phone adapter's
    black surround), grown to swallow its soft rim. Brightness is the largest channel, so dark
    skin (blue almost nil) is not mistaken for black."""
    side = min(rgb.shape[:2])
    v = gaussian(rgb.max(axis=2), sigma=1.0)
    dark = label(v < min(VIGNETTE_LEVEL, VIGNETTE_SHARE * np.percentile(v, 90)), connectivity=2)
    corners = {dark[0, 0], dark[0, -1], dark[-1, 0], dark[-1, -1]} - {0}
    vig = np.isin(dark, list(corners))
    if vig.any():
        vig = ndimage.binary_dilation(vig, iterations=max(1, round(side * 0.03)))
    if vig.mean() > 0.8:  # "vignette" everywhere: it was a dark photo, not a border
        vig[:] = False
    return ~vig


def _skin_brightness(tone: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """The skin's large-scale brightness (uneven light, a dermoscope's fall-off): a grey closing
    of a small copy with a disk of SKIN_DISK of its short side, which fills in darker spots up to
    that size, smoothed. Outside the field of view the nearest skin stands in, so the black
    surround does not pull the skin's estimate down at its rim."""
    H, W = tone.shape
    if not fov.all():
        idx = ndimage.distance_transform_edt(~fov, return_distances=False, return_indices=True)
        tone = tone[idx[0], idx[1]]
    k = max(1, min(round(max(H, W) / 64), min(H, W) // 4))
    small = tone[: H // k * k, : W // k * k].reshape(H // k, k, W // k, k).mean(axis=(1, 3))
    r = max(1, round(SKIN_DISK * min(small.shape)))
    skin = ndimage.gaussian_filter(ndimage.grey_closing(small, footprint=disk(r)), r / 2, mode="nearest")
    skin = np.asarray(Image.fromarray(skin.astype(np.float32)).resize((W, H), Image.BILINEAR))
    return np.maximum(skin, 1e-3)


def _pick(dark: np.ndarray, fov: np.ndarray) -> np.ndarray | None:
    """The component of ``dark`` most likely the lesion: largest by centrality-weighted area,
    those touching the border or vignette down-weighted, specks ignored."""
    labels = label(dark, connectivity=2)
    if labels.max() == 0:
        return None
    edge = ndimage.binary_dilation(~fov, iterations=1)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    H, W = dark.shape
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(yy - (H - 1) / 2, xx - (W - 1) / 2) / (np.hypot(H, W) / 2)
    centrality = np.exp(-(d / CENTRE_SIGMA) ** 2)  # per pixel, so a ring round the centre scores low
    n = labels.max() + 1
    area = np.bincount(labels.ravel(), minlength=n)
    score = np.bincount(labels.ravel(), weights=centrality.ravel(), minlength=n)
    touches = np.bincount(labels[edge], minlength=n) > 0
    score = np.where(touches, score * BORDER_PENALTY, score)
    score[0] = 0.0
    score[area < MIN_AREA * fov.sum()] = 0.0
    best = int(np.argmax(score))
    return labels == best if score[best] > 0 else None


def _classical(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray | None:
    """Steps 3-4 on the work copy: the lesion mask, or None when no plausible lesion is found."""
    side = min(rgb.shape[:2])
    hairless = ndimage.grey_closing(rgb[..., 2], footprint=disk(max(1, round(side / HAIR))))  # fills thin dark lines
    tone = gaussian(hairless, sigma=max(1.0, side / 100))
    rel = tone / _skin_brightness(tone, fov)
    values = rel[fov]
    if values.max() - values.min() < 0.04:  # flat: nothing stands out
        return None
    otsu = threshold_otsu(values)
    skin = float(np.median(values[values > otsu]))
    brush = disk(max(1, round(side / 60)))

    def darker(share: float) -> np.ndarray:
        """Pixels darker than Otsu's level moved ``share`` of the way to the skin, without hairs and specks."""
        dark = ndimage.binary_opening((rel < otsu + share * (skin - otsu)) & fov, brush)
        return ndimage.binary_closing(dark, brush)

    core = _pick(darker(CORE_LEVEL), fov)
    if core is None:
        return None
    rim = label(darker(RIM_LEVEL), connectivity=2)
    joined = np.isin(rim, np.setdiff1d(rim[core], [0]))
    near = ndimage.distance_transform_edt(~core) <= RIM_BAND * np.sqrt(core.sum() / np.pi)
    grown = ndimage.binary_opening(core | (joined & near), brush)  # not along hairs leaving the lesion
    return ndimage.binary_fill_holes(core | grown)


def _find_small(image: Image.Image) -> np.ndarray | None:
    """The lesion mask on the work copy, or None when no plausible lesion is found."""
    rgb = _work_copy(image)
    fov = _field_of_view(rgb)
    mask = _classical(rgb, fov)
    if mask is None:
        return None
    box = mask_box(mask)
    if (box[2] - box[0]) * (box[3] - box[1]) >= CLOSE_UP * mask.size:
        net = outline_network()
        learned = net.mask(image, mask.shape, fov) if net is not None else None
        if learned is not None:
            return learned
    return mask


_OUTLINE: dict = {"path": SHIPPED_MODEL.parent, "loaded": None}     # the shipped bundle's network


def use_outline(path: str | Path | None) -> None:
    """Outline close-ups with the network at ``path`` (an ``outline.json`` or its folder) from now
    on; None: with the classical outline only. The shipped bundle's network is the default."""
    _OUTLINE.update(path=None if path is None else Path(path), loaded=None)


@contextmanager
def outline_from(path: str | Path | None):
    """:func:`use_outline` for the length of a ``with`` block (the release builds its gate with
    the network it has just trained), then the one used before."""
    before = _OUTLINE["path"]
    use_outline(path)
    try:
        yield
    finally:
        use_outline(before)


def outline_network():
    """The installed :class:`~derm_core.explain.outline.Outline`, loaded once (again when its card
    changes); None when none is installed. A broken one is an error, never silently skipped."""
    path = _OUTLINE["path"]
    if path is None:
        return None
    from derm_core.explain.outline import CARD, Outline
    card = path / CARD if path.is_dir() else path
    if not card.is_file():
        return None
    stamp = (card, card.stat().st_mtime_ns, card.stat().st_size)
    if _OUTLINE["loaded"] is None or _OUTLINE["loaded"][0] != stamp:
        _OUTLINE["loaded"] = (stamp, Outline.load(card))
    return _OUTLINE["loaded"][1]


def find_lesion(image: Image.Image) -> np.ndarray | None:
    """Boolean lesion mask at the photo's size, or None when no plausible lesion is found."""
    mask = _find_small(image)
    if mask is None:
        return None
    w, h = image.size
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) >= 128
    return mask


def suggest_mask(image: Image.Image) -> np.ndarray:
    """Lesion mask at the photo's size; the central box when no lesion is found."""
    mask = find_lesion(image)
    if mask is None or not mask.any():
        w, h = image.size
        left, top, right, bottom = central_box((w, h))
        mask = np.zeros((h, w), dtype=bool)
        mask[top:bottom, left:right] = True
    return mask


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box around a boolean mask, None if it is empty."""
    rows, cols = np.flatnonzero(np.any(mask, axis=1)), np.flatnonzero(np.any(mask, axis=0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def lesion_box(image: Image.Image) -> Box:
    """Tight box around the found lesion in original pixels (found on the work copy and scaled
    back, so a 12 MP mask is never built); the central box when nothing is found."""
    w, h = image.size
    small = _find_small(image)
    box = mask_box(small) if small is not None else None
    if box is None:
        return central_box((w, h))
    sx, sy = w / small.shape[1], h / small.shape[0]
    left, top, right, bottom = box
    return (max(0, int(left * sx)), max(0, int(top * sy)),
            min(w, int(np.ceil(right * sx))), min(h, int(np.ceil(bottom * sy))))


def suggest_box(image: Image.Image, margin: float = 0.0) -> Box:
    """Box around the suggested lesion in original pixels, grown by ``margin`` of its width/height
    on each side (clipped to the photo); the central box when nothing is found."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    w, h = image.size
    left, top, right, bottom = lesion_box(image)
    dx, dy = round((right - left) * margin), round((bottom - top) * margin)
    return max(0, left - dx), max(0, top - dy), min(w, right + dx), min(h, bottom + dy)


def frame_box(box: Box, size: tuple[int, int], margin: float = CROP_MARGIN, aspect: float = CROP_ASPECT) -> Box:
    """``box`` grown by ``margin`` of its width/height per side, then widened (or heightened) about
    its centre to ``aspect`` (width/height), moved inside the (W, H) photo and clipped to it.

    The model sees its input resized to cover a 4:3 frame and centre-cropped: a taller crop would
    lose the lesion's top and bottom, and a tight one would frame it unlike its training photos.
    At least MIN_SIDE pixels a side (where the photo is), so ``crop_photo`` accepts it."""
    W, H = size
    left, top, right, bottom = box
    bw, bh = (right - left) * (1 + 2 * margin), (bottom - top) * (1 + 2 * margin)
    bw, bh = max(bw, bh * aspect), max(bh, bw / aspect)
    grow = max(1.0, MIN_SIDE / max(min(bw, bh), 1e-9))   # never smaller than crop_photo accepts
    bw, bh = min(bw * grow, W), min(bh * grow, H)
    cx = min(max((left + right) / 2, bw / 2), W - bw / 2)
    cy = min(max((top + bottom) / 2, bh / 2), H - bh / 2)
    x0, y0 = max(0, round(cx - bw / 2)), max(0, round(cy - bh / 2))
    return x0, y0, min(W, max(x0 + 1, round(cx + bw / 2))), min(H, max(y0 + 1, round(cy + bh / 2)))


def suggest_crop(image: Image.Image) -> Box:
    """The suggested crop for the model: the lesion box framed as in HAM10000 (:func:`frame_box`).
    The one rule for the triage page's default crop box and ``predict --crop auto``."""
    return frame_box(lesion_box(image), image.size)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    for box in (a, b):
        if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"a box is (left, top, right, bottom) with right >= left and bottom >= top, got {box}")
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 1.0 if union == 0 else inter / union


def box_agreement(rows) -> dict:
    """How well the suggested lesion box (:func:`lesion_box`, as the page and ``predict --crop
    auto`` use it) matches the true one (the mask's tight box) on a table's photos with masks:
    ``{"n", "iou_at_least_0.6", "median_iou"}``; the model sheet's crop figures."""
    ious = []
    for path, mask_path in zip(rows["path"], rows["mask_path"]):
        if mask_path is None or (isinstance(mask_path, float) and np.isnan(mask_path)):
            continue
        with Image.open(path) as im, Image.open(mask_path) as m:
            truth = mask_box(np.asarray(m.convert("L")) > 127)
            if truth is not None:
                ious.append(box_iou(lesion_box(im.convert("RGB")), truth))
    ious = np.asarray(ious)
    return {"n": int(len(ious)), "iou_at_least_0.6": float(np.mean(ious >= 0.6)) if len(ious) else None,
            "median_iou": float(np.median(ious)) if len(ious) else None}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# --------------------------------------------------------------------------- photo shown on screen
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class DisplayScale:
    """A photo of ``size`` (W, H) shown at ``shown`` (w, h) screen pixels, e.g. in the cropper.

    Phone photos (4032x3024 and up, portrait or landscape) are far larger than a page column,
    so the crop widget gets a copy scaled to fit the column; the box it returns is in that
    copy's pixels and is mapped back here, exactly (to within one screen pixel).
    """

    size: tuple[int, int]    # original (W, H)
    shown: tuple[int, int]   # on screen (w, h)

    @classmethod
    def fit(cls, size: tuple[int, int], max_width: int, max_height: int | None = None,
            enlarge: bool = False) -> "DisplayScale":
        """The largest aspect-preserving size within ``max_width`` x ``max_height``; a smaller photo
        keeps its own size unless ``enlarge`` (the crop widget scales a 200x150 photo up to its
        column so the box is easy to grab; the box still maps back to the photo's own pixels)."""
        w, h = (int(v) for v in size)
        if min(w, h) < 1 or max_width < 1 or (max_height is not None and max_height < 1):
            raise ValueError(f"sizes must be positive, got photo {size}, max {max_width}x{max_height}")
        f = min(max_width / w, (max_height / h) if max_height else float("inf"))
        f = f if enlarge else min(1.0, f)
        return cls((w, h), (max(1, int(w * f)), max(1, int(h * f))))

    @property
    def scale(self) -> tuple[float, float]:
        """Screen pixels per original pixel, horizontally and vertically."""
        return self.shown[0] / self.size[0], self.shown[1] / self.size[1]

    def resize(self, image: Image.Image) -> Image.Image:
        """The photo as it is shown."""
        if image.size != self.size:
            raise ValueError(f"the photo is {image.size}, this scale is for {self.size}")
        return image if self.shown == self.size else image.resize(self.shown, Image.LANCZOS)

    def jpeg_data_url(self, image: Image.Image, quality: int = 88) -> str:
        """The photo as it is shown, as a ``data:image/jpeg;base64,...`` URL for the browser
        (pixels only: no EXIF or other metadata travels with it)."""
        import base64
        import io

        buf = io.BytesIO()
        self.resize(image).convert("RGB").save(buf, format="JPEG", quality=quality)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def box_to_shown(self, box: Box) -> dict:
        """An original-pixel box as the crop widget's rectangle (left, top, width, height in screen pixels)."""
        sx, sy = self.scale
        left, top = round(box[0] * sx), round(box[1] * sy)
        right, bottom = round(box[2] * sx), round(box[3] * sy)
        return {"left": left, "top": top, "width": max(1, right - left), "height": max(1, bottom - top)}

    def rect_to_original(self, rect: dict) -> Box:
        """The crop widget's rectangle (screen pixels; floats allowed) as an original-pixel box,
        clipped to the photo and at least one pixel wide and high."""
        sx, sy = self.scale
        W, H = self.size
        left = min(max(0, round(float(rect["left"]) / sx)), W - 1)
        top = min(max(0, round(float(rect["top"]) / sy)), H - 1)
        right = min(W, max(left + 1, round((float(rect["left"]) + float(rect["width"])) / sx)))
        bottom = min(H, max(top + 1, round((float(rect["top"]) + float(rect["height"])) / sy)))
        return left, top, right, bottom


# --------------------------------------------------------------------------- biopsy site
GRAZE_DEPTH = 0.3    # a superpixel whose deepest point in the outline is under this share of the outline's own
                     # depth only grazes the lesion's rim


def _depth(region: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def biopsy_site(lime, outline: np.ndarray | None, outline_name: str = "the lesion outline", k: int = 3):
    """The biopsy site for a LIME explanation, kept well inside the lesion outline.

    Starts from :func:`derm_core.explain.maps.biopsy_site` (the strongest supporting superpixels
    that lie mostly in the outline), then puts the point where that superpixel reaches
    deepest into the outline (the point farthest from the outline's edge, among the
    superpixel's pixels at least 2 px from its own edge when there are any) rather than at
    the superpixel's own centre, which for a superpixel at the lesion's rim can fall just
    outside the true lesion. When none of the chosen superpixels reaches
    :data:`GRAZE_DEPTH` of the outline's depth, the outline's deepest point is used and the
    note says so.

    Args:
        lime: a :class:`~derm_core.explain.maps.LimeResult`.
        outline: bool lesion mask at the model input size or the photo's size (None: none).
        outline_name: what the outline is, for the note ("an automatic lesion outline").

    Returns:
        A :class:`~derm_core.explain.maps.BiopsySite` (model-input pixels) whose note names the
        outline used.
    """
    from dataclasses import replace

    from derm_core.explain.maps import biopsy_site as lime_site
    from derm_core.explain.maps import mask_to_model

    site = lime_site(lime, outline, k=k)
    seg = lime.segments
    if outline is None or not site.suggested:
        return site
    mask = np.asarray(outline, dtype=bool)
    if mask.shape != seg.shape:
        mask = mask_to_model(mask, seg.shape)
    if not mask.any():
        return site
    depth = _depth(mask)
    deepest = float(depth.max())
    best = None
    for s in site.segments:
        sp = seg == s
        inner = sp & (_depth(sp) >= 2) & mask
        cand = inner if inner.any() else sp & mask
        if not cand.any():
            continue
        d = np.where(cand, depth, -1.0)
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        if d[y, x] >= GRAZE_DEPTH * deepest:
            best = (int(x), int(y), s)
            break
    if best is None:
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        note = (f"the supporting superpixels only graze {outline_name}'s rim: its deepest point was used")
        return replace(site, x=int(x), y=int(y), note=note)
    x, y, s = best
    score = float(lime.weights.get(s, 0.0))
    segs = (s, *[t for t in site.segments if t != s])
    return replace(site, x=x, y=y, score=score, segments=segs, note=site.note)


def crop_point_to_photo(point: tuple[int, int], box: Box) -> tuple[int, int]:
    """A pixel of the crop ``box`` (left, top, right, bottom) as a pixel of the whole photo."""
    return int(point[0]) + int(box[0]), int(point[1]) + int(box[1])


def crop_mask(mask: np.ndarray, box: Box) -> np.ndarray:
    """The part of a whole-photo mask inside the crop ``box``."""
    left, top, right, bottom = (int(v) for v in box)
    return np.asarray(mask)[top:bottom, left:right]
