"""The case report a clinician files: the PDF beside the HTML, with the same content and images
that carry no EXIF/GPS. The PDF is opened by a small reader here (objects, streams, text
operators, image XObjects), so the test fails if a page, a line of text or an image is missing."""
from __future__ import annotations

import io
import re
import zlib
from html import escape

import numpy as np
import pytest
from PIL import Image

from conftest import GPS_TEXT, exif_photo
from derm_core.data.images import load_image
from derm_core.data.taxonomy import load_taxonomy
from derm_core.triage.report import CROP_TITLE, DISCLAIMER, _pdf_text, case_report_html, case_report_pdf
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
                          notes=["clinical data used: age, sex"])
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
                   "Clinical data: age: 55, sex: female", "clinical data used: age, sex", "biopsy site (original pixels): x=12, y=34",
                   "crop box: (1, 2, 100, 120)", "Grad-CAM heat map", "Suggested biopsy site", CROP_TITLE]:
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


def test_no_clinical_data_is_said_once_and_thresholds_read_as_percentages(case):
    from dataclasses import replace

    from derm_core.data.clinical import NONE_GIVEN_NOTE
    case = {**case, "clinical": {}, "result": replace(case["result"], notes=[NONE_GIVEN_NOTE])}
    html = case_report_html(**case)
    assert "Clinical data: none given" in html and NONE_GIVEN_NOTE not in html
    assert "10.0%" in html and "0.10" not in html        # the 0.1 thresholds, as percentages like the page


def test_pdf_text_outside_latin1_is_kept_readable(case):
    case["clinical"] = {"site": "scalp ≥ 2 cm → ear"}
    case["extra"] = {"note": "Ünïcode ✓ 中文"}
    text = re.sub(r"\s+", " ", pdf_text(pdf_objects(case_report_pdf(**case))))
    assert "scalp >= 2 cm -> ear" in text and "Ünïcode ? ??" in text


# ----------------------------------------------------------------------------- issue 17
def pdf_page_texts(objs) -> list[list[str]]:
    """Each page's text pieces (Tj operators) in drawing order."""
    pages = []
    for head, _ in objs.values():
        if re.search(rb"/Type\s*/Page\b", head) and b"/Kids" not in head:
            ref = re.search(rb"/Contents (\d+) 0 R", head)
            stream = objs[int(ref.group(1))][1]
            pages.append([re.sub(rb"\\(.)", rb"\1", lit).decode("latin-1")
                          for lit in re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", stream)])
    return pages


def _render(data: bytes, tmp_path) -> list[np.ndarray]:
    """The PDF's pages as RGB arrays (pdftoppm at 60 dpi), or a skip when poppler is missing."""
    import shutil
    import subprocess
    if not shutil.which("pdftoppm"):
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    (tmp_path / "r.pdf").write_bytes(data)
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(tmp_path / "r.pdf"), str(tmp_path / "page")], check=True)
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(tmp_path.glob("page*.png"))]


@pytest.mark.parametrize("tier", ["high-risk", "low-risk"])   # (the dangerous red is also the disclaimer's border)
def test_pdf_table_is_plain_white_and_the_tier_colour_is_only_the_banner(case, tmp_path, tier):
    tax = case["taxonomy"]
    case["result"] = TriageResult(**{**case["result"].__dict__, "tier": tier, "action": tax.tiers[tier].action})
    want = np.array([int(tax.tiers[tier].colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)])
    page = _render(case_report_pdf(**case), tmp_path)[0].astype(int)
    tinted = np.flatnonzero((np.abs(page - want).sum(axis=2) < 40).mean(axis=1) > 0.3)   # rows in the tier colour
    assert len(tinted) and tinted[-1] - tinted[0] < 40, f"tier colour on rows {tinted}: more than the banner"
    # under the banner, the table's cells are white between their (grey) lines
    table = page[tinted[-1] + 40:tinted[-1] + 160, 40:-40]
    assert (np.abs(table - want).sum(axis=2) < 60).mean() < 0.005
    assert (table.min(axis=2) > 235).mean() > 0.8


def test_pdf_never_leaves_a_heading_alone_at_the_bottom_of_a_page(case):
    headings = {"Risk tier", "Differential diagnosis", "Images and explanations", "Details"}
    seen_two_pages = False
    for h in range(20, 420, 12):   # figures of growing height move "Details" down over page 1's bottom
        case["figures"] = {"a": Image.new("RGB", (80, h), "gray"), "b": Image.new("RGB", (80, h // 2), "gray")}
        pages = pdf_page_texts(pdf_objects(case_report_pdf(**case)))
        seen_two_pages |= len(pages) > 1
        for n, texts in enumerate(pages):
            assert texts and texts[-1] not in headings, (h, n, texts[-3:])
        details = [n for n, texts in enumerate(pages) if "Details" in texts]
        assert len(details) == 1 and pages[details[0]].index("Details") + 1 < len(pages[details[0]]), h
    assert seen_two_pages


def test_report_prints_a_whole_age_as_an_integer(case):
    case["clinical"] = {"age": 80.0, "sex": "male", "site": "back"}
    html = case_report_html(**case)
    text = re.sub(r"\s+", " ", pdf_text(pdf_objects(case_report_pdf(**case))))
    for out in (html, text):
        assert "age: 80, sex: male, site: back" in out and "80.0" not in out
    case["clinical"] = {"age": 42.5}
    assert "age: 42.5" in case_report_html(**case)


@pytest.mark.parametrize("probs, tier", [({"mel": 0.5}, "dangerous"), ({"mel": 0.125}, "dangerous"),
                                         ({"bcc": 0.25}, "high-risk"), ({"bcc": 0.0625}, "low-risk")])
def test_reports_say_why_the_tier(case, probs, tier):
    from html import escape

    from derm_core.triage.report import _pdf_text
    from derm_core.triage.rules import triage
    tax = case["taxonomy"]
    thr = Thresholds({c: 0.1 for c in tax.classes}, {"high-risk": 0.25, "dangerous": 0.125}, "test thresholds")
    p = np.array([probs.get(c, 0.0) for c in tax.classes])
    p[tax.classes.index("nv")] = 1 - p.sum()
    case.update(result=triage(p, tax, thr), thresholds=thr)
    reason = case["result"].tier_reason
    assert case["result"].tier == tier and reason.endswith(tier) or f": {tier} (" in reason
    assert f"Why this tier: {escape(reason)}" in case_report_html(**case)
    text = re.sub(r"\s+", " ", pdf_text(pdf_objects(case_report_pdf(**case))))
    assert f"Why this tier: {_pdf_text(reason)}" in text
    # a result made without the reason (an older caller) gets it from the same rule
    bare = TriageResult(**{**case["result"].__dict__, "tier_reason": ""})
    assert f"Why this tier: {escape(reason)}" in case_report_html(**{**case, "result": bare})


def test_a_withheld_report_gives_no_tier_reason(case):
    case["result"] = case["result"].withhold("the photo does not look like a skin lesion")
    html = case_report_html(**case)
    text = pdf_text(pdf_objects(case_report_pdf(**case)))
    assert "Not triaged: out of scope" in html and "Why this tier" not in html and "Why this tier" not in text


def test_the_tier_banner_says_the_tier_once_and_keeps_the_degree_sign(case):
    tax = case["taxonomy"]
    for tier in tax.tier_names:
        case["result"] = TriageResult(**{**case["result"].__dict__, "tier": tier, "action": tax.tiers[tier].action})
        case["extra"] = {"skin tone": "light (ITA 41°)"}
        html = case_report_html(**case)
        banner = re.search(r'<p class="tier"><b>(.*?)</b> — (.*?)</p>', html).groups()
        assert banner[0] == tier and not banner[1].lower().startswith(tier.replace("-", " "))
        assert banner[1].lower() in tax.tiers[tier].action.lower()        # what to do, as the taxonomy says it
        text = re.sub(r"\s+", " ", pdf_text(pdf_objects(case_report_pdf(**case))))
        assert f"{tier} - {banner[1]}" in text and "ITA 41°" in text


def test_a_photo_triaged_anyway_carries_the_warning_above_its_tier(case):
    """A cat triaged anyway can come out "dangerous": the report says before that banner, on page 1,
    that the out-of-scope check flagged the photo; an in-scope result has no such warning."""
    res = case["result"]
    assert res.anyway_warning == "" and "flagged" not in case_report_html(**case)
    case["result"] = TriageResult(**{**res.__dict__, "out_of_scope": True, "ood_score": 9.0})
    warning = case["result"].anyway_warning
    html = case_report_html(**case)
    assert 0 < html.index(escape(warning)) < html.index('<p class="tier">')
    first_page = [s for h, s in pdf_objects(case_report_pdf(**case)).values()
                  if s is not None and b"/Subtype /Image" not in h][0]      # fpdf2 writes page 1's content first
    text = re.sub(r"\s+", " ", pdf_text({0: (b"", first_page)}))
    banner = f"{res.tier} - {res.what_to_do}"
    assert _pdf_text(warning) in text and text.index(_pdf_text(warning)) < text.index(_pdf_text(banner)[:20])
    # a withheld photo says "not triaged", not "triaged anyway"
    case["result"] = case["result"].withhold("the photo does not look like a skin lesion")
    assert case["result"].anyway_warning == "" and "Triaged anyway" not in case_report_html(**case)
