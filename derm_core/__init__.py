"""DermTriage core library: data, models, training, evaluation, explanation, triage, storage.

Plain Python (no Streamlit); the app's pages and the CLI (``python -m derm_core``) call it.
The README's Architecture section says which sub-package owns which stage. The names most
code needs are importable from here (loaded on first use, so ``import derm_core`` stays light).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {"Predictor": "derm_core.model.predictor", "ModelCard": "derm_core.model.card",
           "load_model": "derm_core.model.checkpoint", "read_card": "derm_core.model.checkpoint",
           "TrainConfig": "derm_core.fit.config",
           "DermTriageError": "derm_core.errors"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'derm_core' has no attribute {name!r}")
