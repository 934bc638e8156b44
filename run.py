#!/usr/bin/env python3
"""One-command set-up and launch: ``python3 run.py app`` or ``python3 run.py test``.

Creates ``.venv`` beside this file on first use, installs ``requirements.txt`` into it
(again only when that file changes), then starts the Streamlit app on the shipped model or
runs the whole test suite. Extra arguments are passed on (to streamlit or pytest).
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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("app", "test"):
        print(__doc__)
        return 2
    ensure_env()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if argv[0] == "app":
        cmd = [str(PY), "-m", "streamlit", "run", str(ROOT / "app.py"), *argv[1:]]
    else:
        cmd = [str(PY), "-m", "pytest", *argv[1:]]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
