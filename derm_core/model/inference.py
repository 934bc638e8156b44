"""How the network runs at inference: flip TTA and one switch for the fast path.

* ``cuda-amp``: CUDA with automatic mixed precision.
* ``cpu-bf16``: a TorchScript-frozen copy with bfloat16 weights (batch norm folded), on CPUs
  with native bf16 (AMX or AVX512-BF16): about 2x the frozen fp32 copy and 3x eager fp32
  on this project's 2-core CPU, agreeing with fp32 on the most-likely class of >= 99.5% of
  test images (``tests/test_inference.py``, ``bench/bench_fastpath.py``).
* ``fp32``: everywhere else, and whenever ``DERMTRIAGE_FAST_PATH=fp32`` (on a CPU still
  through a frozen fp32 copy, which LIME's many same-size batches gain most from).

Single photos, evaluation batches and LIME batches all run through the one :class:`Runner`
of a :class:`~derm_core.model.predictor.Predictor` (``predict``, ``predict_table``, ``logits``).
"""
from __future__ import annotations

import copy
import functools
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from derm_core.errors import ConfigError
from derm_core.model.networks import Stacked
from derm_core.settings import settings

PATHS = ("cuda-amp", "cpu-bf16", "fp32")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16), per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _auto_path(device: torch.device) -> str:
    """The fastest path ``device`` has."""
    if device.type == "cuda":
        return "cuda-amp"
    return "cpu-bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def fast_path(device: torch.device) -> str:
    """The fast path for ``device``: ``$DERMTRIAGE_FAST_PATH`` may force ``fp32``.

    Raises:
        ConfigError: ``$DERMTRIAGE_FAST_PATH`` is neither ``auto`` nor ``fp32`` (e.g. ``fp8``)."""
    return "fp32" if settings().require("fast_path") == "fp32" else _auto_path(device)


def fast_path_or_auto(device: torch.device) -> tuple[str, str | None]:
    """For the pages, which must keep working: :func:`fast_path`, or the automatic path with the
    reason the setting was not used (the page shows it)."""
    try:
        return fast_path(device), None
    except ConfigError as e:
        return _auto_path(device), f"{e}. Using the automatic fast path ({_auto_path(device)}) instead."


def is_dermnet(model: nn.Module) -> bool:
    """A :class:`~derm_core.model.networks.DermNet`-shaped model: backbone, metadata fusion and head."""
    return all(hasattr(model, n) for n in ("backbone", "fuse", "head"))


FP32_BLOCKS = 4   # EfficientNet blocks kept fp32 on the bf16 path (see _trace)
# Views per call of a frozen CPU backbone, and how many such calls run at once. A call's
# activations must stay in the CPU's cache: on the 2-core EPYC (bf16, Lite0 at 150x200) 8 views
# ran at 261 views/s, 16 at 186, 32 at 139 and 256 (an evaluation batch of 64 with 4 flips) at
# about 75; two calls side by side keep both cores busier (evaluation pass 0.86x the wall
# time of one call at a time, farm-bench median of 4 pairs). Measured by
# bench/bench_fastpath.py --chunks.
CPU_CHUNK = 8
CPU_CALLS = 2


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(CPU_CALLS, thread_name_prefix="backbone")


class _Chunked(nn.Module):
    """A backbone fed at most ``size`` images per call, ``CPU_CALLS`` calls at a time, outputs joined."""

    def __init__(self, backbone: nn.Module, size: int = CPU_CHUNK):
        super().__init__()
        self.backbone, self.size = backbone, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) <= self.size:
            return self.backbone(x)
        return torch.cat(list(_pool().map(self._one, x.split(self.size))))

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():   # inference mode is per thread
            return self.backbone(x)


class _Cast(nn.Sequential):
    """Layers run in ``dtype``: the input is cast on the way in, the output back to float32."""

    def __init__(self, dtype: torch.dtype, *layers: nn.Module):
        super().__init__(*layers)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.dtype)).float()


class TTAForward(nn.Module):
    """(logits, penultimate embeddings) of a DermNet, averaged over the four flips when
    ``tta`` (lesions have no up or left). The views go through the backbone as one batch
    (faster than four passes on a CPU); the head is linear, so averaging embeddings equals
    averaging logits.
    ``backbone`` may be a faster copy of the model's own (frozen, bf16); the metadata branch
    and the head always run in fp32, where bf16 rounding of the logits would move
    probabilities most. A model that is not DermNet-shaped (a test model: ``model(x, meta)
    -> logits``) has its logits averaged and used as embeddings."""

    def __init__(self, model: nn.Module, tta: bool, backbone=None):
        super().__init__()
        self.model, self.tta = model, tta
        self.backbone = backbone

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None,
                tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tta = self.tta if tta is None else tta
        n = 4 if tta else 1
        if tta:
            x = torch.cat([x, x.flip(3), x.flip(2), x.flip(2, 3)])
            meta = None if meta is None else meta.repeat(4, 1)
        if not is_dermnet(self.model):
            z = self.model(x, meta).unflatten(0, (n, -1)).mean(0)
            return z, z
        backbone = self.model.backbone if self.backbone is None else self.backbone
        e = self.model.fuse(backbone(x).float(), meta).unflatten(0, (n, -1)).mean(0)
        return self.model.head(e), e


class Runner:
    """Runs one model on its fast path: ``runner(x, meta, tta=None) -> (logits, embeddings)``, float32.

    On a CPU the backbone runs as a frozen TorchScript copy (batch norm folded; bf16 on the
    ``cpu-bf16`` path), built on first use in a few seconds for the model's input size (the
    "same" padding of TF-ported networks is traced as constants), shared by every thread and
    fed ``chunk`` views per call (:data:`CPU_CHUNK`); a backbone that cannot be traced stays
    eager, and so does every backbone while ``eager``.
    """

    def __init__(self, model: nn.Module, tta: bool, device: torch.device, input_size: tuple[int, int],
                 path: str | None = None):
        self.model, self.tta, self.device, self.input_size = model, tta, device, tuple(input_size)
        self.path = path or fast_path(device)
        self.eager = False
        self.chunk = CPU_CHUNK
        self._eager = TTAForward(model, tta)
        self._forward: TTAForward | None = None
        self._lock = threading.Lock()

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.path == "cpu-bf16" else torch.float32

    def _build(self) -> TTAForward:
        if self.eager or self.device.type != "cpu":
            return self._eager
        with self._lock:
            if self._forward is None:
                traced = self._trace()
                self._forward = TTAForward(self.model, self.tta, None if traced is None else _Chunked(traced, self.chunk))
            return self._forward

    def _trace(self):
        """A frozen TorchScript copy of the backbone (an ensemble's: each member's), or None
        where tracing fails."""
        if not is_dermnet(self.model):
            return None
        bb = copy.deepcopy(self.model.backbone).eval()
        if isinstance(bb, Stacked):
            parts = [self._trace_one(p) for p in bb.parts]
            return None if any(p is None for p in parts) else Stacked(parts)
        return self._trace_one(bb)

    def _trace_one(self, bb: nn.Module):
        """One backbone frozen. On the bf16 path an EfficientNet-style backbone is split after
        its first ``FP32_BLOCKS`` blocks: the high-resolution start, where bf16 rounding moved the
        shipped model's probabilities by up to 0.05, stays fp32, the rest runs in bf16.
        Other backbones stay fp32 (frozen)."""
        x = torch.zeros(2, 3, *self.input_size).contiguous(memory_format=torch.channels_last)
        parts = [bb]
        if self.dtype == torch.bfloat16 and all(hasattr(bb, n) for n in ("conv_stem", "bn1", "blocks", "conv_head")):
            k = FP32_BLOCKS
            parts = [nn.Sequential(bb.conv_stem, bb.bn1, *bb.blocks[:k]),
                     _Cast(torch.bfloat16, *bb.blocks[k:], bb.conv_head, bb.bn2).to(torch.bfloat16), bb.global_pool]
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # tracer warnings about Python-side shape arithmetic
                traced = []
                for part in parts:
                    traced.append(torch.jit.freeze(torch.jit.trace(part.eval(), (x,))))
                    x = part(x)
            return traced[0] if len(traced) == 1 else nn.Sequential(*traced)
        except Exception:  # noqa: BLE001 - an untraceable backbone stays eager
            return None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, meta: torch.Tensor | None = None,
                 tta: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, enabled=self.path == "cuda-amp"):
            z, e = self._build()(x, meta, tta)
        return z.float(), e.float()
