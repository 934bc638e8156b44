#!/usr/bin/env python3
"""One-command set-up and launch: ``python3 run.py app`` or ``python3 run.py test``.

Creates ``.venv`` beside this file on first use, installs ``requirements.txt`` into it
(again only when that file changes), then starts the Streamlit app on the shipped model or
runs the whole test suite. Extra arguments are passed on (to streamlit or pytest). The app is
started through :func:`serve`, so Streamlit never looks up this machine's address outside it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".requirements.sha256"


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"DermTriage needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print("creating virtual environment in .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        print("installing requirements (first run takes a few minutes) ...", flush=True)
        subprocess.run([str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        "-r", str(ROOT / "requirements.txt")], check=True)
        STAMP.write_text(want)


def keep_streamlit_local() -> None:
    """Make Streamlit answer "what is this machine's address?" from this machine.

    Its WebSocket origin check asks, for an origin that is not localhost (``Origin:
    http://evil.example``), for the machine's internal IP (a UDP route to 8.8.8.8) and its
    external IP (an HTTP request to checkip.amazonaws.com), and refuses only afterwards; its
    start-up banner may ask too. No setting turns these look-ups off (``browser.serverAddress``
    only adds a check before them), and DermTriage serves localhost only and sends nothing out:
    so there is no external IP, and the internal one is the loopback address."""
    from streamlit import net_util
    net_util.get_external_ip = lambda: None
    net_util.get_internal_ip = lambda: "127.0.0.1"


def serve(args: list[str]) -> int:
    """``streamlit run app.py`` inside the environment, with :func:`keep_streamlit_local` in
    force before the server takes its first request."""
    keep_streamlit_local()
    from streamlit.web import cli
    return cli.main(["run", str(ROOT / "app.py"), *args], prog_name="streamlit")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "serve":        # internal: `app` runs this with the environment's Python
        return serve(argv[1:])
    if not argv or argv[0] not in ("app", "test"):
        print(__doc__)
        return 2
    ensure_env()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if argv[0] == "app":
        cmd = [str(PY), str(ROOT / "run.py"), "serve", *argv[1:]]
    else:
        cmd = [str(PY), "-m", "pytest", *argv[1:]]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
