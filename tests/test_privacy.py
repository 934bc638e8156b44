"""Privacy and safety (issue #6): nothing leaves the machine, photos carry no EXIF/GPS into what
the app exports or shows, model and profile files are never unpickled and are refused with a reason
(the app then falls back to the shipped model and says so), upload limits and XSRF protection are
configured, and every page shows the disclaimer.

Every page is used here through Streamlit's AppTest (in this process) while connecting to anything
but this machine is blocked and recorded (the ``offline`` fixture). The real server and a real
browser are checked the same way in tests/e2e/.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import re
import socket
import tomllib
from pathlib import Path

import pytest
import torch
from netguard import is_loopback
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import CLASS_COLOURS, GPS_TEXT, ROOT, exif_photo, lesion_image, page_text, tiny_card, write_dataset
from derm_core.data.images import MAX_BYTES, MAX_PIXELS, load_image, strip_metadata
from derm_core.data.taxonomy import load_taxonomy
from derm_core.model.checkpoint import ModelError, load_model, read_card, save_model
from derm_core.model.networks import ARCHS, create_model, offline_weights_path
from derm_core.model.predictor import Predictor
from derm_core.settings import SHIPPED_MODEL
from derm_core.triage import profiles as P
from derm_core.triage.report import DISCLAIMER

PAGES = re.findall(r'st\.Page\(\s*"([^"]+)"', (ROOT / "app.py").read_text())


# =========================================================================== network guard

@pytest.fixture
def offline(monkeypatch):
    """Block (and record) every attempt to reach another machine: TCP/UDP connects, UDP sends and
    name lookups other than localhost. The test fails if anything tried."""
    attempts: list[str] = []
    real_connect, real_connect_ex, real_sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if not is_loopback(self.family, address):
            attempts.append(f"connect {address!r}")
            raise OSError(101, f"blocked by the test: connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not is_loopback(self.family, address):
            attempts.append(f"connect_ex {address!r}")
            return 101
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if not is_loopback(self.family, address):
            attempts.append(f"sendto {address!r}")
            raise OSError(101, f"blocked by the test: sendto {address!r}")
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not is_loopback(socket.AF_INET, (name, 0)):
            attempts.append(f"getaddrinfo {name!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"blocked by the test: name lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"tried to reach another machine: {attempts}"


def test_the_network_guard_itself_blocks_and_records(offline):
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.org", 443)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError, match="blocked"):
        s.connect(("8.8.8.8", 1))          # what Streamlit does to find the machine's LAN address
    with socket.socket() as srv:               # loopback stays usable
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname(), timeout=1):
            pass
    assert len(offline) == 3
    offline.clear()


# =========================================================================== configuration

def _config() -> dict:
    return tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())


def test_streamlit_config_keeps_data_local_and_limits_uploads():
    cfg = _config()
    assert cfg["browser"]["gatherUsageStats"] is False, "usage statistics must stay off"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["enableCORS"] is True
    # serving localhost only also stops Streamlit's start-up lookup of the public IP (checkip.amazonaws.com)
    assert cfg["server"]["address"] in ("localhost", "127.0.0.1")
    assert cfg["server"]["headless"] is True
    assert cfg["server"]["maxUploadSize"] * 2**20 == MAX_BYTES, "the uploader's and the decoder's limits agree"
    assert MAX_PIXELS == 40_000_000 and Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_streamlit_itself_reads_these_settings(monkeypatch):
    from streamlit import config
    monkeypatch.chdir(ROOT)
    try:
        config.get_config_options(force_reparse=True)
        assert config.get_option("browser.gatherUsageStats") is False
        assert config.get_option("server.enableXsrfProtection") is True
        assert config.get_option("server.maxUploadSize") * 2**20 == MAX_BYTES
        assert config.is_manually_set("server.address")   # so no public-IP lookup at start-up
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)


# =========================================================================== app fixtures

def assert_no_metadata(png_or_jpeg: bytes, where: str) -> None:
    img = Image.open(io.BytesIO(png_or_jpeg))
    assert not img.getexif(), f"{where}: EXIF present"
    assert "exif" not in img.info and not img.info.get("xmp") and "icc_profile" not in img.info, (where, img.info.keys())
    for marker in (b"Exif\0\0", b"eXIf", *(t.encode() for t in GPS_TEXT)):
        assert marker not in png_or_jpeg, f"{where}: {marker!r} found"


@pytest.fixture
def app_env(tmp_path, ham7, monkeypatch):
    """A tiny model, a small synthetic dataset whose JPEGs carry EXIF GPS, and every folder the
    app writes to inside tmp_path."""
    torch.manual_seed(0)
    card = save_model(create_model("tiny_test", 7, True, pretrained="none"),
                      tiny_card(ham7).with_(name="tiny", version="t1"), tmp_path / "tiny" / "model")
    data = write_dataset(tmp_path / "data", per_class=2, size=(200, 150))
    for i, p in enumerate(sorted((data / "images").glob("*.jpg"))):
        p.write_bytes(exif_photo(CLASS_COLOURS[p.stem.split("_")[0]], seed=i))
    for env, sub in (("DERMTRIAGE_RUNS", "runs"), ("DERMTRIAGE_PROFILES", "profiles"), ("DERMTRIAGE_CACHE", "cache"),
                     ("DERMTRIAGE_HOME", "home")):
        monkeypatch.setenv(env, str(tmp_path / sub))
    monkeypatch.delenv("DERMTRIAGE_STUDY_DB", raising=False)
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(card))
    monkeypatch.setenv("DERMTRIAGE_DATA", str(data))
    monkeypatch.setenv("DERMTRIAGE_DEVICE", "cpu")
    return {"card": card, "data": data, "tmp": tmp_path}


@pytest.fixture
def media(monkeypatch):
    """Every file a page hands to the browser (images, downloads), as (mimetype, bytes)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    seen: list[tuple[str, bytes]] = []
    real = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        data = Path(path_or_data).read_bytes() if isinstance(path_or_data, str) else bytes(path_or_data)
        seen.append((mimetype, data))
        return real(self, path_or_data, mimetype, kind, filename)
    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return seen


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["lime_samples"] = 50
    if page:
        at.switch_page(page)
    return at


def _shown_images(at, media) -> list[bytes]:
    """Every image the page sends to the browser: inline as a ``data:`` URI, or as a media file."""
    inline = [base64.b64decode(i.url.split(",", 1)[1]) for e in at.get("image") for i in e.proto.imgs
              if i.url.startswith("data:image/")]
    return inline + [d for m, d in media if m.startswith("image/")]


def _images_in_html(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/[a-z]+;base64,([A-Za-z0-9+/=]+)"', html)]


# =========================================================================== pages, offline

@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_the_disclaimer(app_env, offline, page):
    at = _app(page).run()
    assert not at.exception, at.exception
    assert DISCLAIMER in [w.value for w in at.warning], f"{page}: no disclaimer"


def test_triage_offline_and_the_report_carries_no_exif(app_env, offline, media):
    at = _app().run()
    at.file_uploader[0].set_value(("IMG_0001.jpg", exif_photo(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Risk tier:" in text and "Biopsy site at x=" in text
    captions = " ".join(str(e.proto) for e in at.get("image"))
    assert "of a 150x200 photo" in captions, "EXIF orientation 6 applied: the 200x150 sensor image is upright"
    reports = [d for m, d in media if m.startswith("text/html")]
    assert reports, "the case report was offered for download"
    html = reports[-1].decode("utf-8")
    assert DISCLAIMER in html
    for t in GPS_TEXT:
        assert t not in html
    images = _images_in_html(html)
    assert len(images) >= 4                       # crop, CAM, LIME, biopsy site
    for i, img in enumerate(images):
        assert_no_metadata(img, f"report image {i}")
    shown = _shown_images(at, media)              # and nothing the page shows in the browser carries it either
    assert len(shown) >= 4                        # model input, Grad-CAM, LIME, biopsy site
    for i, data in enumerate(shown):
        assert_no_metadata(data, f"page image {i}")


def test_model_lab_offline_evaluate_and_publish(app_env, offline):
    at = _app("pages/model_lab.py").run()
    assert not at.exception, at.exception
    for section in ("Runs", "Train", "Evaluate & tune"):
        at.radio(key="lab_section").set_value(section).run()
        assert not at.exception, (section, at.exception)
    at.selectbox(key="lab_model").set_value(str(app_env["card"])).run()
    at.button(key="lab_evaluate").click().run()
    assert not at.exception, at.exception
    at.text_input(key="lab_profile_name").set_value("offline clinic")
    next(b for b in at.button if b.label == "Save profile").click().run()
    assert not at.exception, at.exception
    assert "Saved profile **offline clinic v1**" in page_text(at)


@pytest.mark.skipif(not (ROOT / "pages" / "reader_study.py").is_file(), reason="reader study page not yet present")
def test_reader_study_offline_and_cases_shown_without_exif(app_env, offline, media):
    at = _app("pages/reader_study.py").run()
    assert not at.exception, at.exception
    at.text_input(key="rs_new_name").set_value("privacy check")
    at.number_input(key="rs_new_n").set_value(3)
    at.button(key="rs_create").click().run()
    assert not at.exception, at.exception
    assert "created" in page_text(at), page_text(at)
    at.radio(key="rs_section").set_value("Read").run()
    at.text_input(key="rs_reader_name").set_value("Dr Test")
    at.button(key="rs_start").click().run()
    assert not at.exception, at.exception
    shown = _shown_images(at, media)
    assert shown, "the case photo is shown"
    for data in shown:
        assert_no_metadata(data, "reader-study case image")
    answer = next(r for r in at.radio if r.key and r.key.startswith("rs_answer_"))
    answer.set_value(answer.options[0])
    at.button(key="rs_submit").click().run()
    assert not at.exception, at.exception
    assert any("1 of 3 cases answered" in str(p.proto) for p in at.get("progress")), [p.proto for p in at.get("progress")]
    at.radio(key="rs_section").set_value("Results").run()
    assert not at.exception, at.exception
    # the study database keeps answers and image paths, never the photos or their metadata
    from derm_core.study.store import study_db_path
    raw = b"".join(p.read_bytes() for p in study_db_path().parent.glob(study_db_path().name + "*"))
    assert raw
    for marker in (b"\xff\xd8\xff", b"Exif\0\0", *(t.encode() for t in GPS_TEXT)):
        assert marker not in raw, f"study database holds {marker!r}"


# =========================================================================== model and profile files

def test_model_files_are_never_unpickled(app_env, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("a model file was unpickled")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    real_load, package_files = torch.load, {offline_weights_path(a) for a in ARCHS} - {None}

    def package_weights_only(path, *a, **kw):
        """The one torch.load allowed: an installed package's ImageNet file (the gate's reference
        network), read with weights_only=True; never a model file, never a path a user chose."""
        if str(path) in package_files and kw.get("weights_only") is True:
            return real_load(path, *a, **kw)
        refuse()
    monkeypatch.setattr(torch, "load", package_weights_only)
    for card in (app_env["card"], SHIPPED_MODEL):
        pred = Predictor.from_path(card, device=torch.device("cpu"))
        res = pred.predict(lesion_image(CLASS_COLOURS["nv"], (200, 150)), anyway=True)   # past the gate
        assert sum(res.probs.values()) == pytest.approx(1.0)
        for f in card.parent.glob("*.safetensors"):
            n = int.from_bytes(f.read_bytes()[:8], "little")          # safetensors: u64 header size + JSON
            assert json.loads(f.read_bytes()[8:8 + n]), f"{f} is safetensors"


def _broken_models(app_env, ham7) -> dict[str, Path]:
    tmp, out = app_env["tmp"], {}
    good = app_env["card"]
    # truncated weights
    d = tmp / "truncated"
    d.mkdir()
    (d / "model.json").write_text(good.read_text())
    (d / "model.safetensors").write_bytes(good.with_suffix(".safetensors").read_bytes()[:300])
    out["truncated weights"] = d / "model.json"
    # the card says 12 classes, the weights have 7
    han = load_taxonomy("han12")
    card = json.loads(good.read_text())
    card["taxonomy"] = han.to_dict()
    card["thresholds"]["classes"] = {c: 0.3 for c in han.classes}
    d = tmp / "wrong-classes"
    d.mkdir()
    (d / "model.json").write_text(json.dumps(card))
    (d / "model.safetensors").write_bytes(good.with_suffix(".safetensors").read_bytes())
    out["wrong classes"] = d / "model.json"
    # right names, wrong shapes (a 5-class head under a 7-class card)
    five = save_model(create_model("tiny_test", 5, True, pretrained="none"), tiny_card(ham7), tmp / "five" / "model")
    d = tmp / "wrong-shapes"
    d.mkdir()
    (d / "model.json").write_text(good.read_text())
    (d / "model.safetensors").write_bytes(five.with_suffix(".safetensors").read_bytes())
    out["wrong shapes"] = d / "model.json"
    # a truncated card
    d = tmp / "half-card"
    d.mkdir()
    (d / "model.json").write_text(good.read_text()[:120])
    (d / "model.safetensors").write_bytes(good.with_suffix(".safetensors").read_bytes())
    out["truncated card"] = d / "model.json"
    return out


BROKEN = {"truncated weights": "truncated or corrupt", "wrong classes": "12 classes",
          "wrong shapes": r"has shape \(5", "truncated card": "not valid JSON"}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_model_from_the_environment_falls_back_to_the_shipped_model(app_env, ham7, monkeypatch, kind):
    path = _broken_models(app_env, ham7)[kind]
    with pytest.raises(ModelError, match=BROKEN[kind]):
        load_model(path)
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(path))
    at = _app().run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert f"Model {path} was refused" in errors and re.search(BROKEN[kind], errors), errors
    assert "Using the shipped default model instead" in errors
    shipped = read_card(SHIPPED_MODEL)
    assert f"Model **{shipped.name}**" in page_text(at), "the page runs on the shipped model"
    assert DISCLAIMER in [w.value for w in at.warning]


def test_broken_profile_is_refused_and_the_model_thresholds_are_used(app_env):
    card = read_card(app_env["card"])
    prof = P.save_profile("clinic", card.thresholds, card)
    prof.path.write_text(prof.path.read_text()[:200])          # truncated on disk since it was chosen
    at = _app()
    at.session_state["active_profile"] = str(prof.path)
    at.run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "Threshold profile refused" in errors and "not a readable profile" in errors
    assert "thresholds: **model default**" in page_text(at)


def test_strip_metadata_removes_exif_but_keeps_pixels():
    photo = load_image(exif_photo())
    clean = strip_metadata(Image.open(io.BytesIO(exif_photo())))
    assert not clean.getexif() and "exif" not in clean.info
    buf = io.BytesIO()
    clean.save(buf, "JPEG")
    assert_no_metadata(buf.getvalue(), "re-saved JPEG")
    assert photo.size == (150, 200)


def test_data_uri_sends_pixels_only_and_at_most_the_width_asked():
    """What the pages send inline (st.image) and the report embeds: no EXIF or GPS, the aspect kept."""
    from derm_core.data.images import data_uri
    raw = Image.open(io.BytesIO(exif_photo()))               # EXIF and GPS still attached
    assert raw.getexif()
    for fmt, width, want in (("JPEG", 100, (100, 75)), ("PNG", None, raw.size), ("PNG", 400, raw.size)):
        uri = data_uri(raw, width, fmt)
        assert uri.startswith(f"data:image/{fmt.lower()};base64,")
        data = base64.b64decode(uri.split(",", 1)[1])
        assert_no_metadata(data, f"{fmt} data URI")
        assert Image.open(io.BytesIO(data)).size == want


# =========================================================================== issue 18: a hostile Origin

HOSTILE = "http://evil.example"


def test_the_origin_check_looks_up_nothing_outside_this_machine(offline, monkeypatch):
    """Streamlit's check of a foreign WebSocket Origin asks outside addresses for this machine's
    IP before it refuses; with run.keep_streamlit_local it answers from this machine."""
    import importlib.util

    import run
    from streamlit import net_util
    from streamlit.web.server.starlette import starlette_websocket as W
    fresh = importlib.util.module_from_spec(importlib.util.find_spec("streamlit.net_util"))
    fresh.__spec__.loader.exec_module(fresh)          # Streamlit's own functions (app.py may have replaced them here)
    for name in ("get_external_ip", "get_internal_ip"):
        monkeypatch.setattr(net_util, name, getattr(fresh, name))           # all restored afterwards
    monkeypatch.setattr(net_util, "_external_ip", None)
    monkeypatch.setattr(net_util, "_internal_ip", None)
    assert W._is_origin_allowed(HOSTILE, "localhost:8501") is False        # Streamlit on its own ...
    assert offline, "the guard sees Streamlit's look-ups"                   # ... tried to reach outside
    offline.clear()
    run.keep_streamlit_local()
    for origin in (HOSTILE, "http://10.1.2.3:8501", "null"):
        assert W._is_origin_allowed(origin, "localhost:8501") is False
    assert W._is_origin_allowed("http://localhost:8501", "localhost:8501") is True
    assert offline == []


def test_the_server_refuses_a_hostile_origin_without_looking_outside(tmp_path):
    """The real server as `python3 run.py app` starts it, with every outside connection blocked
    and logged (tests/netguard.py as sitecustomize): a WebSocket from another origin is refused
    (403) and nothing was looked up ("Did not auto detect external IP" never logged)."""
    import http.client
    import os
    import signal
    import subprocess
    import sys
    import time

    guard = tmp_path / "netguard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text((ROOT / "tests" / "netguard.py").read_text())
    netlog, log = tmp_path / "outside.log", tmp_path / "server.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DERMTRIAGE_NETGUARD_LOG": str(netlog), "PYTHONPATH": os.pathsep.join([str(guard), str(ROOT)])}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "serve", "--server.port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/_stcore/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        statuses = []
        for origin in (HOSTILE, HOSTILE):            # twice: Streamlit retries a failed look-up every time
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/_stcore/stream", headers={
                "Host": f"localhost:{port}", "Origin": origin, "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
            statuses.append(c.getresponse().status)
        assert statuses == [403, 403]
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "evil.example" in text, text[-2000:]                          # the refusal was logged ...
    assert "Did not auto detect external IP" not in text                  # ... with no look-up before it
    assert not netlog.exists() or netlog.read_text() == "", netlog.read_text()
