"""Load check: N simulated users triaging at the same time against the real local app.

    python bench/load_triage.py [--users 10] [--model weights/default/model.json] [--data ../shared/data/ham10000]

Starts ``streamlit run app.py`` on a free local port (the repository's own config) and drives it
with N concurrent browser sessions: one headless Chromium (the system browser via Playwright;
$DERMTRIAGE_CHROMIUM or /usr/bin/chromium), one browser context per user, so every user is a
separate Streamlit session sharing the one cached Predictor, as real users would.

Why browser sessions and not AppTest threads: AppTest runs a script in the test's process and
is not meant to be used from many threads, and it skips what concurrent users actually share
(the server's session threads, the WebSocket traffic, st.cache_resource's single Predictor and
the Grad-CAM lock). The browsers run on the same machine, so their rendering is included in the
figures (pessimistic on a small machine).

Each user uploads a different photo (HAM10000 images when the folder exists, else synthetic
lesions) and the script records:

* triage latency: upload -> the risk tier is on the page (the differential is computed first;
  Grad-CAM and LIME follow on the same page run),
* full-page latency: upload -> the page run is finished (Grad-CAM, LIME with its default
  number of samples, biopsy site and the downloadable report).

Correctness: every user's final risk tier and differential (classes and percentages as shown) must
equal a serial reference, the same photos triaged one after another by a single user first.
Prints median and p95 of both latencies and the number of correct responses; exits 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
APP = '[data-testid="stApp"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photos(data: Path, n: int, out: Path) -> list[Path]:
    """n photo files: HAM10000 images (spread over the folder) or synthetic lesions."""
    imgs = sorted((data / "images").glob("*.jpg")) if (data / "images").is_dir() else []
    if imgs:
        return [imgs[i * len(imgs) // n] for i in range(n)]
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import CLASS_COLOURS, lesion_image
    colours = list(CLASS_COLOURS.values())
    paths = []
    for i in range(n):
        p = out / f"user{i:02d}.jpg"
        lesion_image(colours[i % len(colours)], (600, 450), seed=i).save(p, quality=92)
        paths.append(p)
    return paths


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


async def idle(page, timeout_ms: int) -> None:
    try:
        await page.wait_for_selector(f'{APP}:not([data-test-script-state="notRunning"])', timeout=1500)
    except Exception:  # noqa: BLE001 - already finished
        pass
    await page.wait_for_selector(f'{APP}[data-test-script-state="notRunning"]', timeout=timeout_ms)


async def one_user(browser, url: str, photo: Path, timeout_ms: int) -> dict:
    """Open the app in a fresh session, upload the photo, time the tier and the full page."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await ctx.new_page()
    page.set_default_timeout(timeout_ms)
    try:
        await page.goto(url)
        await page.get_by_text("Upload a photo of a skin lesion").wait_for()
        await idle(page, timeout_ms)
        async with page.expect_file_chooser() as chooser:
            await page.get_by_test_id("stFileUploaderDropzone").get_by_role("button", name="Upload", exact=True).click()
        t0 = time.perf_counter()
        await (await chooser.value).set_files(str(photo))
        await page.get_by_text(re.compile(r"Risk tier: ")).first.wait_for()
        t_tier = time.perf_counter() - t0
        await page.get_by_role("button", name=re.compile("Download case report")).wait_for()
        await idle(page, timeout_ms)
        t_full = time.perf_counter() - t0
        tier = re.search(r"Risk tier: (\S+)", await page.get_by_text(re.compile(r"Risk tier: ")).first.inner_text())[1]
        items = await page.locator('[data-testid="stMarkdownContainer"] li').all_inner_texts()
        diff = [m.group(0) for t in items if (m := re.search(r"\((\w+)\): [\d.]+%", t))]
        return {"photo": photo.name, "tier": tier, "differential": diff, "t_tier": t_tier, "t_full": t_full}
    finally:
        await ctx.close()


async def run(url: str, chromium: str, files: list[Path], timeout_ms: int) -> tuple[list[dict], list[dict], float]:
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        await one_user(browser, url, files[0], timeout_ms)                 # warm-up: model load, caches
        serial = [await one_user(browser, url, f, timeout_ms) for f in files]
        t0 = time.perf_counter()
        concurrent = await asyncio.gather(*(one_user(browser, url, f, timeout_ms) for f in files))
        wall = time.perf_counter() - t0
        await browser.close()
    return serial, list(concurrent), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--model", default=str(ROOT / "weights" / "default" / "model.json"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ham10000"))
    ap.add_argument("--timeout", type=float, default=600, help="seconds per browser action")
    a = ap.parse_args()
    chromium = os.environ.get("DERMTRIAGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    tmp = Path(tempfile.mkdtemp(prefix="dermtriage-load-"))
    files = photos(Path(a.data), a.users, tmp)
    port = free_port()
    env = {**os.environ, "DERMTRIAGE_MODEL": str(Path(a.model).resolve()), "DERMTRIAGE_PROFILES": str(tmp / "profiles"),
           "PYTHONPATH": str(ROOT)}
    env.pop("DERMTRIAGE_DATA", None)
    log = tmp / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                   "--server.headless", "true"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"streamlit exited:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
        serial, concurrent, wall = asyncio.run(run(url, chromium, files, int(a.timeout * 1000)))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    ref = {r["photo"]: (r["tier"], r["differential"]) for r in serial}
    wrong = [r for r in concurrent if (r["tier"], r["differential"]) != ref[r["photo"]]]
    print(f"model {a.model}; {a.users} users; photos from {'HAM10000' if Path(a.data, 'images').is_dir() else 'synthetic'}; "
          f"torch threads as configured; CPU cores {os.cpu_count()}")
    for name, rows in (("serial (one user at a time)", serial), (f"concurrent ({a.users} users at once)", concurrent)):
        tt, tf = [r["t_tier"] for r in rows], [r["t_full"] for r in rows]
        print(f"{name:34s} triage latency median {statistics.median(tt):6.2f} s  p95 {p95(tt):6.2f} s | "
              f"full page median {statistics.median(tf):6.2f} s  p95 {p95(tf):6.2f} s")
    print(f"concurrent wall time {wall:.1f} s for {a.users} users")
    print(f"correct (same tier and differential as the serial reference): {len(concurrent) - len(wrong)}/{len(concurrent)}")
    for r in wrong:
        print(f"  MISMATCH {r['photo']}: {r['tier']} {r['differential']} vs {ref[r['photo']]}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
