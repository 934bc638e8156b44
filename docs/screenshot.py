"""Screenshot of the triage page on a real HAM10000 test image, for the README.

    python docs/screenshot.py --data ../shared/data/ham10000 --case ISIC_0024537 --out docs/triage.png

Starts `streamlit run app.py` on a free local port, opens ?case=<image_id> in headless
Chromium (the system browser, driven by Playwright), waits for the explanations, and saves
a PNG of the whole page. `python3 run.py app` serves it (`run.py serve`).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--out", default=str(ROOT / "docs" / "triage.png"))
    a = ap.parse_args()
    port = free_port()
    env = {**os.environ, "DERMTRIAGE_DATA": str(Path(a.data).resolve())}
    app = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "serve", "--server.port", str(port),
                            "--server.address", "127.0.0.1"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            for _ in range(60):
                try:
                    page.goto(f"http://127.0.0.1:{port}/?case={a.case}")
                    break
                except Exception:  # noqa: BLE001 - the server is still starting
                    time.sleep(1)
            page.get_by_text("Download case report").wait_for(timeout=180_000)
            page.get_by_role("tab", name="LIME superpixels and biopsy site").click()
            page.get_by_text("Biopsy site at x=").wait_for(timeout=60_000)
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
            page.wait_for_timeout(3000)
            # Streamlit scrolls inside its main area: make the window as tall as the page for the shot
            height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
                '[data-testid="stMain"], [data-testid="stAppViewContainer"]')].map(e => e.scrollHeight))""")
            page.set_viewport_size({"width": 1400, "height": int(height) + 40})
            page.wait_for_timeout(1500)
            page.screenshot(path=a.out)
            browser.close()
        print(f"saved {a.out}")
    finally:
        app.terminate()
        app.wait(timeout=30)


if __name__ == "__main__":
    main()
