"""DermTriage in a real browser: headless Chromium against `streamlit run app.py` (one server and one
browser for the whole module, tests in order, sharing one browser session like a user would).

Triage: upload a phone photo through the file chooser, keep the suggested crop, read the differential
and the tier (checked against the library on the same crop), run LIME with few samples, download the
case report (no EXIF/GPS inside). Model lab: evaluate the tiny model and publish a threshold profile.
Model lab: train a tiny model from the form and check every status line against the job.
Reader study: create a study of both parts, sign in, answer every case (the AI-assisted view checked). Every page shows the disclaimer; screenshots go
to test-artifacts/e2e/. Finally: the browser only ever talked to this machine, and so did the server.
"""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import torch
from PIL import Image

from conftest import GPS_TEXT, ROOT, exif_photo
from derm_core.data.clinical import Clinical
from derm_core.data.images import load_image
from derm_core.model.predictor import Predictor
from derm_core.triage.report import DISCLAIMER
from e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e
TIERS = ("low-risk", "high-risk", "dangerous")


CONTENT_HEIGHT_JS = """() => Math.max(...[...document.querySelectorAll(
  '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stSidebarContent"]')].map(e => e.scrollHeight))"""


def shot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main area, so Playwright's full_page
    sees only the window; the window is made as tall as the content for the shot."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    view = page.viewport_size
    height = min(int(page.evaluate(CONTENT_HEIGHT_JS)) + 40, 12000)
    if height > view["height"]:
        page.set_viewport_size({"width": view["width"], "height": height})
        page.wait_for_timeout(600)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if height > view["height"]:
        page.set_viewport_size(view)
        page.wait_for_timeout(300)


def wait_idle(page) -> None:
    """Until Streamlit has finished the script run the last action started (the app root's
    data-test-script-state, which Streamlit's own browser tests wait on)."""
    app = '[data-testid="stApp"]'
    try:   # the run may not have started yet
        page.wait_for_selector(f'{app}:not([data-test-script-state="notRunning"])', timeout=1500)
    except Exception:  # noqa: BLE001 - it started and ended already, or the action started none
        pass
    page.wait_for_selector(f'{app}[data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]')
    page.wait_for_timeout(200)


# ============================================================================ visual checks
WIDTHS = (1024, 1600)
MIN_PLOT_SHARE, MIN_PLOT_PX, ROC_MARGIN = 0.45, 100, 0.05

LAYOUT_JS = """() => {
  const out = {figures: [], overflow: [], frames: []};
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    if (!visible(gd) || !gd._fullLayout) continue;
    const L = gd._fullLayout, box = gd.getBoundingClientRect();
    const xt = (L.xaxis && L.xaxis.title && L.xaxis.title.text) || '';
    out.figures.push({box: box.width, w: L._size.w, h: L._size.h, xtitle: xt,
                      roc: /specificity/.test(xt) && /sensitivity/.test((L.yaxis.title || {}).text || ''),
                      xrange: L.xaxis ? L.xaxis.range : null, yrange: L.yaxis ? L.yaxis.range : null,
                      xlen: L.xaxis ? L.xaxis._length : null, ylen: L.yaxis ? L.yaxis._length : null});
  }
  const main = document.querySelector('[data-testid="stMainBlockContainer"]') || document.body;
  const mr = main.getBoundingClientRect();
  const sel = 'img, canvas, iframe, .js-plotly-plot, [data-testid="stImage"], [data-testid="stPlotlyChart"], button';
  const check = (container, name) => {
    const c = container.getBoundingClientRect();
    for (const el of container.querySelectorAll(sel)) {
      if (!visible(el) || el.closest('[data-testid="stSidebar"]') || el.closest('[data-testid="stDataFrame"]')) continue;
      const r = el.getBoundingClientRect();
      if (r.right > c.right + 1.5 || r.left < c.left - 1.5)
        out.overflow.push(`${el.tagName}.${el.className || ''} in ${name}: [${Math.round(r.left)}, ${Math.round(r.right)}] outside [${Math.round(c.left)}, ${Math.round(c.right)}]`);
    }
  };
  check(main, 'the page');
  const cols = [...document.querySelectorAll('[data-testid="stColumn"]')].filter(visible);
  cols.forEach((col, i) => check(col, 'column ' + i));
  // no image or figure of one column reaches into a neighbouring column
  const media = 'img, canvas, iframe, .js-plotly-plot';
  out.overlaps = [];
  for (const a of cols) for (const b of cols) {
    if (a === b || a.parentElement !== b.parentElement) continue;
    const rb = b.getBoundingClientRect();
    for (const el of a.querySelectorAll(media)) {
      if (!visible(el)) continue;
      const r = el.getBoundingClientRect();
      const w = Math.min(r.right, rb.right) - Math.max(r.left, rb.left), h = Math.min(r.bottom, rb.bottom) - Math.max(r.top, rb.top);
      if (w > 1.5 && h > 1.5) out.overlaps.push(`${el.tagName} (${Math.round(r.left)}..${Math.round(r.right)}) overlaps the next column (${Math.round(rb.left)}..${Math.round(rb.right)})`);
    }
  }
  // no label of a button, tab, select, radio or widget is cut off (ellipsis or clipping)
  out.truncated = [];
  const labelled = 'button, [role="tab"], [data-baseweb="select"], [data-testid="stWidgetLabel"], [data-testid="stRadio"] label, [data-testid="stMetricLabel"]';
  for (const host of document.querySelectorAll(labelled)) {
    if (!visible(host) || host.closest('[data-testid="stSidebarNav"]')) continue;
    for (const el of [host, ...host.querySelectorAll('*')]) {
      if (!visible(el) || !el.textContent.trim() || el.tagName === 'svg' || el.closest('svg')
          || el.closest('[data-testid="stIconMaterial"]') || el.clientWidth <= 2) continue;   // icon ligatures
      const st = getComputedStyle(el);
      const clips = st.textOverflow === 'ellipsis' || st.overflowX === 'hidden' || st.overflow === 'hidden';
      if (clips && el.scrollWidth > el.clientWidth + 1)
        out.truncated.push(`"${el.textContent.trim().slice(0, 60)}" (${el.scrollWidth} > ${el.clientWidth} px)`);
    }
  }
  // plotly titles (figure and axis) inside their figure
  out.titles = [];
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    if (!visible(gd)) continue;
    const g = gd.getBoundingClientRect();
    for (const t of gd.querySelectorAll('.gtitle, .xtitle, .ytitle, .g-gtitle text')) {
      const r = t.getBoundingClientRect();
      if (r.width === 0) continue;
      if (r.left < g.left - 1 || r.right > g.right + 1 || r.top < g.top - 1 || r.bottom > g.bottom + 1)
        out.titles.push(`"${t.textContent.slice(0, 60)}" [${Math.round(r.left)}, ${Math.round(r.right)}] outside the figure [${Math.round(g.left)}, ${Math.round(g.right)}]`);
    }
  }
  // every legend entry inside its figure; every static table as wide as its column at most
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    if (!visible(gd)) continue;
    const g = gd.getBoundingClientRect();
    for (const t of gd.querySelectorAll('.legend .legendtext')) {
      const r = t.getBoundingClientRect();
      if (r.width > 0 && (r.left < g.left - 1 || r.right > g.right + 1))
        out.titles.push(`legend "${t.textContent.slice(0, 60)}" [${Math.round(r.left)}, ${Math.round(r.right)}] outside the figure [${Math.round(g.left)}, ${Math.round(g.right)}]`);
    }
  }
  out.tables = [];
  for (const t of document.querySelectorAll('[data-testid="stTable"]')) {
    if (!visible(t)) continue;
    const inner = t.querySelector('table');
    const w = inner ? inner.getBoundingClientRect().width : t.scrollWidth;
    if (t.scrollWidth > t.clientWidth + 1 || w > t.getBoundingClientRect().width + 1)
      out.tables.push(`table "${(t.querySelector('th') || t).textContent.trim().slice(0, 40)}..." is ${Math.round(w)} px wide in ${t.clientWidth} px`);
  }
  for (const f of document.querySelectorAll('iframe')) {
    if (!visible(f)) continue;
    const r = f.getBoundingClientRect();
    let inner = null;
    try {
      const d = f.contentDocument, cv = d && d.querySelector('canvas');
      if (cv) { const cr = cv.getBoundingClientRect(); inner = {w: cr.width, h: cr.height, right: cr.right}; }
    } catch (e) { inner = {error: String(e)}; }
    out.frames.push({title: f.title, w: r.width, h: r.height, canvas: inner});
  }
  // every image shown loaded (a media file a rerun deleted first shows as a broken image)
  out.broken = [...document.querySelectorAll('img')].filter(i => visible(i) && i.complete && i.naturalWidth === 0)
                 .map(i => i.alt || i.src.slice(0, 80));
  return out;
}"""


def visual_check(page, name: str, widths=WIDTHS, expect_figures: int = 0, expect_roc: int = 0,
                 expect_cropper: bool = False, photo_width: int | None = None) -> None:
    """At each window width: every plotly figure has a real plot area, ROC axes stay the unit square,
    nothing sticks out of its column (the cropper's canvas included); a screenshot per width."""
    try:
        for width in widths:
            page.set_viewport_size({"width": width, "height": 1400})
            page.wait_for_timeout(1200)                 # resize observers, the column-width component's rerun
            wait_idle(page)
            page.wait_for_timeout(800)
            wait_idle(page)
            got = page.evaluate(LAYOUT_JS)
            shot(page, f"{name}-{width}")
            figs = got["figures"]
            assert len(figs) >= expect_figures, (width, figs)
            for f in figs:
                assert f["h"] >= MIN_PLOT_PX, (width, "plot area under 100 px high", f)
                assert f["w"] >= MIN_PLOT_SHARE * f["box"], (width, "plot area too narrow", f)
                assert f["h"] >= MIN_PLOT_PX, (width, "plot area too low", f)
            rocs = [f for f in figs if f["roc"]]
            assert len(rocs) >= expect_roc, (width, figs)
            for f in rocs:
                for lo, hi in (f["xrange"], f["yrange"]):
                    assert -ROC_MARGIN <= lo < hi <= 1 + ROC_MARGIN, (width, "ROC axes left the unit square", f)
                assert abs(f["xlen"] - f["ylen"]) <= 2, (width, "ROC aspect not equal", f)
                assert f["xlen"] >= MIN_PLOT_SHARE * f["box"], (width, "ROC square too small for its box", f)
            assert got["broken"] == [], (width, "images that did not load", got["broken"])
            assert got["overflow"] == [], (width, got["overflow"])
            assert got["overlaps"] == [], (width, got["overlaps"])
            assert got["truncated"] == [], (width, "labels cut off", got["truncated"])
            assert got["titles"] == [], (width, "figure titles or legends outside their figure", got["titles"])
            assert got["tables"] == [], (width, "tables wider than their column", got["tables"])
            croppers = [f for f in got["frames"] if "cropper" in f["title"]]
            if expect_cropper:
                assert croppers, (width, got["frames"])
            for f in croppers:
                c = f["canvas"]
                assert c and "error" not in c, f
                assert c["w"] <= f["w"] + 0.5 and c["h"] <= f["h"] + 0.5, (width, "cropper canvas cut off", f)
                if photo_width:     # scaled to the column (or shown at its own size when smaller)
                    filled = c["w"] >= min(0.9 * f["w"], photo_width) - 12 or c["h"] >= 300   # portrait: height-bound
                    assert filled, (width, "photo not scaled to its column", f)
    finally:
        page.set_viewport_size({"width": 1400, "height": 1800})
        page.wait_for_timeout(800)
        wait_idle(page)


def disclaimer_shown(page) -> None:
    page.get_by_text(DISCLAIMER).first.wait_for()


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=re.compile(title)).first.wait_for()
    wait_idle(page)


# ============================================================================ triage

def read_triage(page) -> tuple[str, list[tuple[str, float]]]:
    """The risk tier and the differential (class code, probability) as the page shows them."""
    tier = re.search(r"Risk tier: (\S+)", page.get_by_text(re.compile(r"Risk tier: ")).first.inner_text()).group(1)
    items = page.locator('[data-testid="stMarkdownContainer"] li').all_inner_texts()
    differential = [(m.group(1), float(m.group(2)) / 100) for t in items
                    if (m := re.search(r"\((\w+)\): ([\d.]+)%", t))]
    return tier, differential


def test_triage_upload_crop_differential_lime_and_report(page, app_server, tmp_path):
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(exif_photo(seed=11))
    page.goto(app_server.url)
    page.get_by_text("Upload a photo of a skin lesion").wait_for()
    disclaimer_shown(page)

    with page.expect_file_chooser() as chooser:
        page.get_by_test_id("stFileUploaderDropzone").get_by_role("button", name="Upload", exact=True).click()
    chooser.value.set_files(str(photo))
    page.get_by_text(re.compile(r"Risk tier: ")).first.wait_for()

    # the cropper (an iframe component) is there, and its default box is accepted as it is
    cropper = page.frame_locator('iframe[title*="cropper"]').first
    cropper.locator("canvas").first.wait_for()
    wait_idle(page)
    caption = page.get_by_text(re.compile(r"Model input: crop \d+x\d+ px of a 150x200 photo"))
    caption.first.wait_for()     # EXIF orientation applied: the 200x150 sensor image is upright

    # LIME with few samples: the samples slider down to its minimum (50)
    page.get_by_role("tab", name="LIME superpixels and biopsy site").click()
    slider = page.get_by_role("slider", name="LIME samples")
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")
    assert slider.input_value() == "50"
    wait_idle(page)
    page.get_by_text(re.compile(r"LIME done in")).first.wait_for()
    page.get_by_text(re.compile(r"Biopsy site at x=\d+, y=\d+")).first.wait_for()
    wait_idle(page)
    shot(page, "triage")
    visual_check(page, "triage", expect_figures=2, expect_cropper=True, photo_width=150)

    tier, differential = read_triage(page)
    assert tier in TIERS
    assert differential
    assert [p for _, p in differential] == sorted((p for _, p in differential), reverse=True)

    # the case report
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download case report (HTML)").click()
    report = ARTIFACTS / "case-report.html"
    dl.value.save_as(report)
    html = report.read_text(encoding="utf-8")
    assert DISCLAIMER in html and f"<b>{tier}</b>" in html
    for t in GPS_TEXT:
        assert t not in html
    images = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]
    assert len(images) >= 4
    for data in images:
        img = Image.open(io.BytesIO(data))
        assert not img.getexif() and "exif" not in img.info
        assert b"Exif" not in data and b"eXIf" not in data
    # ... and as a PDF, kept with its pages rendered for a person to read (pdftoppm, where installed)
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download case report (PDF)").click()
    pdf = ARTIFACTS / "case-report.pdf"
    dl.value.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "80", str(pdf), str(ARTIFACTS / "case-report-page")], check=True)
        assert list(ARTIFACTS.glob("case-report-page*.png"))

    # similar cases: indexed from the page, shown in the same session right after (issue 17)
    page.get_by_text(re.compile(r"are not indexed yet")).first.wait_for()
    page.get_by_role("button", name=re.compile(r"Index \d+ images")).click()
    page.get_by_text(re.compile(r"Nearest by cosine similarity")).first.wait_for()
    wait_idle(page)
    assert page.get_by_text(re.compile(r"are not indexed yet")).count() == 0
    assert page.get_by_role("button", name=re.compile(r"Index \d+ images")).count() == 0
    assert page.get_by_text(re.compile(r"· similarity \d\.\d\d")).count() >= 3

    # what the page showed is what the library computes on the same crop
    m = re.search(r"crop box: \d+x\d+ px from \((\d+), (\d+)\) to \((\d+), (\d+)\)|crop box: the whole (\d+)x(\d+) photo", html)
    box = tuple(int(v) for v in m.groups()[:4]) if m.group(1) else (0, 0, int(m.group(5)), int(m.group(6)))
    pred = Predictor.from_path(app_server.card, device=torch.device("cpu"))
    expected = pred.predict(load_image(photo).crop(box), Clinical())
    assert (expected.tier, [c for c, _ in expected.differential]) == (tier, [c for c, _ in differential]), box
    assert [p for _, p in differential] == pytest.approx([p for _, p in expected.differential], abs=6e-4)


def phone_photo(path, size=(4032, 3024)) -> None:
    """A phone-sized JPEG: skin tone with noise and a dark lesion off centre."""
    import numpy as np
    w, h = size
    rng = np.random.default_rng(5)
    small = (np.array([205, 160, 140]) + rng.normal(0, 6, (h // 8, w // 8, 3))).clip(0, 255)
    yy, xx = np.mgrid[:h // 8, :w // 8]
    blob = ((xx - 0.58 * w / 8) / (0.12 * w / 8)) ** 2 + ((yy - 0.45 * h / 8) / (0.1 * h / 8)) ** 2 < 1
    small[blob] = small[blob] * 0.35
    Image.fromarray(small.astype("uint8")).resize(size, Image.BILINEAR).save(path, quality=85)


def upload(page, path) -> None:
    delete = page.get_by_test_id("stFileUploaderDeleteBtn")
    if delete.count():
        delete.first.click()
        wait_idle(page)
    with page.expect_file_chooser() as chooser:
        page.get_by_test_id("stFileUploaderDropzone").get_by_role("button", name="Upload", exact=True).click()
    chooser.value.set_files(str(path))
    wait_idle(page)


@pytest.mark.parametrize("size", [(4032, 3024), (3024, 4032)], ids=["landscape", "portrait"])
def test_a_phone_photo_is_shown_whole_in_the_cropper_and_the_box_maps_back(page, app_server, tmp_path, size):
    from derm_core.explain.lesion import suggest_crop
    photo = tmp_path / f"IMG_{size[0]}x{size[1]}.jpg"
    phone_photo(photo, size)
    page.goto(app_server.url)
    page.get_by_text("Upload a photo of a skin lesion").wait_for()
    upload(page, photo)
    caption = page.get_by_text(re.compile(rf"Model input: crop \d+x\d+ px of a {size[0]}x{size[1]} photo")).first
    caption.wait_for()
    page.get_by_text(re.compile(r"Risk tier: ")).first.wait_for()
    wait_idle(page)
    shown = page.get_by_text(re.compile(rf"Photo {size[0]}x{size[1]} px shown at \d+x\d+")).first.inner_text()
    sw, sh = (int(v) for v in re.search(r"shown at (\d+)x(\d+)", shown).groups())
    assert sw < size[0] and abs(sw / sh - size[0] / size[1]) < 0.02
    # the default box is the library's suggestion, mapped to the screen and back within one screen pixel
    cw, ch = (int(v) for v in re.search(r"crop (\d+)x(\d+) px", caption.inner_text()).groups())
    left, top, right, bottom = suggest_crop(load_image(photo))
    per_px = size[0] / sw
    assert abs(cw - (right - left)) <= per_px + 1 and abs(ch - (bottom - top)) <= per_px + 1, (cw, ch, per_px)
    visual_check(page, f"phone-{'landscape' if size[0] > size[1] else 'portrait'}",
                 widths=WIDTHS if size[0] > size[1] else (1024,), expect_figures=2, expect_cropper=True,
                 photo_width=size[0])


# ============================================================================ model lab

def test_model_lab_evaluate_and_save_a_threshold_profile(page, app_server):
    from derm_core.model.checkpoint import read_card
    from derm_core.triage.profiles import load_profile
    go(page, "Model lab")
    disclaimer_shown(page)
    page.get_by_test_id("stRadio").get_by_text("Evaluate & tune").click()
    wait_idle(page)
    model_box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Model", exact=True)).first
    model_box.click()
    page.get_by_role("option", name=re.compile(r"DERMTRIAGE_MODEL")).click()
    wait_idle(page)
    page.get_by_role("button", name=re.compile(r"Evaluate \d+ images")).click()
    page.get_by_test_id("stMetric").filter(has_text="Balanced accuracy").first.wait_for()
    wait_idle(page)
    page.get_by_role("textbox", name="Profile name").fill("e2e clinic")
    page.get_by_role("button", name="Save profile").click()
    page.get_by_text(re.compile(r"Saved profile e2e clinic v1")).first.wait_for()
    wait_idle(page)
    shot(page, "model-lab")
    visual_check(page, "model-lab", expect_figures=6, expect_roc=2)
    roc = page.get_by_test_id("stPlotlyChart").filter(has=page.locator(".js-plotly-plot")).nth(2)
    roc.scroll_into_view_if_needed()
    saved = app_server.root / "profiles" / "e2e-clinic@v1.json"
    prof = load_profile(saved, read_card(app_server.card))
    assert prof.version == 1 and prof.data["validation"]["n_images"] > 0


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the select box labelled ``label``."""
    page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True)).first.click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()
    wait_idle(page)


def number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def test_model_lab_train_and_every_status_line_agrees_with_the_job(page, app_server):
    from derm_core.fit import jobs
    go(page, "Model lab")
    page.get_by_test_id("stRadio").get_by_text("Train", exact=True).click()
    wait_idle(page)
    page.get_by_role("textbox", name="Run name").fill("e2e run")
    page.get_by_role("textbox", name="Run name").press("Enter")
    wait_idle(page)
    pick(page, "Architecture", "tiny_test")
    number(page, "Epochs", 2)
    number(page, "Batch size", 16)
    page.get_by_text("More options").click()
    wait_idle(page)
    pick(page, "Pretrained", "none")
    visual_check(page, "model-lab-train")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"Finished: model card")).first.wait_for(timeout=600_000)
    wait_idle(page)
    st = jobs.status(app_server.root / "runs" / "e2e-run")
    assert st.state == "done", (st.error, st.log_tail)
    progress = page.get_by_test_id("stProgress").first.inner_text()
    assert f"finished: epoch {st.epochs}/{st.epochs} · 100%" in progress, progress
    metrics = {m.get_by_test_id("stMetricLabel").inner_text().strip(): m.get_by_test_id("stMetricValue").inner_text()
               for m in page.get_by_test_id("stMetric").all()}
    assert metrics["Epoch"] == f"{st.epochs}/{st.epochs}", metrics
    assert metrics["Training loss"] == f"{st.history[-1]['train_loss']:.3f}", metrics
    assert metrics["Remaining"] == "—", metrics
    assert page.get_by_role("button", name="Start training").is_enabled()
    visual_check(page, "model-lab-trained", expect_figures=1)


# ============================================================================ reader study

@pytest.mark.skipif(not (ROOT / "pages" / "reader_study.py").is_file(), reason="reader study page not yet present")
def test_reader_study_create_sign_in_and_answer(page, app_server):
    from derm_core.study.store import StudyStore
    go(page, "Reader study")
    disclaimer_shown(page)
    page.get_by_role("textbox", name="Study name").fill("e2e study")
    cases = page.get_by_label("Cases per part")
    cases.fill("2")
    cases.press("Enter")
    wait_idle(page)
    page.get_by_test_id("stRadio").filter(has_text="Mode").get_by_text(re.compile("both in sequence")).click()
    wait_idle(page)
    # issue 20: the same cases in both parts (the default), 50% planted advice, a 1-5 rating per answer
    slider = page.get_by_role("slider").first
    slider.focus()
    for _ in range(10):
        slider.press("ArrowRight")
    wait_idle(page)
    page.get_by_text("Malignancy rating 1-5").click()
    wait_idle(page)
    visual_check(page, "reader-study-setup")
    page.get_by_role("button", name="Create study").click()
    page.get_by_text(re.compile(r"Study e2e study created")).first.wait_for()
    wait_idle(page)
    page.get_by_test_id("stRadio").first.get_by_text("Read", exact=True).click()
    wait_idle(page)
    page.get_by_role("textbox", name="Your name").fill("Dr Browser")
    page.get_by_role("button", name="Start or continue").click()
    page.get_by_text("0 of 4 cases answered").first.wait_for()
    wait_idle(page)
    for done in range(4):
        if done == 0:
            visual_check(page, "reader-study-unassisted")
        if done == 2:       # the second part: the model's output and Grad-CAM beside the photo
            page.get_by_text("Part 2: AI-assisted").first.wait_for()
            page.get_by_text(re.compile(r"Risk tier")).first.wait_for()
            visual_check(page, "reader-study-assisted")
        answers = page.get_by_test_id("stRadio").filter(has_text="Your answer").first
        answers.locator("label").nth(1).click()        # the first answer option
        wait_idle(page)
        rating = page.get_by_test_id("stRadio").filter(has_text="How likely is this lesion to be malignant").first
        rating.locator("label").nth(1 + done % 5).click()
        wait_idle(page)
        page.get_by_role("button", name="Submit answer").click()
        page.get_by_text(f"{done + 1} of 4 cases answered").first.wait_for()
        wait_idle(page)
    page.get_by_text(re.compile("All 4 cases answered")).first.wait_for()
    planted = store_cases(app_server)["planted"].notna().sum()
    if planted:                                   # the reader is told which advice was planted
        page.get_by_text("Debriefing: planted advice").first.wait_for()
    visual_check(page, "reader-study-finished")
    shot(page, "reader-study")
    page.get_by_test_id("stRadio").first.get_by_text("Results", exact=True).click()
    wait_idle(page)
    page.get_by_text("Readers on the model's ROC curve").first.wait_for()
    wait_idle(page)
    visual_check(page, "reader-study-results", expect_figures=1, expect_roc=1)
    store = StudyStore(app_server.root / "home" / "studies.sqlite3")
    studies = store.studies()
    assert list(studies["name"]) == ["e2e study"]
    got = store.answers(int(studies["id"].iloc[0]))
    assert len(got) == 4 and set(got["reader"]) == {"Dr Browser"} and got["confidence"].between(1, 5).all()
    assert sorted(got["phase"].value_counts().items()) == [("assisted", 2), ("unassisted", 2)]


def store_cases(app_server):
    from derm_core.study.store import StudyStore
    store = StudyStore(app_server.root / "home" / "studies.sqlite3")
    return store.cases(int(store.studies()["id"].iloc[0]))


# ============================================================================ privacy

def test_the_browser_only_talked_to_this_machine(browser_context, app_server):
    urls = browser_context.requests
    assert len(urls) > 20, "requests were recorded"
    assert any(u.startswith("ws") for u in urls), "the WebSocket was recorded too"
    outside = [u for u in urls if urlparse(u).scheme not in ("data", "blob", "about", "chrome-extension")
               and urlparse(u).hostname not in ("127.0.0.1", "localhost", "::1")]
    assert outside == [], outside
    (ARTIFACTS / "browser-requests.txt").write_text("\n".join(urls))


def test_the_server_never_tried_to_reach_another_machine(app_server):
    """Runs without a browser too: start-up alone used to look up the public IP (checkip.amazonaws.com)."""
    assert app_server.proc.poll() is None, "the server is still up"
    assert app_server.outside_attempts() == []
    log = app_server.log.read_text()
    assert "External URL" not in log and "Network URL" not in log
