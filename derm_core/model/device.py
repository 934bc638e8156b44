"""Device choice: CUDA when present (with AMP and channels_last), CPU otherwise."""
from __future__ import annotations

import torch

from derm_core.settings import settings


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` or ``$DERMTRIAGE_DEVICE`` may force "cpu"/"cuda"; default: CUDA if available."""
    prefer = prefer or settings().device
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
