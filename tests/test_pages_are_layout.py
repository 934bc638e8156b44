"""Pages hold no logic: they lay out widgets and call derm_core, which is tested on its own.

A page that needs numpy, torch, scikit-learn or scipy is computing something; that belongs
in derm_core (with a unit test), so the pages and app.py must not import them at all.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"numpy", "torch", "torchvision", "sklearn", "scipy"}
SOURCES = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def forbidden_imports(source: str) -> list[str]:
    """The modules of ``source`` whose top-level package is in FORBIDDEN, at any depth
    (inside functions and ``if TYPE_CHECKING`` blocks too), and ``__import__``/``import_module`` calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else []
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_the_check_catches_every_import_form():
    src = ("import numpy as np\nfrom sklearn.metrics import roc_auc_score\ndef f():\n    import torch.nn\n"
           "import importlib\nimportlib.import_module('scipy.stats')\nfrom derm_core import explain\nimport pandas\n")
    assert sorted(forbidden_imports(src)) == ["numpy", "scipy.stats", "sklearn.metrics", "torch.nn"]


def test_there_are_pages():
    assert {p.name for p in SOURCES} >= {"app.py", "triage.py", "model_lab.py", "reader_study.py", "_common.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pages_import_no_numerical_library(path):
    assert forbidden_imports(path.read_text(encoding="utf-8")) == [], (
        f"{path.relative_to(ROOT)} imports a numerical library: move the computation into derm_core")
