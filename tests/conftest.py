"""Shared fixtures: small synthetic datasets, a tiny untrained model, the HAM10000 folder."""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from derm_core.data.taxonomy import load_taxonomy
from derm_core.model.checkpoint import ModelCard
from derm_core.model.networks import create_model
from derm_core.model.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent
HAM_DIR = Path(os.environ.get("DERMTRIAGE_HAM10000", ROOT.parent / "shared" / "data" / "ham10000"))
CLASS_COLOURS = {"akiec": (200, 60, 60), "bcc": (230, 150, 180), "bkl": (150, 100, 50), "df": (120, 70, 90),
                 "mel": (30, 20, 25), "nv": (100, 60, 40), "vasc": (180, 20, 60)}

torch.set_num_threads(min(2, torch.get_num_threads()))


def lesion_image(colour, size=(64, 48), seed=0) -> Image.Image:
    """A skin-coloured photo with one elliptical 'lesion' of the given colour."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, (224, 180, 160))
    d = ImageDraw.Draw(img)
    cx, cy = w / 2 + rng.integers(-4, 5), h / 2 + rng.integers(-3, 4)
    rx, ry = w * rng.uniform(0.2, 0.3), h * rng.uniform(0.2, 0.3)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(int(c) for c in colour))
    arr = np.asarray(img).astype(int) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_dataset(root: Path, per_class: int = 10, layout: str = "generic", size=(64, 48)) -> Path:
    """A labelled folder in the generic (labels.csv) or HAM10000 (metadata.csv) layout."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for c, colour in CLASS_COLOURS.items():
        for i in range(per_class):
            image_id = f"{c}_{i:03d}"
            lesion = f"L_{c}_{i // 2}"  # two images per lesion
            lesion_image(colour, size, seed=zlib.crc32(image_id.encode())).save(root / "images" / f"{image_id}.jpg", quality=95)
            rows.append({"image_id": image_id, "label": c, "lesion_id": lesion, "age": float(rng.integers(20, 80)),
                         "sex": rng.choice(["male", "female"]), "site": rng.choice(["back", "face", "trunk"])})
    df = pd.DataFrame(rows)
    if layout == "ham":
        df = df.rename(columns={"label": "dx", "site": "localization"})
        df.to_csv(root / "metadata.csv", index=False)
    else:
        df.to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture
def synthetic_data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def ham7():
    return load_taxonomy("ham7")


def tiny_card(taxonomy, use_metadata=True, size=(48, 64)) -> ModelCard:
    return ModelCard.from_json({
        "arch": "tiny_test", "taxonomy": taxonomy.to_dict(), "use_metadata": use_metadata,
        "preprocessing": {"input_size": list(size), "mean": [0.5] * 3, "std": [0.5] * 3},
        "temperature": 1.0,
        "thresholds": {"classes": {c: 0.3 for c in taxonomy.classes}, "tiers": {"high-risk": 0.3, "dangerous": 0.3}},
    })


@pytest.fixture
def tiny_predictor(ham7) -> Predictor:
    torch.manual_seed(0)
    model = create_model("tiny_test", len(ham7.classes), use_metadata=True, pretrained="none")
    return Predictor(model, tiny_card(ham7), device=torch.device("cpu"))


@pytest.fixture
def ham_dir() -> Path:
    if not (HAM_DIR / "metadata.csv").is_file():
        pytest.skip(f"HAM10000 folder not found at {HAM_DIR} (set DERMTRIAGE_HAM10000 to run this test)")
    return HAM_DIR


def page_text(at) -> str:
    """Every markdown, caption, subheader, alert and progress-bar text an AppTest run shows, as one string."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
    for kind in (at.success, at.warning, at.error, at.info):
        parts += [e.value for e in kind]
    parts += [p.proto.text for p in at.get("progress")]
    return "\n".join(str(p) for p in parts)


GPS_TEXT = ("PhoneMaker", "Model X")    # camera make and model written into exif_photo


def exif_photo(colour=CLASS_COLOURS["mel"], size=(200, 150), seed=7) -> bytes:
    """A phone JPEG: EXIF orientation 6, GPS position, camera make and model."""
    img = lesion_image(colour, size, seed=seed)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F], exif[0x0110] = GPS_TEXT
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (51.0, 30.0, 12.5), "W", (0.0, 7.0, 39.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825), "the fixture photo carries GPS"
    return data
