"""One rule for turning a name someone typed into a file or folder name.

Threshold profiles (``<slug>@v<N>.json``), training runs (``runs/<slug>``) and the reader
study's CSV exports (``<slug>-answers.csv``) all name files after a free-text name; they all
use :func:`slugify`, so the same name always gives the same, safe file name.
"""
from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EDGES = "-._"


def slugify(name: str, *, lower: bool = True, fallback: str = "", max_length: int | None = None) -> str:
    """``name`` as a file-name-safe slug.

    Surrounding blanks are dropped, the name is lower-cased (unless ``lower`` is False), each
    run of characters other than ASCII letters, digits, ``.``, ``_`` and ``-`` becomes one
    ``-``, and leading and trailing ``-``, ``.`` and ``_`` are dropped (no hidden files, no
    ``..``); the result is cut to ``max_length`` characters. ``fallback`` is returned when
    nothing is left (a name of only punctuation or non-ASCII letters).

    >>> slugify("  Screening clinic A ")
    'screening-clinic-a'
    >>> slugify("My run #2", lower=False)
    'My-run-2'
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    text = str(name).strip()
    if lower:
        text = text.lower()
    slug = _UNSAFE.sub("-", text).strip(_EDGES)[:max_length]
    return slug or fallback
