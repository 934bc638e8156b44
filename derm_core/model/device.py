"""Device choice: CUDA when present (with AMP and channels_last), CPU otherwise.

A device named by ``--device`` or ``$DERMTRIAGE_DEVICE`` is checked here, once, against this
machine (:func:`check_device`): a name torch does not know, a kind DermTriage does not run on,
or a GPU the machine does not have is one :class:`ConfigError` saying which and what to use.
"""
from __future__ import annotations

import torch

from derm_core.errors import ConfigError
from derm_core.settings import ENV_DEVICE, settings

KINDS = ("cpu", "cuda")        # and "cuda:N"


def check_device(name: str, where: str) -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda`` or ``cuda:N``) when this machine has it.

    Raises:
        ConfigError: naming ``where`` (``--device``, ``$DERMTRIAGE_DEVICE``) and why.
    """
    use = f"use {' or '.join(KINDS)} (or cuda:N), or leave it unset for CUDA when present, else the CPU"
    try:
        device = torch.device(str(name).strip())
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{where} {name!r} is not a device name: {use}") from None
    if device.type not in KINDS:
        raise ConfigError(f"{where} {name!r}: DermTriage runs on {' or '.join(KINDS)}, not {device.type}; {use}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} {name!r}: this machine has no usable CUDA GPU (torch {torch.__version__}); "
                              "use cpu, or leave it unset")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{where} {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` (``--device``), else ``$DERMTRIAGE_DEVICE``, checked by :func:`check_device`;
    neither: CUDA if available, else the CPU.

    Raises:
        ConfigError: the named device cannot be used here.
    """
    if prefer:
        return check_device(prefer, "--device")
    name = settings().device
    if name:
        return check_device(name, f"${ENV_DEVICE}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_or_cpu() -> tuple[torch.device, str | None]:
    """For the pages, which must keep working: :func:`pick_device`, or the CPU with the reason
    the setting could not be used (the page shows it)."""
    try:
        return pick_device(), None
    except ConfigError as e:
        return torch.device("cpu"), f"{e}. Running on the CPU instead."


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on ``device``: bf16 on a GPU that has it (no loss
    scaling needed), fp16 on an older GPU (with a GradScaler), None (fp32) on a CPU, where
    bf16 training was not validated."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
