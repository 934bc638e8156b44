"""The case report a clinician files: the PDF beside the HTML, with the same content and images
that carry no EXIF/GPS. The PDF is opened by a small reader here (objects, streams, text
operators, image XObjects), so the test fails if a page, a line of text or an image is missing."""
from __future__ import annotations

import io
import re
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import GPS_TEXT, exif_photo
from derm_core.data.images import load_image
from derm_core.data.taxonomy import load_taxonomy
from derm_core.triage.report import DISCLAIMER, case_report_html, case_report_pdf
from derm_core.triage.rules import Thresholds, TriageResult


# ----------------------------------------------------------------------------- a tiny PDF reader
def pdf_objects(data: bytes) -> dict[int, tuple[bytes, bytes | None]]:
    """Object number -> (dictionary bytes, decoded stream or None)."""
    assert data.startswith(b"%PDF-"), data[:10]
    assert data.rstrip().endswith(b"%%EOF")
    m = re.search(rb"startxref\s+(\d+)", data[-200:])
    assert m and data[int(m.group(1)):].startswith(b"xref"), "the cross-reference table is where startxref says"
    out = {}
    for o in re.finditer(rb"(\d+) 0 obj(.*?)endobj", data, re.S):
        body = o.group(2)
        stream = None
        s = re.search(rb"stream\r?\n", body)
        if s and b"endstream" in body:
            head, raw = body[:s.start()], body[s.end():body.rindex(b"endstream")]
            length = re.search(rb"/Length (\d+)", head)
            raw = raw[:int(length.group(1))] if length else raw.rstrip(b"\r\n")
            stream = zlib.decompress(raw) if b"/FlateDecode" in head else raw
            body = head
        out[int(o.group(1))] = (body, stream)
    return out


def pdf_text(objs) -> str:
    """The text shown by the content streams' Tj/TJ operators (Latin-1 literal strings)."""
    parts = []
    for head, stream in objs.values():
        if stream is None or b"/Subtype /Image" in head:
            continue
        for lit in re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", stream):
            parts.append(re.sub(rb"\\(.)", rb"\1", lit).decode("latin-1"))
    return " ".join(parts)


def _unpredict(stream: bytes, w: int, h: int, bpp: int = 3) -> bytes:
    """Undo the PNG row filters of a ``/Predictor 10..15`` stream (None, Sub, Up, Average, Paeth)."""
    stride = w * bpp
    out = bytearray()
    prev = bytearray(stride)
    for r in range(h):
        ftype, row = stream[r * (stride + 1)], bytearray(stream[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if ftype == 1:
                row[i] = (row[i] + a) & 255
            elif ftype == 2:
                row[i] = (row[i] + b) & 255
            elif ftype == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += row
        prev = row
    return bytes(out)


def pdf_images(objs) -> list[Image.Image]:
    imgs = []
    for head, stream in objs.values():
        if b"/Subtype /Image" not in head:
            continue
        w, h = (int(re.search(rb"/%s (\d+)" % k, head).group(1)) for k in (b"Width", b"Height"))
        if b"/DCTDecode" in head:
            imgs.append(Image.open(io.BytesIO(stream)))
        else:
            assert b"/DeviceRGB" in head, head
            if re.search(rb"/Predictor 1[0-5]", head):
                stream = _unpredict(stream, w, h)
            assert len(stream) == w * h * 3, (len(stream), w, h)
            imgs.append(Image.frombytes("RGB", (w, h), stream))
    return imgs


# ----------------------------------------------------------------------------- the case
@pytest.fixture
def case():
    tax = load_taxonomy("ham7")
    probs = dict(zip(tax.classes, [0.05, 0.08, 0.07, 0.02, 0.55, 0.2, 0.03]))
    thr = Thresholds({c: 0.1 for c in tax.classes}, {"high-risk": 0.3, "dangerous": 0.2}, "test thresholds")
    result = TriageResult(probs=probs, differential=[("mel", 0.55), ("nv", 0.2)], low_confidence=False,
                          tier="dangerous", action="Refer urgently — see a dermatologist within 2 weeks",
                          tier_probs={"low-risk": 0.37, "high-risk": 0.08, "dangerous": 0.55},
                          notes=["no clinical data given"])
    photo = load_image(exif_photo(seed=3))              # a phone JPEG with GPS and camera EXIF
    rng = np.random.default_rng(0)
    heat = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return dict(crop=photo, result=result, taxonomy=tax, thresholds=thr, model_name="tiny", model_version="v1",
                figures={"Grad-CAM heat map": heat, "Suggested biopsy site": photo.rotate(90, expand=True)},
                clinical={"age": 55, "sex": "female", "site": None},
                extra={"biopsy site (original pixels)": "x=12, y=34", "crop box": (1, 2, 100, 120)})


def test_pdf_report_has_the_html_reports_content_and_clean_images(case):
    data = case_report_pdf(**case)
    objs = pdf_objects(data)
    text = pdf_text(objs)
    html = case_report_html(**case)
    flat = re.sub(r"\s+", " ", text)
    for needed in ["DermTriage case report", "Risk tier", "dangerous", "Refer urgently - see a dermatologist",
                   "Differential diagnosis", "Melanoma", "55.0%", "Probability (calibrated)", "test thresholds",
                   "Clinical data: age: 55, sex: female", "no clinical data given", "biopsy site (original pixels): x=12, y=34",
                   "crop box: (1, 2, 100, 120)", "Grad-CAM heat map", "Suggested biopsy site", "Lesion crop (model input)"]:
        assert needed in flat, needed
        assert needed.replace(" - ", " — ") in html or needed in html, needed
    for word in DISCLAIMER.split():                 # wrapped over lines, every word is there
        assert word in flat
    for gps in GPS_TEXT:
        assert gps not in text and gps.encode() not in data
    assert b"Exif" not in data and b"eXIf" not in data
    imgs = pdf_images(objs)
    assert len(imgs) == 3                          # crop + two figures, as in the HTML
    assert len(re.findall(r"<img ", html)) == 3
    sizes = sorted(i.size for i in imgs)
    crop = case["crop"]
    assert sorted([crop.size, (80, 60), (crop.size[1], crop.size[0])]) == sizes
    for img in imgs:
        assert not img.getexif()
    shown_crop = next(i for i in imgs if i.size == crop.size)
    assert np.abs(np.asarray(shown_crop, dtype=int) - np.asarray(crop.convert("RGB"), dtype=int)).max() <= 2


def test_pdf_text_outside_latin1_is_kept_readable(case):
    case["clinical"] = {"site": "scalp ≥ 2 cm → ear"}
    case["extra"] = {"note": "Ünïcode ✓ 中文"}
    text = re.sub(r"\s+", " ", pdf_text(pdf_objects(case_report_pdf(**case))))
    assert "scalp >= 2 cm -> ear" in text and "Ünïcode ? ??" in text
