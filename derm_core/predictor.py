"""A loaded model ready for single photos: preprocessing, calibration, triage.

The Streamlit app shares one :class:`Predictor` between sessions (``st.cache_resource``),
so prediction holds no per-request state and never takes a lock. ``self.lock`` serialises
the CAM methods, which hook a private view of the network (see :mod:`derm_core.explain`)
rather than the shared model.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .calibration import softmax
from .checkpoint import ModelCard, load_model
from .clinical import Clinical, encode
from .device import pick_device
from .models import embed_tta
from .ood import load_detector
from .transforms import eval_transform
from .triage import Thresholds, TriageResult, triage


class Predictor:
    def __init__(self, model, card: ModelCard, device: torch.device | None = None):
        self.device = device or pick_device()
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.card = card
        self.taxonomy = card.taxonomy
        self.transform = eval_transform(card.input_size, card.mean, card.std)
        self.lock = threading.Lock()
        self._frozen_lock = threading.Lock()
        self._frozen = None                    # None: not built yet; False: cannot be built
        self.tta = bool(card.data["preprocessing"].get("tta", False))
        self.ood = load_detector(card)

    @classmethod
    def from_path(cls, path: str | Path | None = None, device=None) -> "Predictor":
        """Load a model card + weights (default: the shipped model)."""
        model, card = load_model(path)
        return cls(model, card, device)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im) for im in images]).to(self.device, memory_format=torch.channels_last)

    def meta_tensor(self, clinical: Clinical | None, n: int) -> torch.Tensor | None:
        if not self.card.use_metadata:
            return None
        return torch.from_numpy(encode(clinical or Clinical())).to(self.device).expand(n, -1)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, clinical: Clinical | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits, penultimate embeddings) for a preprocessed batch."""
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            e = embed_tta(self.model, x, self.meta_tensor(clinical, len(x)), self.tta)
            z = self.model.head(e)
        return z.float().cpu().numpy(), e.float().cpu().numpy()

    def frozen(self) -> torch.jit.ScriptModule | None:
        """A TorchScript-frozen copy of the network (batch norm folded into the convolutions)
        for the many same-size CPU forward passes LIME makes: about twice as fast there.
        Built once on first use; None on a GPU (AMP is the fast path there) or where tracing
        fails. Called as ``frozen(x)`` or, for a metadata model, ``frozen(x, meta)``."""
        if self.device.type != "cpu":
            return None
        with self._frozen_lock:
            if self._frozen is None:
                x = torch.zeros(2, 3, *self.card.input_size).contiguous(memory_format=torch.channels_last)
                meta = self.meta_tensor(None, 2)
                try:
                    with torch.no_grad(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")   # tracer warnings about Python-side shape arithmetic
                        traced = torch.jit.trace(self.model, (x,) if meta is None else (x, meta))
                        self._frozen = torch.jit.freeze(traced.eval())
                except Exception:  # noqa: BLE001 - an untraceable model just keeps the eager path
                    self._frozen = False
            return self._frozen or None

    def logits(self, x: torch.Tensor, clinical: Clinical | None = None) -> np.ndarray:
        return self.forward(x, clinical)[0]

    def probabilities(self, images: list[Image.Image], clinical: Clinical | None = None) -> np.ndarray:
        """Calibrated (temperature-scaled) class probabilities, one row per image."""
        return softmax(self.forward(self.preprocess(images), clinical)[0], self.card.temperature)

    def predict(self, image: Image.Image, clinical: Clinical | None = None,
                thresholds: Thresholds | None = None) -> TriageResult:
        """Differential diagnosis and risk tier of one photo (already cropped to the lesion)."""
        thresholds = thresholds or self.card.thresholds
        thresholds.check(self.taxonomy)
        logits, emb = self.forward(self.preprocess([image]), clinical)
        result = triage(softmax(logits, self.card.temperature)[0], self.taxonomy, thresholds)
        if self.ood is not None:
            score, flagged = self.ood(logits, emb)
            result = replace(result, out_of_scope=bool(flagged[0]), ood_score=float(score[0]))
            if flagged[0]:
                result.notes.append("this photo does not look like the dermatoscopic lesion images the model was "
                                    "trained on: treat the result with extra caution")
        used = (clinical or Clinical()).given()
        if self.card.use_metadata:
            result.notes.append(f"clinical data used: {', '.join(used)}" if used else "no clinical data given")
        elif used:
            result.notes.append("this model does not use clinical data; the values given were ignored")
        return result
