"""The architecture as the README describes it: sub-packages, no import cycle, the card read in one place."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Layout", 1)[1].split("```", 2)[1]


def test_the_readme_layout_matches_the_tree():
    block = _layout_block()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", block))
    named_dirs = set(re.findall(r"^\s+([a-z_]+)/", block, flags=re.M))
    files = {p.name for p in ROOT.glob("derm_core/**/*.py") if p.name not in ("__init__.py", "__main__.py")}
    packages = {p.parent.name for p in ROOT.glob("derm_core/*/__init__.py")}
    assert files - named == set(), "modules the README's layout does not mention"
    assert {n for n in named if n != "app.py" and not n.startswith("test_")} - files == set(), "the README names modules that do not exist"
    assert packages <= named_dirs, "sub-packages missing from the README's layout"
    for pkg in packages:
        doc = ast.get_docstring(ast.parse((ROOT / "derm_core" / pkg / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.strip().splitlines()) <= 3, f"derm_core/{pkg}/__init__.py says what it owns in two lines"


def test_nothing_outside_the_card_reads_its_raw_json():
    """The card's JSON is read in one place: no ``card.data`` (or ``.card.data``) anywhere else."""
    offenders = []
    for path in [*ROOT.glob("derm_core/**/*.py"), *ROOT.glob("pages/**/*.py"), *ROOT.glob("bench/*.py"), ROOT / "app.py"]:
        if "card.data" in path.read_text(encoding="utf-8"):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _imports(path: Path, package: str) -> set[str]:
    """derm_core modules imported at module level (not inside functions) by one file."""
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith(package):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(package))
    return out


def test_derm_core_has_no_import_cycle():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in ROOT.glob("derm_core/**/*.py")}
    graph = {m: {i for i in _imports(p, "derm_core") if i in modules and i != m} for m, p in modules.items()}
    for m in graph:        # a package imports its own modules; edges into a package's __init__ are not cycles
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError(" -> ".join([*stack, m, n]))
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
