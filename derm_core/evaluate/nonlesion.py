"""Photos that are not skin lesions, made offline: the held-out test of the out-of-scope gate.

The gate is fitted on lesion photos only (:mod:`derm_core.model.ood`); these images are never
used to fit or to choose it, only to measure how many it flags. They come from the photos
that scikit-image and scikit-learn ship (animals, people, objects, landscapes, a fundus
photo, histology, a motorbike), the app's own screenshot, and images drawn here: product
shots on a studio background, report-like documents, user-interface screenshots, blank,
gradient and noise images. Each source photo appears whole and as the triage page would
crop it (the suggested lesion box), since a user's upload reaches the model through that crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from derm_core.explain.lesion import suggest_crop

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("natural photo", "product photo", "screenshot", "document", "medical, not a skin lesion", "blank or noise")


@dataclass(frozen=True)
class Sample:
    kind: str
    name: str
    image: Image.Image


def _rgb(a) -> Image.Image:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _sklearn(name: str) -> Image.Image:
    import sklearn.datasets
    return Image.open(Path(sklearn.datasets.__file__).parent / "images" / name).convert("RGB")


def _natural() -> dict[str, Image.Image]:
    d = skimage.data
    out = {n: _rgb(getattr(d, n)()) for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera",
                                              "clock", "coins", "grass", "gravel", "brick")}
    out["motorcycle"] = _rgb(d.stereo_motorcycle()[0])
    out["china"], out["flower"] = _sklearn("china.jpg"), _sklearn("flower.jpg")
    faces = d.lfw_subset()
    out["faces"] = _rgb(np.vstack([np.hstack(list(faces[r * 8:(r + 1) * 8])) for r in range(6)])).resize((800, 600))
    return out


def _product(src: Image.Image, box, bg: tuple[int, int, int], size=(800, 600)) -> Image.Image:
    """An object cut from a photo, centred on a plain studio background with a soft shadow."""
    obj = src.crop(box)
    obj.thumbnail((int(size[0] * 0.6), int(size[1] * 0.6)))
    canvas = Image.new("RGB", size, bg)
    x, y = (size[0] - obj.width) // 2, (size[1] - obj.height) // 2
    shadow = Image.new("L", size, 0)
    ImageDraw.Draw(shadow).ellipse([x, y + obj.height - 20, x + obj.width, y + obj.height + 25], fill=90)
    canvas.paste(Image.new("RGB", size, (60, 60, 60)), mask=shadow.filter(ImageFilter.GaussianBlur(12)))
    canvas.paste(obj, (x, y))
    return canvas


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _document(rng: np.random.Generator, size=(850, 1100)) -> Image.Image:
    """A report-like page: title, a coloured banner, a table and paragraphs."""
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((60, 50), "Case report", fill=(0, 0, 0), font=_font(36))
    colour = tuple(int(c) for c in rng.choice([(198, 40, 40), (239, 108, 0), (46, 125, 50)]))
    d.rectangle([60, 110, size[0] - 60, 160], fill=colour)
    d.text((75, 122), "Risk tier: high-risk. Refer to a dermatologist", fill=(255, 255, 255), font=_font(22))
    y = 190
    for r in range(8):
        d.rectangle([60, y, size[0] - 60, y + 30], outline=(120, 120, 120))
        d.text((70, y + 6), f"Class {r}   {rng.uniform(0, 60):.1f}%   threshold {rng.uniform(0, 30):.1f}%",
               fill=(20, 20, 20), font=_font(16))
        y += 30
    y += 30
    for _ in range(int(rng.integers(12, 22))):
        words = " ".join("lorem ipsum dolor sit amet consectetur adipiscing".split()[int(k)]
                         for k in rng.integers(0, 7, 9))
        d.text((60, y), words, fill=(30, 30, 30), font=_font(18))
        y += 28
    return img


def _ui(rng: np.random.Generator, size=(1024, 700)) -> Image.Image:
    """A user-interface screenshot: sidebar, title, widgets, a bar chart."""
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, 240, size[1]], fill=(240, 242, 246))
    for k in range(6):
        d.text((20, 40 + 50 * k), f"Setting {k + 1}", fill=(40, 40, 40), font=_font(16))
        d.rectangle([20, 62 + 50 * k, 220, 80 + 50 * k], outline=(180, 180, 180))
    d.text((280, 30), "DermTriage", fill=(20, 20, 20), font=_font(34))
    for k in range(5):
        w = int(rng.uniform(50, 600))
        d.rectangle([300, 120 + 40 * k, 300 + w, 145 + 40 * k], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    d.rounded_rectangle([300, 360, 460, 400], 8, fill=(255, 75, 75))
    d.text((320, 370), "Download", fill=(255, 255, 255), font=_font(16))
    return img


def _noise(rng: np.random.Generator, kind: int, size=(400, 300)) -> Image.Image:
    w, h = size
    if kind == 0:
        return Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    if kind == 1:   # a smooth two-colour gradient
        t = np.linspace(0, 1, w)[None, :, None]
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return Image.fromarray(np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8))
    if kind == 2:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    g = rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (h, w, 1)) + rng.normal(0, 10, (1, 1, 3))
    return Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0, 3)))


def corpus(seed: int = 0, crops: bool = True) -> list[Sample]:
    """The held-out non-lesion images (about 110): whole photos and, with ``crops``, the triage
    page's suggested crop of each."""
    rng = np.random.default_rng(seed)
    d = skimage.data
    nat = _natural()
    items: list[tuple[str, str, Image.Image]] = [("natural photo", n, im) for n, im in nat.items()]
    coffee, rocket, astro = nat["coffee"], nat["rocket"], nat["astronaut"]
    for i, (src, box) in enumerate([(coffee, (60, 20, 460, 330)), (rocket, (250, 0, 420, 427)), (astro, (0, 0, 300, 300)),
                                    (nat["motorcycle"], (100, 50, 700, 480)), (nat["clock"], (0, 0, 400, 300))]):
        for bg in ((255, 255, 255), (225, 225, 228)):
            items.append(("product photo", f"product {i} on {bg[0]}", _product(src, box, bg)))
    logo = Image.fromarray(d.logo())
    items.append(("product photo", "logo", Image.alpha_composite(Image.new("RGBA", logo.size, (255,) * 4), logo).convert("RGB")))
    shot = Image.open(ROOT / "docs" / "triage.png").convert("RGB") if (ROOT / "docs" / "triage.png").is_file() else None
    if shot is not None:
        items.append(("screenshot", "app screenshot", shot))
        for k in range(6):
            y = int(rng.integers(0, shot.height - 600))
            items.append(("screenshot", f"app screenshot part {k}", shot.crop((0, y, shot.width, y + 600))))
    items += [("screenshot", f"interface {k}", _ui(rng)) for k in range(6)]
    items += [("document", f"report-like page {k}", _document(rng)) for k in range(6)]
    items += [("document", n, _rgb(getattr(d, n)())) for n in ("page", "text")]
    items += [("medical, not a skin lesion", n, _rgb(getattr(d, n)()))
              for n in ("retina", "immunohistochemistry", "microaneurysms", "shepp_logan_phantom")]
    items += [("blank or noise", f"{['flat', 'gradient', 'uniform noise', 'blurred noise'][k % 4]} {k}", _noise(rng, k % 4))
              for k in range(12)]
    items += [("blank or noise", n, _rgb(getattr(d, n)())) for n in ("checkerboard", "colorwheel")]
    out = [Sample(k, n, im) for k, n, im in items]
    if crops:
        for k, n, im in items:
            box = suggest_crop(im)
            if min(box[2] - box[0], box[3] - box[1]) >= 16 and box != (0, 0, *im.size):
                out.append(Sample(k, n + " (suggested crop)", im.crop(box)))
    return out
