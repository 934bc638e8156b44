"""Automatic lesion outline and crop box for any photo, without a learned model.

The triage page needs a lesion mask (for the biopsy site) and a crop suggestion even for
photos that come without a ground-truth mask. Pigmented lesions are darker than the skin
around them, so a classical pipeline does well on dermoscopy and close-up photos: blur,
Otsu-threshold the darkness inside the field of view (the black circular vignette of many
dermoscopes is removed first, or Otsu would split black from skin), prefer a large, central
component that does not touch the border, fill its holes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label
from skimage.morphology import disk

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive as in PIL crop

WORK_SIDE = 256          # segment a copy at most this large: fast, and plenty for an outline
VIGNETTE_LEVEL = 0.18    # darkness-channel level (0..1) below which corner-connected pixels are vignette
MIN_AREA = 0.002         # components smaller than this share of the field of view are noise
BORDER_PENALTY = 0.3     # score factor for components touching the border / vignette
CENTRE_SIGMA = 0.35      # centrality fall-off, in half-diagonals from the image centre


def central_box(size: tuple[int, int], share: float = 0.5) -> Box:
    """The fallback: a centred box covering ``share`` of each side of a (W, H) image."""
    w, h = size
    bw, bh = max(1, round(w * share)), max(1, round(h * share))
    left, top = (w - bw) // 2, (h - bh) // 2
    return left, top, left + bw, top + bh


def _darkness_channel(rgb: np.ndarray) -> np.ndarray:
    """The blue channel (0..1): melanin and blood absorb blue most, so it separates lesion
    from skin better than luminance (200 HAM10000 photos: mean mask IoU 0.70 vs 0.66)."""
    return rgb[..., 2].astype(np.float64) / 255.0


def _vignette(tone: np.ndarray, margin: int) -> np.ndarray:
    """Near-black areas connected to an image corner (a dermoscope's circular border),
    grown by ``margin`` pixels to swallow its soft rim."""
    dark = label(tone < VIGNETTE_LEVEL, connectivity=2)
    corners = {dark[0, 0], dark[0, -1], dark[-1, 0], dark[-1, -1]} - {0}
    vig = np.isin(dark, list(corners))
    return ndimage.binary_dilation(vig, iterations=margin) if vig.any() and margin else vig


def find_lesion(image: Image.Image) -> np.ndarray | None:
    """Boolean lesion mask at the photo's size, or None when no plausible lesion is found."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    f = min(1.0, WORK_SIDE / max(w, h))
    small = rgb.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR) if f < 1 else rgb
    side = min(small.size)
    tone = gaussian(_darkness_channel(np.asarray(small)), sigma=max(1.0, side / 100))
    fov = ~_vignette(tone, margin=max(1, round(side * 0.03)))
    if fov.sum() < 0.2 * fov.size:  # "vignette" everywhere: it was a dark photo, not a border
        fov[:] = True
    values = tone[fov]
    if values.max() - values.min() < 0.04:  # flat: nothing stands out
        return None
    dark = (tone < threshold_otsu(values)) & fov
    brush = disk(max(1, round(side / 60)))
    dark = ndimage.binary_opening(dark, brush)  # hairs and specks
    dark = ndimage.binary_closing(dark, brush)
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
    if score[best] <= 0:
        return None
    mask = ndimage.binary_fill_holes(labels == best)
    if f < 1:
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


def suggest_box(image: Image.Image, margin: float = 0.0) -> Box:
    """Crop box around the suggested lesion in original pixels, grown by ``margin`` of its
    width/height on each side (clipped to the photo); the central box when nothing is found."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    w, h = image.size
    left, top, right, bottom = mask_box(suggest_mask(image))
    dx, dy = round((right - left) * margin), round((bottom - top) * margin)
    return max(0, left - dx), max(0, top - dy), min(w, right + dx), min(h, bottom + dy)


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
    def fit(cls, size: tuple[int, int], max_width: int, max_height: int | None = None) -> "DisplayScale":
        """The largest aspect-preserving size within ``max_width`` x ``max_height`` (never enlarged)."""
        w, h = (int(v) for v in size)
        if min(w, h) < 1 or max_width < 1 or (max_height is not None and max_height < 1):
            raise ValueError(f"sizes must be positive, got photo {size}, max {max_width}x{max_height}")
        f = min(1.0, max_width / w, (max_height / h) if max_height else 1.0)
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
