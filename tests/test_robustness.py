"""Robustness (issue #6): a corpus of bad and unusual inputs, property-based tests of the image
loader and the triage logic, concurrent sessions on one shared Predictor, interrupted writes and a
training job killed mid-epoch.

Existing tests this extends rather than repeats: tests/test_data.py (missing ``label`` column,
unknown label, duplicate ids, non-UTF-8 CSV, missing image), tests/test_triage.py (worked tier and
differential examples), tests/test_explain.py (concurrent Grad-CAM vs sequential),
tests/test_profiles.py (crash while publishing a new profile), tests/test_jobs.py (graceful stop
and resume), tests/test_app_triage.py (four bad uploads, four unusual formats on the page).
"""
from __future__ import annotations

import io
import json
import re
import signal
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from conftest import CLASS_COLOURS, ROOT, lesion_image, tiny_card, write_dataset
from derm_core.data.clinical import Clinical
from derm_core.data.dataset import DataError, LesionDataset, load_table
from derm_core.data.images import MAX_BYTES, MAX_PIXELS, MIN_SIDE, ImageError, load_image
from derm_core.data.taxonomy import load_taxonomy
from derm_core.explain import maps as E
from derm_core.fit import jobs
from derm_core.fit.config import TrainConfig
from derm_core.model.calibration import softmax
from derm_core.model.checkpoint import ModelError, atomic_write_json, load_model, read_card, save_model
from derm_core.model.networks import create_model
from derm_core.model.transforms import eval_transform
from derm_core.triage import profiles as P
from derm_core.triage.rules import Thresholds, assign_tiers, tier_scores, triage

WHITE = (255, 255, 255)


# =========================================================================== image corpus

def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + _png_chunk(b"IEND", b"")


def phone_photo_exif6() -> bytes:
    """A 200x150 JPEG as a phone stores it: sensor landscape, EXIF orientation 6 (display rotated
    90 degrees clockwise), GPS position and camera make. A red block marks the stored top-left."""
    img = lesion_image(CLASS_COLOURS["mel"], (200, 150), seed=7)
    img.paste((255, 0, 0), (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6                       # Orientation: rotate 90 CW to display
    exif[0x010F] = "PhoneMaker"            # Make
    exif[0x0110] = "Model X"               # Model
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.5)      # latitude
    gps[3], gps[4] = "W", (0.0, 7.0, 39.0)        # longitude
    return _enc(img, "JPEG", exif=exif, quality=95)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    return _enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 120, 60, 40] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 10, 30, 30))        # a brown square on a transparent background
    return _enc(img, "PNG", transparency=0)


def _rgba() -> bytes:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    img.paste((120, 60, 40, 255), (10, 10, 30, 30))
    return _enc(img, "PNG")


def _la() -> bytes:
    img = Image.new("LA", (40, 40), (0, 0))
    img.paste((90, 255), (10, 10, 30, 30))
    return _enc(img, "PNG")


def _sixteen_bit() -> bytes:
    arr = np.zeros((32, 48), dtype=np.uint16)
    arr[:, :16], arr[:, 16:32], arr[:, 32:] = 0, 257 * 100, 65535
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return _enc(img, "PNG")


def _corrupt_scan_jpeg() -> bytes:
    raw = bytearray(_enc(lesion_image(CLASS_COLOURS["nv"], (120, 90)), "JPEG", quality=90))
    sos = raw.index(b"\xff\xda")
    for i in range(sos + 40, len(raw) - 10, 37):    # scribble over the entropy-coded data
        raw[i] = 0x5A
    return bytes(raw)


def _broken_exif_jpeg() -> bytes:
    good = _enc(lesion_image(CLASS_COLOURS["bkl"], (64, 48)), "JPEG")
    app1 = b"Exif\0\0" + b"MM\0*\0\0\0\x08" + b"\xff\xff" + b"\x01" * 20   # an IFD claiming 65535 entries
    return good[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + good[2:]


def _truncated(data: bytes, frac: float) -> bytes:
    return data[: int(len(data) * frac)]


def _float_tiff(arr) -> bytes:
    return _enc(Image.fromarray(np.asarray(arr, dtype=np.float32)), "TIFF")


FLOAT_RAMP = np.linspace(0, 1, 90 * 120, dtype=np.float32).reshape(90, 120)   # a float photo in 0..1
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 120 90\n"
       b"newpath 10 10 moveto 100 80 lineto stroke showpage\n%%EOF\n")


def _with_nan(arr, value):
    a = np.array(arr, dtype=np.float32)
    a[40, 60] = value
    return a


PHOTO = lesion_image(CLASS_COLOURS["df"], (120, 90), seed=1)
JPEG = _enc(PHOTO, "JPEG", quality=90)
PNG = _enc(PHOTO, "PNG")

# name -> (bytes, expectation): ("error", regex) must raise ImageError matching regex;
# ("ok", (w, h)) must decode to an RGB image of that size; ("either", None): ImageError or a valid image.
CORPUS: dict[str, tuple] = {
    # not images at all, with image extensions
    "notes.jpg": (b"this is not an image at all\n" * 10, ("error", "not a format DermTriage reads")),
    "page.png": (b"<!doctype html><html><body>hello</body></html>", ("error", "not a format DermTriage reads")),
    "document.jpeg": (b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", ("error", "not a format DermTriage reads")),
    "archive.webp": (b"PK\x03\x04" + b"\0" * 60, ("error", "not a format DermTriage reads")),
    "vector.png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', ("error", "not a format DermTriage reads")),
    "empty.jpg": (b"", ("error", "empty")),
    # damaged files
    "truncated.jpg": (_truncated(JPEG, 0.5), ("error", "damaged or truncated")),
    "truncated.png": (_truncated(PNG, 0.5), ("error", "damaged or truncated")),
    "header_only.png": (PNG[:33], ("error", "damaged or truncated")),
    "bad_crc.png": (PNG[:60] + bytes([PNG[60] ^ 0xFF]) + PNG[61:], ("error", "damaged or truncated")),
    "gif_header_only.gif": (b"GIF89a\x10\x00\x10\x00", ("error", "damaged or truncated|not an image")),
    "corrupt_scan.jpg": (_corrupt_scan_jpeg(), ("either", None)),
    "broken_exif.jpg": (_broken_exif_jpeg(), ("ok", (64, 48))),
    # too small, too large
    "one_pixel.png": (_enc(Image.new("RGB", (1, 1)), "PNG"), ("error", "only 1x1 pixels")),
    "sliver.png": (_enc(Image.new("RGB", (400, MIN_SIDE - 1)), "PNG"), ("error", f"at least {MIN_SIDE}x{MIN_SIDE}")),
    "smallest.png": (_enc(Image.new("RGB", (MIN_SIDE, MIN_SIDE)), "PNG"), ("ok", (MIN_SIDE, MIN_SIDE))),
    "bomb_header.png": (_png_claiming(100_000, 100_000), ("error", "too large|megapixels")),
    "bomb_just_over.png": (_png_claiming(8000, MAX_PIXELS // 8000 + 1), ("error", "limit is 40 megapixels")),
    # unusual but valid
    "sixteen_bit.png": (_sixteen_bit(), ("ok", (48, 32))),
    "cmyk.jpg": (_enc(PHOTO.convert("CMYK"), "JPEG"), ("ok", (120, 90))),
    "palette_transparent.png": (_palette_with_transparency(), ("ok", (40, 40))),
    "rgba.png": (_rgba(), ("ok", (40, 40))),
    "la.png": (_la(), ("ok", (40, 40))),
    "bilevel.png": (_enc(PHOTO.convert("1"), "PNG"), ("ok", (120, 90))),
    "animated.gif": (_animated_gif(), ("ok", (40, 30))),
    "phone_exif6.jpg": (phone_photo_exif6(), ("ok", (150, 200))),
    "photo.webp": (_enc(PHOTO, "WEBP", quality=90), ("ok", (120, 90))),
    "photo.tiff": (_enc(PHOTO, "TIFF"), ("ok", (120, 90))),
    "photo.bmp": (_enc(PHOTO, "BMP"), ("ok", (120, 90))),
    "float.tif": (_enc(Image.fromarray(np.linspace(0, 1, 90 * 120, dtype=np.float32).reshape(90, 120)), "TIFF"),
                  ("ok", (120, 90))),
    "icc_srgb.jpg": (_enc(PHOTO, "JPEG", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()),
                     ("ok", (120, 90))),
    "icc_garbage.png": (_enc(PHOTO, "PNG", icc_profile=b"not a colour profile" * 8), ("ok", (120, 90))),
    # issue 13: only the listed formats are decoded, chosen by content (never Ghostscript or other plugins)
    "postscript.jpg": (EPS, ("error", "PostScript/EPS file: not a format DermTriage reads")),
    "binary_eps.png": (b"\xc5\xd0\xd3\xc6" + b"\0" * 60, ("error", "EPS file: not a format DermTriage reads")),
    "photoshop.png": (b"8BPS\0\1" + b"\0" * 60, ("error", "Photoshop")),
    "icon.png": (_enc(PHOTO, "ICO"), ("error", r"icon \(ICO\) file: not a format DermTriage reads")),
    "pcx.jpg": (_enc(PHOTO, "PCX"), ("error", "not a format DermTriage reads")),
    "tga.jpg": (_enc(PHOTO, "TGA"), ("error", r"TGA \(Targa\) image: not a format DermTriage reads \(JPEG, PNG")),
    # issue 18: images in formats DermTriage does not read are named as such, not as "not an image"
    "sixteen_bit_pgm.png": (_enc(Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20), "PPM"),
                            ("error", r"Netpbm \(PGM\) image: not a format DermTriage reads \(JPEG, PNG")),
    "ppm.jpg": (_enc(PHOTO, "PPM"), ("error", r"Netpbm \(PPM\) image: not a format DermTriage reads")),
    "jxl_codestream.jpg": (b"\xff\x0a\xfa\x1f" + b"\0" * 60, ("error", "JPEG XL image: not a format DermTriage reads")),
    "jxl_container.png": (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\0" * 60,
                          ("error", "JPEG XL image: not a format DermTriage reads")),
    "photo.heic": (_enc(PHOTO, "HEIF", quality=90), ("ok", (120, 90))),
    "truncated.heic": (_truncated(_enc(PHOTO, "HEIF", quality=90), 0.5), ("error", "damaged or truncated")),
    "photo.avif": (_enc(PHOTO, "AVIF", quality=90), ("ok", (120, 90))),
    # float photos: scaled by their range; NaN / infinity refused
    "float_0_255.tif": (_float_tiff(FLOAT_RAMP * 255), ("ok", (120, 90))),
    "float_nan.tif": (_float_tiff(_with_nan(FLOAT_RAMP, np.nan)), ("error", r"not numbers \(NaN or infinity\)")),
    "float_inf.tif": (_float_tiff(_with_nan(FLOAT_RAMP, np.inf)), ("error", r"not numbers \(NaN or infinity\)")),
    # extreme aspect ratios, refused before any resize
    "strip_header_2000000x20.png": (_png_claiming(2_000_000, 20), ("error", "100000:1 strip")),
    "strip_2000x20.png": (_enc(Image.new("RGB", (2000, 20), (120, 60, 40)), "PNG"), ("error", "100:1 strip")),
    "tall_strip_20x700.png": (_enc(Image.new("RGB", (20, 700), (120, 60, 40)), "PNG"), ("error", "35:1 strip")),
    "ratio_10_to_1.png": (_enc(Image.new("RGB", (160, 16), (120, 60, 40)), "PNG"), ("ok", (160, 16))),
}


def _check(result_or_exc, expect, name):
    kind, arg = expect
    if kind == "error":
        assert isinstance(result_or_exc, ImageError), f"{name}: expected ImageError, got {result_or_exc!r}"
        assert re.search(arg, str(result_or_exc)), f"{name}: message {result_or_exc} does not match {arg!r}"
    elif kind == "ok":
        assert isinstance(result_or_exc, Image.Image), f"{name}: expected an image, got {result_or_exc!r}"
        assert result_or_exc.mode == "RGB" and result_or_exc.size == arg, (name, result_or_exc.mode, result_or_exc.size)
    else:
        assert isinstance(result_or_exc, (ImageError, Image.Image)), f"{name}: {result_or_exc!r}"
        if isinstance(result_or_exc, Image.Image):
            assert result_or_exc.mode == "RGB"


def _try_load(source):
    try:
        return load_image(source)
    except ImageError as e:
        return e


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_from_bytes_and_from_file(name, tmp_path, tiny_predictor):
    data, expect = CORPUS[name]
    got = _try_load(data)
    _check(got, expect, name)
    path = tmp_path / name
    path.write_bytes(data)
    from_file = _try_load(path)
    _check(from_file, expect, name)
    if isinstance(got, Image.Image):
        assert np.array_equal(np.asarray(got), np.asarray(from_file))
        res = tiny_predictor.predict(got, Clinical(age=50), anyway=True)   # what loads can reach the model
        assert sum(res.probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert res.differential and res.tier in load_taxonomy("ham7").tier_names


def test_corpus_pixels_are_right():
    """Not just 'no crash': the conversions put the right pixels in the right place."""
    px = lambda name, xy: load_image(CORPUS[name][0]).getpixel(xy)
    # 16-bit scaled to 8 bits: 0 -> 0, 25700 -> 100, 65535 -> 255 (grey)
    assert px("sixteen_bit.png", (5, 5)) == (0, 0, 0)
    assert px("sixteen_bit.png", (20, 5)) == (100, 100, 100)
    assert px("sixteen_bit.png", (40, 5)) == WHITE
    # transparency flattened onto white; opaque pixels kept
    for name, inside in (("palette_transparent.png", (120, 60, 40)), ("rgba.png", (120, 60, 40)),
                         ("la.png", (90, 90, 90))):
        assert px(name, (2, 2)) == WHITE, name
        assert px(name, (20, 20)) == inside, name
    # animated GIF: the first frame (red)
    r, g, b = px("animated.gif", (20, 15))
    assert r > 150 and g < 80 and b < 80
    # EXIF orientation 6: the stored top-left (red block) is displayed top-right
    img = load_image(CORPUS["phone_exif6.jpg"][0])
    r, g, b = img.getpixel((img.width - 10, 10))
    assert r > 200 and g < 60 and b < 60
    r, g, b = img.getpixel((10, 10))
    assert not (r > 200 and g < 60 and b < 60)
    # CMYK converted back close to the RGB original
    diff = np.abs(np.asarray(load_image(CORPUS["cmyk.jpg"][0]), dtype=int) - np.asarray(PHOTO, dtype=int))
    assert diff.mean() < 20
    # float photos in 0..1 and in 0..255 both span the 8-bit range (not "almost black")
    expected = np.clip(FLOAT_RAMP * 255 + 0.5, 0, 255).astype(np.uint8)
    for name in ("float.tif", "float_0_255.tif"):
        got = np.asarray(load_image(CORPUS[name][0]))
        assert got[..., 0].max() == 255 and got[..., 0].min() == 0, name
        assert np.abs(got[..., 0].astype(int) - expected).max() <= 1, name
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all(), name
    # HEIC / AVIF decode to the photo's colours (lossy, so close rather than equal)
    for name in ("photo.heic", "photo.avif"):
        diff = np.abs(np.asarray(load_image(CORPUS[name][0]), dtype=int) - np.asarray(PHOTO, dtype=int))
        assert diff.mean() < 12, name


def test_byte_and_pixel_limits():
    with pytest.raises(ImageError, match=f"limit is {MAX_BYTES // 2**20} MB"):
        load_image(b"\xff\xd8" + b"\0" * MAX_BYTES)
    # a real (decodable) image just over the pixel limit: 1-bit, so it is small in memory and on disk
    w = 8000
    big = _enc(Image.new("1", (w, MAX_PIXELS // w + 1)), "PNG")
    assert len(big) < 1_000_000
    with pytest.raises(ImageError, match="limit is 40 megapixels"):
        load_image(big)
    with pytest.raises(ImageError, match="not found"):
        load_image(Path("/no/such/photo.jpg"))


def test_bad_uploads_give_a_clear_message_on_the_triage_page(tmp_path, ham7, monkeypatch):
    """Every corpus file that is refused shows its reason on the page, in one session, one after another."""
    from streamlit.testing.v1 import AppTest
    torch.manual_seed(0)
    path = save_model(create_model("tiny_test", 7, True, pretrained="none"), tiny_card(ham7), tmp_path / "m" / "model")
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(path))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    refused = [n for n, (_, (kind, _)) in CORPUS.items() if kind == "error"]
    for name in refused:
        at.file_uploader[0].set_value((name, CORPUS[name][0], "image/png"))
        at.run()
        assert not at.exception, (name, at.exception)
        errors = " ".join(e.value for e in at.error)
        assert f"**{name}** cannot be used" in errors, (name, errors)


# --------------------------------------------------------------------------- property-based: image loader

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x01\x00"]


@pytest.mark.filterwarnings("ignore::UserWarning")   # Pillow warns about the damage it skips
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_loader(prefix, body):
    got = _try_load(prefix + body)
    assert isinstance(got, (ImageError, Image.Image))
    if isinstance(got, Image.Image):
        assert got.mode == "RGB" and min(got.size) >= MIN_SIDE


SEEDS = {fmt: _enc(lesion_image(CLASS_COLOURS["bcc"], (40, 32), seed=2).convert(mode), fmt, **kw)
         for fmt, mode, kw in (("PNG", "RGB", {}), ("JPEG", "RGB", {"quality": 80}), ("GIF", "P", {}),
                               ("BMP", "RGB", {}), ("TIFF", "RGB", {}), ("WEBP", "RGB", {"quality": 80}))}


@pytest.mark.filterwarnings("ignore::UserWarning")   # Pillow warns about the damage it skips
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(SEEDS)), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=6))
def test_damaged_real_files_never_crash_the_loader(fmt, cut, flips):
    data = bytearray(SEEDS[fmt][: max(1, int(len(SEEDS[fmt]) * cut))] if cut < 1 else SEEDS[fmt])
    for pos, value in flips:
        data[int(pos * len(data))] = value
    got = _try_load(bytes(data))
    assert isinstance(got, (ImageError, Image.Image)), got
    if isinstance(got, Image.Image):
        assert got.mode == "RGB" and min(got.size) >= MIN_SIDE


MODES_FORMATS = {"RGB": ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"], "RGBA": ["PNG", "WEBP", "TIFF"],
                 "L": ["PNG", "JPEG", "TIFF", "BMP", "GIF"], "LA": ["PNG"], "P": ["PNG", "GIF", "BMP"],
                 "1": ["PNG", "TIFF", "BMP"], "I;16": ["PNG", "TIFF"], "CMYK": ["JPEG", "TIFF"], "I": ["TIFF"],
                 "F": ["TIFF"]}


@pytest.mark.filterwarnings("ignore::UserWarning")   # Pillow warns about the damage it skips
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(sorted(MODES_FORMATS)), w=st.integers(1, 70), h=st.integers(1, 70),
       data=st.data(), seed=st.integers(0, 2**16))
def test_random_valid_images_load_upright_rgb_of_the_same_size(mode, w, h, data, seed):
    fmt = data.draw(st.sampled_from(MODES_FORMATS[mode]), label="format")
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode in ("I", "F"):
        img = Image.fromarray(rng.integers(0, 70000, (h, w)).astype(np.int32 if mode == "I" else np.float32))
    elif mode == "P":
        img = rgb.quantize(16)
    else:
        img = rgb.convert(mode)
    got = _try_load(_enc(img, fmt))
    if min(w, h) < MIN_SIDE:
        assert isinstance(got, ImageError) and f"{w}x{h} pixels" in str(got)
    else:
        assert isinstance(got, Image.Image), (mode, fmt, w, h, got)
        assert got.mode == "RGB" and got.size == (w, h)


# =========================================================================== dataset CSV corpus

@pytest.fixture
def small_data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data", per_class=2)


def _labels(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "labels.csv", dtype=str)


CSV_CASES = {
    # name: (how to rewrite labels.csv, expected DataError regex)
    "empty file": (lambda root: (root / "labels.csv").write_bytes(b""), r"labels.csv: the CSV file is empty"),
    "header only": (lambda root: (root / "labels.csv").write_text("image_id,label\n"), r"labels.csv: no rows"),
    "missing image_id": (lambda root: _labels(root).drop(columns="image_id").to_csv(root / "labels.csv", index=False),
                         r"required column\(s\) missing: image_id"),
    "semicolon separated": (lambda root: _labels(root).to_csv(root / "labels.csv", index=False, sep=";"),
                            r"required column\(s\) missing"),
    "ragged rows": (lambda root: (root / "labels.csv").write_text("image_id,label\nakiec_000,akiec\nx,y,z,w,v\n"),
                    r"labels.csv: not a readable CSV"),
    "binary garbage": (lambda root: (root / "labels.csv").write_bytes(bytes(range(256)) * 4), r"labels.csv"),
    "latin-1 label": (lambda root: (root / "labels.csv").write_bytes(
        (root / "labels.csv").read_bytes().replace(b"akiec_000,akiec", b"akiec_000,n\xe6vus")),
        r"not UTF-8 text.*save the CSV as UTF-8"),
    "invalid age": (lambda root: _labels(root).assign(age=["abc"] + ["40"] * 13).to_csv(root / "labels.csv", index=False),
                    r"labels.csv row 2:"),
    "blank image_id": (lambda root: (root / "labels.csv").write_text("image_id,label\nnv_000,nv\n,nv\n"),
                       r"labels.csv row 3: image_id is empty"),
    "blank label": (lambda root: (root / "labels.csv").write_text("image_id,label\nnv_000, \n"), r"row 2: label is empty"),
    "duplicate id, other case of label": (
        lambda root: pd.concat([_labels(root), _labels(root).iloc[[5]].assign(label="MEL")]).to_csv(
            root / "labels.csv", index=False), r"row 16: image_id 'bkl_001' appears more than once"),
    "unknown label last row": (
        lambda root: _labels(root).assign(label=list(_labels(root)["label"][:-1]) + ["wart"]).to_csv(
            root / "labels.csv", index=False), r"row 15: unknown label 'wart'"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_files_are_refused_naming_file_and_row(small_data, ham7, case):
    rewrite, message = CSV_CASES[case]
    rewrite(small_data)
    with pytest.raises(DataError, match=message):
        load_table(small_data, ham7)


def test_csv_variants_that_must_still_load(small_data, ham7):
    df = _labels(small_data)
    # Excel's "CSV UTF-8" adds a byte-order mark; spreadsheets add spaces and capitals
    df.assign(label=" " + df["label"].str.upper() + " ").to_csv(small_data / "labels.csv", index=False,
                                                                encoding="utf-8-sig")
    t = load_table(small_data, ham7)
    assert len(t) == 14 and set(t["label"]) == set(ham7.classes)
    # HAM layout column names, no optional columns
    df[["image_id", "label"]].rename(columns={"label": "dx"}).to_csv(small_data / "metadata.csv", index=False)
    t = load_table(small_data, ham7)
    assert len(t) == 14 and t["age"].isna().all() and (t["group"] == t["image_id"]).all()


def test_bad_image_files_in_a_dataset_are_named(small_data, ham7):
    for name in ["notes.jpg", "empty.jpg", "truncated.jpg", "one_pixel.png", "bomb_header.png"]:
        bad = small_data / "images" / "nv_000.jpg"
        bad.write_bytes(CORPUS[name][0])
        table = load_table(small_data, ham7)
        with pytest.raises(DataError, match=r"nv_000\.jpg: "):
            LesionDataset(table, eval_transform((48, 64), [0.5] * 3, [0.5] * 3))


# =========================================================================== property-based: triage logic

HAM7 = load_taxonomy("ham7")
HAN12 = load_taxonomy("han12")


@st.composite
def probabilities(draw, n):
    w = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)), dtype=float) + 1e-9
    return w / w.sum()


@st.composite
def thresholds(draw, tax):
    f = st.floats(0.0, 1.0)
    return Thresholds({c: draw(f) for c in tax.classes}, {t: draw(f) for t in tax.tier_names[1:]}, "random")


@settings(max_examples=300, deadline=None)
@given(data=st.data(), tax=st.sampled_from([HAM7, HAN12]))
def test_differential_is_never_empty_sorted_and_exactly_the_passing_classes(data, tax):
    p = data.draw(probabilities(len(tax.classes)))
    th = data.draw(thresholds(tax))
    r = triage(p, tax, th)
    assert r.differential, "the differential is never empty"
    probs = [q for _, q in r.differential]
    assert probs == sorted(probs, reverse=True)
    assert len({c for c, _ in r.differential}) == len(r.differential)
    passing = {c for c, q in zip(tax.classes, p) if q >= th.classes[c]}
    if passing:
        assert not r.low_confidence and {c for c, _ in r.differential} == passing
    else:
        assert r.low_confidence and r.differential == [(tax.classes[int(np.argmax(p))], float(p.max()))]
    assert sum(r.probs.values()) == pytest.approx(1.0)
    assert sum(r.tier_probs.values()) == pytest.approx(1.0)
    assert r.tier in tax.tier_names and r.action == tax.tiers[r.tier].action


@settings(max_examples=300, deadline=None)
@given(data=st.data(), tax=st.sampled_from([HAM7, HAN12]), share=st.floats(1e-3, 1.0))
def test_moving_probability_to_a_more_urgent_class_never_lowers_the_tier(data, tax, share):
    p = data.draw(probabilities(len(tax.classes)))
    th = data.draw(thresholds(tax))
    rank = {c: tax.tier_names.index(tax.class_tier[c]) for c in tax.classes}
    src = data.draw(st.sampled_from([c for c in tax.classes if rank[c] < len(tax.tier_names) - 1]))
    dst = data.draw(st.sampled_from([c for c in tax.classes if rank[c] > rank[src]]))
    assume(p[tax.index(src)] * share >= 1e-6)
    q = p.copy()
    moved = q[tax.index(src)] * share
    q[tax.index(src)] -= moved
    q[tax.index(dst)] += moved
    before, after = (tax.tier_names.index(triage(x, tax, th).tier) for x in (p, q))
    assert after >= before


@settings(max_examples=300, deadline=None)
@given(data=st.data(), tax=st.sampled_from([HAM7, HAN12]))
def test_tiers_are_monotone_in_thresholds_and_checked_from_the_most_urgent(data, tax):
    probs = np.stack([data.draw(probabilities(len(tax.classes))) for _ in range(5)])
    th = data.draw(thresholds(tax)).tiers
    lower = {t: v * data.draw(st.floats(0.0, 1.0)) for t, v in th.items()}
    k, k_lower = assign_tiers(probs, tax, th), assign_tiers(probs, tax, lower)
    assert (k_lower >= k).all(), "lowering thresholds can only make cases more urgent"
    at_or_above = np.cumsum(tier_scores(probs, tax)[:, ::-1], axis=1)[:, ::-1]
    names = tax.tier_names
    for row, tier in zip(at_or_above, k):
        if tier > 0:
            assert row[tier] >= th[names[tier]]
        assert all(row[j] < th[names[j]] for j in range(tier + 1, len(names)))
    zero = assign_tiers(probs, tax, {t: 0.0 for t in th})
    assert (zero == len(names) - 1).all(), "zero thresholds flag everything as the most urgent tier"


@settings(max_examples=200, deadline=None)
@given(logits=st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=12), t=st.floats(0.05, 20.0))
def test_calibrated_probabilities_sum_to_one_and_keep_the_ranking(logits, t):
    z = np.array(logits)
    p = softmax(z, t)
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0) and (p >= 0).all()
    assert p[int(np.argmax(z))] == p.max()           # the top logit keeps the top probability
    order = np.argsort(z, kind="stable")
    assert (np.diff(p[order]) >= -1e-12).all()


# =========================================================================== concurrency

def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def test_concurrent_sessions_get_the_same_results_as_serial(tiny_predictor):
    """Six 'sessions' each triage their own photo and explain it (Grad-CAM family + LIME) at once,
    on the one shared Predictor the app caches; every result equals the serial one."""
    pred = tiny_predictor
    state = {k: v.clone() for k, v in pred.model.state_dict().items()}
    grads = [p.requires_grad for p in pred.model.parameters()]
    sessions = [(lesion_image(colour, (90 + 10 * i, 70), seed=i), Clinical(age=20 + 10 * i, sex="female"),
                 ("gradcam", "gradcam++", "eigencam")[i % 3]) for i, colour in enumerate(CLASS_COLOURS.values())][:6]

    def session(job):
        photo, clinical, method = job
        res = pred.predict(photo, clinical)
        cam = E.cam_heatmap(pred, photo, method=method, clinical=clinical)
        lime = E.lime_explanation(pred, photo, num_samples=40, n_segments=12, clinical=clinical)
        return res, cam, lime

    serial = [session(j) for j in sessions]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(session, sessions * 2))     # every session twice, twelve at once
    for (r0, c0, l0), (r1, c1, l1) in zip(serial * 2, parallel):
        assert r1.differential == r0.differential and r1.tier == r0.tier
        assert r1.probs == pytest.approx(r0.probs, abs=1e-6)
        assert c1.target == c0.target and c1.method == c0.method
        np.testing.assert_allclose(c1.heatmap, c0.heatmap, atol=1e-5)
        assert l1.target == l0.target and l1.supporting() == l0.supporting()
    assert _hooks(pred.model) == 0, "per-request CAM hooks must never stay on the shared model"
    assert all(p.grad is None for p in pred.model.parameters())
    assert [p.requires_grad for p in pred.model.parameters()] == grads
    assert all(torch.equal(v, pred.model.state_dict()[k]) for k, v in state.items())
    assert not pred.lock.locked() and not pred.model.training


# =========================================================================== interrupted writes

class PowerCut(BaseException):
    pass


def _cut(*a, **kw):
    raise PowerCut("power cut mid-write")


def test_interrupted_card_rewrite_leaves_the_previous_model(tmp_path, ham7, monkeypatch):
    import derm_core.model.checkpoint as C
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, True, pretrained="none").eval()
    path = save_model(model, tiny_card(ham7), tmp_path / "m" / "model")
    before_card, before_weights = path.read_bytes(), path.with_suffix(".safetensors").read_bytes()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        reference = model(x)

    data = json.loads(before_card)
    data["temperature"] = 2.5                                # e.g. `recalibrate` rewriting the card
    for where in ("fsync", "replace"):                       # mid-write (before sync) and before the rename
        with monkeypatch.context() as m:
            m.setattr(C.os, where, _cut)
            with pytest.raises(PowerCut):
                atomic_write_json(path, data)
            with pytest.raises(PowerCut):                    # a whole new model over the old one
                save_model(create_model("tiny_test", 7, True, pretrained="none"), tiny_card(ham7), path)
        assert path.read_bytes() == before_card and path.with_suffix(".safetensors").read_bytes() == before_weights
        loaded, card = load_model(path)
        assert card.temperature == 1.0
        with torch.no_grad():
            assert torch.equal(loaded(x), reference)
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.safetensors"], "no temp files left"


def test_interrupted_profile_save_leaves_the_previous_version(tmp_path, ham7, monkeypatch):
    import derm_core.model.checkpoint as C
    torch.manual_seed(0)
    card = read_card(save_model(create_model("tiny_test", 7, True, pretrained="none"), tiny_card(ham7),
                                tmp_path / "m" / "model"))
    folder = tmp_path / "profiles"
    th = lambda v: Thresholds({c: v for c in card.classes}, {t: v for t in card.taxonomy.tier_names[1:]})
    v1 = P.save_profile("clinic", th(0.2), card, folder=folder)
    saved = v1.path.read_bytes()
    for module, where in ((C.os, "fsync"), (C.os, "replace"), (P.os, "link")):
        with monkeypatch.context() as m:
            m.setattr(module, where, _cut)
            with pytest.raises(PowerCut):
                P.save_profile("clinic", th(0.4), card, folder=folder)
        assert [p.name for p in folder.iterdir()] == [v1.path.name], f"left-overs after a cut in {where}"
        assert v1.path.read_bytes() == saved
        again = P.load_profile(v1.path, card)
        assert again.version == 1 and again.thresholds.classes == th(0.2).classes
    assert P.save_profile("clinic", th(0.4), card, folder=folder).version == 2   # and saving works again


def test_truncated_or_mismatched_model_is_refused_with_a_reason(tmp_path, ham7):
    """Beyond tests/test_checkpoint.py: an empty weights file, a header-only file, and weights of the
    right names but another width (the card says 7 classes, the tensors hold 5)."""
    torch.manual_seed(0)
    path = save_model(create_model("tiny_test", 7, True, pretrained="none"), tiny_card(ham7), tmp_path / "a" / "model")
    w = path.with_suffix(".safetensors")
    good = w.read_bytes()
    for broken in (b"", good[:8], good[:-100]):
        w.write_bytes(broken)
        with pytest.raises(ModelError, match="truncated or corrupt"):
            load_model(path)
    five = save_model(create_model("tiny_test", 5, True, pretrained="none"), tiny_card(ham7), tmp_path / "b" / "model")
    w.write_bytes(five.with_suffix(".safetensors").read_bytes())
    with pytest.raises(ModelError, match=r"has shape \(5.*expected \(7.*7 classes"):
        load_model(path)


# =========================================================================== training killed mid-epoch

def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL (an OOM kill or a power cut: no chance to save) in the middle of an epoch; the
    checkpoint of the last finished epoch is intact and the same run continues from it.
    (tests/test_jobs.py covers the graceful stop button.)"""
    data = write_dataset(tmp_path / "data", per_class=3)
    run = tmp_path / "runs" / "killed"
    req = TrainConfig(data=str(data), arch="tiny_test", epochs=200, batch_size=2, lr=3e-3, pretrained="none",
                      workers=0, patience=500, device="cpu", tta=False)
    try:
        jobs.start(run, req, nice=0)
        t0 = time.time()
        while True:
            assert time.time() - t0 < 600, "training did not get going"
            assert jobs.status(run).alive, jobs.status(run).log_tail
            try:
                last = json.loads((run / "last.json").read_text())
                prog = json.loads((run / "progress.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.05)
                continue
            if prog.get("state") == "training" and prog["epoch"] == last["epoch"] + 1:
                break               # inside an epoch that is not checkpointed yet, with an earlier one saved
            time.sleep(0.01)
        jobs.kill(run, signal.SIGKILL)
        assert not jobs.status(run).alive
        saved = json.loads((run / "last.json").read_text())
        k = saved["epoch"]
        assert k >= 1 and [h["epoch"] for h in saved["history"]] == list(range(1, k + 1))
        assert jobs.status(run).resumable and not (run / "model.json").exists()

        jobs.start(run, replace(req, epochs=k + 1), nice=0)
        done = jobs.wait(run, timeout=600)
        assert done.state == "done", (done.error, done.log_tail)
    finally:
        jobs.kill(run, signal.SIGKILL)
    assert f"resuming {run} after epoch {k}" in (run / "train.log").read_text()
    history = json.loads((run / "model.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, k + 2))
    assert history[:k] == saved["history"], "finished epochs are kept, not re-run"
    load_model(run / "model.json")


def test_a_crop_box_is_checked_by_one_rule():
    """The triage page's crop box and ``predict --crop`` go through ``crop_photo``: inside the photo,
    at least MIN_SIDE on each side, no strip."""
    from derm_core.data.images import MAX_ASPECT, MIN_SIDE, crop_photo
    photo = Image.new("RGB", (200, 150), (200, 150, 140))
    assert crop_photo(photo, (10, 20, 110, 100)).size == (100, 80)
    for box in [(0, 0, MIN_SIDE - 1, 50), (-1, 0, 50, 50), (0, 0, 201, 50), (50, 50, 40, 60),
                (0, 0, int(MIN_SIDE * (MAX_ASPECT + 1)), MIN_SIDE)]:
        with pytest.raises(ImageError, match="crop"):
            crop_photo(photo, box)


def test_the_report_gives_the_crop_box_in_words():
    """The case report says where the crop lies and how large it is, not a raw tuple."""
    from derm_core.data.images import describe_crop
    assert describe_crop((0, 0, 200, 150), (200, 150)) == "the whole 200x150 photo"
    text = describe_crop((1016, 762, 3016, 2262), (4032, 3024))
    assert text.startswith("2000x1500 px from (1016, 762) to (3016, 2262) of the 4032x3024 photo")
    assert "(25% of its area)" in text
