"""End-to-end fixtures: one real `streamlit run app.py` per test module on a free local port, on a
tiny model and a small synthetic dataset made in a temporary folder, and one headless Chromium
(the system browser, driven by Playwright; never `playwright install`).

The server runs with a ``sitecustomize`` that blocks and logs any connection or name lookup
leaving this machine, so a test can assert that the server never tried. Screenshots, the
downloaded report and the server log are kept under ``test-artifacts/e2e/`` (git-ignored).

Browser tests skip with a reason when Playwright or Chromium is missing, unless
``DERMTRIAGE_E2E_REQUIRED=1`` (set by .ci/run), which turns the skip into a failure.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_card, write_dataset
from derm_core.data.dataset import load_table
from derm_core.data.splits import make_splits, save_splits
from derm_core.data.taxonomy import load_taxonomy
from derm_core.model.checkpoint import read_card, save_model
from derm_core.model.networks import create_model

ARTIFACTS = ROOT / "test-artifacts" / "e2e"
REQUIRED = os.environ.get("DERMTRIAGE_E2E_REQUIRED") == "1"
# the flags docs/screenshot.py uses, plus a fresh profile folder per run (Playwright's persistent context)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# per browser action; a 2-core machine shared with training jobs can be slow
TIMEOUT_MS = int(float(os.environ.get("DERMTRIAGE_E2E_TIMEOUT_S", "180")) * 1000)



def find_chromium() -> str | None:
    """$DERMTRIAGE_CHROMIUM when set (and only it), else the system Chromium."""
    wanted = os.environ.get("DERMTRIAGE_CHROMIUM")
    for cand in [wanted] if wanted else (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    root: Path           # the temporary folder: model, data, runs, profiles, study database
    card: Path
    data: Path
    netlog: Path
    log: Path
    proc: subprocess.Popen

    def outside_attempts(self) -> list[str]:
        return self.netlog.read_text().splitlines() if self.netlog.is_file() else []


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"streamlit did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, request) -> AppServer:
    """The app as `python3 run.py app` starts it (`run.py serve`: streamlit run app.py with the
    repository's own .streamlit/config.toml) on a free port."""
    tmp = tmp_path_factory.mktemp("e2e")
    ham7 = load_taxonomy("ham7")
    torch.manual_seed(0)
    # an untrained network gives near-uniform probabilities; a low temperature spreads them, so the
    # differential read off the page is not a near-tie between classes
    card = save_model(create_model("tiny_test", 7, use_metadata=True, pretrained="none"),
                      tiny_card(ham7).with_(name="tiny-e2e", version="e2e", temperature=0.02),
                      tmp / "model" / "model")
    data = write_dataset(tmp / "data", per_class=3, size=(200, 150))
    table = load_table(data, ham7)      # a split file, so the model has training images to show as similar cases
    save_splits(table, make_splits(table, seed=0), read_card(card).split_file)
    guard = tmp / "netguard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text((Path(__file__).parent.parent / "netguard.py").read_text())
    netlog, log = tmp / "outside-connections.log", tmp / "server.log"
    port = free_port()
    env = {**os.environ, "DERMTRIAGE_MODEL": str(card), "DERMTRIAGE_DATA": str(data),
           "DERMTRIAGE_RUNS": str(tmp / "runs"), "DERMTRIAGE_PROFILES": str(tmp / "profiles"),
           "DERMTRIAGE_CACHE": str(tmp / "cache"), "DERMTRIAGE_HOME": str(tmp / "home"), "DERMTRIAGE_DEVICE": "cpu",
           "DERMTRIAGE_NETGUARD_LOG": str(netlog), "PYTHONPATH": os.pathsep.join([str(guard), str(ROOT)]),
           "OMP_NUM_THREADS": "2"}
    env.pop("DERMTRIAGE_STUDY_DB", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "run.py", "serve", "--server.port", str(port),   # as `run.py app` does
                                 "--server.headless", "true"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = AppServer(url, tmp, card, data, netlog, log, proc)
    try:
        _wait_healthy(url, proc, log)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / f"{request.module.__name__.split('.')[-1]}-server.log")


@pytest.fixture(scope="module")
def browser_context(app_server, tmp_path_factory):
    """One headless Chromium with a fresh profile; records every request and WebSocket it opens."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright is not installed (pip install -r requirements.txt)"
    chromium = find_chromium()
    if reason is None and chromium is None:
        reason = ("no Chromium found (apt-get install chromium chromium-driver, or set DERMTRIAGE_CHROMIUM); "
                  "browser tests skipped")
    if reason:
        if REQUIRED:
            pytest.fail(reason + " — DERMTRIAGE_E2E_REQUIRED=1")
        pytest.skip(reason)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    requests: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS, accept_downloads=True,
            viewport={"width": 1400, "height": 1800})
        ctx.set_default_timeout(TIMEOUT_MS)
        ctx.on("request", lambda r: requests.append(r.url))
        ctx.on("page", lambda pg: pg.on("websocket", lambda ws: requests.append(ws.url)))
        for pg in ctx.pages:
            pg.on("websocket", lambda ws: requests.append(ws.url))
        ctx.requests = requests        # type: ignore[attr-defined]
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture(scope="module")
def page(browser_context, app_server):
    """The one tab, opened on the app, so any test (or ``-k`` selection) can start from the sidebar."""
    pg = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    pg.goto(app_server.url)
    pg.locator('[data-testid="stSidebarNav"]').wait_for()
    return pg


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed browser test, keep a screenshot of where the page was."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "page" in item.fixturenames:
        pg = item.funcargs.get("page")
        try:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / f"FAILED-{item.name}.png"), full_page=True)
        except Exception:  # noqa: BLE001 - the browser may be gone; the failure itself is reported anyway
            pass
