"""A loaded model: the one place that runs the network (single photos, evaluation batches,
LIME batches), plus calibration and triage of its outputs.

The Streamlit app shares one :class:`Predictor` between sessions (``st.cache_resource``),
so prediction holds no per-request state and never takes a lock. ``self.lock`` serialises
the CAM methods, which hook a private view of the network (see :mod:`derm_core.explain.maps`)
rather than the shared model.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from derm_core.data.clinical import NONE_GIVEN_NOTE, Clinical, encode
from derm_core.data.images import is_flat
from derm_core.model.calibration import softmax
from derm_core.model.checkpoint import ModelCard, load_model
from derm_core.model.device import pick_device
from derm_core.model.inference import Runner
from derm_core.model.ood import load_detector_checked
from derm_core.model.transforms import eval_transform
from derm_core.triage.rules import Thresholds, TriageResult, triage


class Predictor:
    def __init__(self, model, card: ModelCard, device: torch.device | None = None, fast_path: str | None = None,
                 out_of_scope: bool = True):
        """``fast_path`` forces an inference path (see :mod:`derm_core.model.inference`); without
        ``out_of_scope`` the card's detector is not loaded (batch work that only needs logits)."""
        self.device = torch.device(device) if device is not None else pick_device()   # a torch.device or its name
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.card = card
        self.taxonomy = card.taxonomy
        self.transform = eval_transform(card.input_size, card.mean, card.std)
        self.lock = threading.Lock()
        self.tta = card.tta
        self.runner = Runner(self.model, self.tta, self.device, card.input_size, fast_path)
        self._single_view = lambda x, meta=None: self.runner(x, meta, tta=False)[0]
        # note: why the warning is unavailable
        self.ood, self.ood_note = load_detector_checked(card) if out_of_scope else (None, None)

    @classmethod
    def from_path(cls, path: str | Path | None = None, device=None, fast_path: str | None = None) -> "Predictor":
        """Load a model card + weights (default: the shipped model)."""
        model, card = load_model(path)
        return cls(model, card, device, fast_path)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im) for im in images]).to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict_table(self, table, *, use_metadata: bool | None = None, batch_size: int = 64, embeddings: bool = False,
                      progress: bool = True, callback=None, tta: bool | None = None) -> dict[str, np.ndarray]:
        """Logits (and optionally penultimate embeddings) for every row of a dataset table.

        Args:
            use_metadata: feed the table's age/sex/site (default: when the model fuses metadata;
                False hides them from a metadata model, for ablations).
            callback: called as ``callback(done, total)`` after each batch (progress bars in the app).
            tta: override the card's flip averaging (per-epoch validation runs without it).
        """
        from tqdm.auto import tqdm

        from derm_core.data.dataset import LesionDataset
        use_metadata = self.card.use_metadata and (use_metadata is None or use_metadata)
        ds = LesionDataset(table, self.transform, preload=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0)
        logits, embs, done = [], [], 0
        for x, meta, _ in tqdm(loader, desc="predict", disable=not progress, leave=False):
            x = x.to(self.device, memory_format=torch.channels_last)
            z, e = self.runner(x, meta.to(self.device) if use_metadata else None, tta)
            logits.append(z.cpu().numpy())
            if embeddings:
                embs.append(e.cpu().numpy())
            done += len(x)
            if callback:
                callback(done, len(ds))
        out = {"logits": np.concatenate(logits) if logits else np.zeros((0, len(self.taxonomy.classes)), np.float32)}
        if embeddings:
            out["embeddings"] = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
        return out

    def meta_tensor(self, clinical: Clinical | None, n: int) -> torch.Tensor | None:
        if not self.card.use_metadata:
            return None
        return torch.from_numpy(encode(clinical or Clinical())).to(self.device).expand(n, -1)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, clinical: Clinical | None = None,
                tta: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits, penultimate embeddings) for a preprocessed batch; ``tta`` overrides the card's."""
        z, e = self.runner(x, self.meta_tensor(clinical, len(x)), tta)
        return z.cpu().numpy(), e.cpu().numpy()

    @property
    def fast_path(self) -> str:
        """cuda-amp, cpu-bf16 or fp32 (see :mod:`derm_core.model.inference`)."""
        return self.runner.path

    def frozen(self):
        """The single-view network on the fast path, for LIME's many same-size batches
        (a frozen bf16 or fp32 TorchScript copy on a CPU): ``frozen(x)`` or, for a metadata
        model, ``frozen(x, meta)`` -> float32 logits; None while the runner is held eager."""
        return None if self.runner.eager else self._single_view

    def logits(self, x: torch.Tensor, clinical: Clinical | None = None, tta: bool | None = None) -> np.ndarray:
        return self.forward(x, clinical, tta)[0]

    def probabilities(self, images: list[Image.Image], clinical: Clinical | None = None) -> np.ndarray:
        """Calibrated (temperature-scaled) class probabilities, one row per image."""
        return softmax(self.forward(self.preprocess(images), clinical)[0], self.card.temperature)

    def predict(self, image: Image.Image, clinical: Clinical | None = None,
                thresholds: Thresholds | None = None, anyway: bool = False) -> TriageResult:
        """Differential diagnosis and risk tier of one photo (already cropped to the lesion).

        A photo the out-of-scope gate flags (or a one-colour photo) gets no triage: the result is
        withheld with the reason, unless ``anyway`` (the page's "triage anyway"), which marks it."""
        thresholds = thresholds or self.card.thresholds
        thresholds.check(self.taxonomy)
        logits, _ = self.forward(self.preprocess([image]), clinical)
        probs = softmax(logits, self.card.temperature)[0]
        result = triage(probs, self.taxonomy, thresholds)
        rule = self.card.balanced_rule
        if rule is not None:
            result = replace(result, balanced=self.taxonomy.classes[int(rule.predict(probs)[0])])
        why = None
        if is_flat(image):
            why = "the photo is (almost) one colour: it shows no lesion"
            result = replace(result, out_of_scope=True)
        elif self.ood is not None:
            score, flagged = self.ood([image], self.device)
            result = replace(result, out_of_scope=bool(flagged[0]), ood_score=float(score[0]))
            why = self.ood.explain(float(score[0])) if flagged[0] else None
        elif self.ood_note:
            result.notes.append(self.ood_note)
        if why and not anyway:
            result = result.withhold(why)
            result.notes.append(f"no triage: {why}")
        elif why:
            result.notes.append(f"triaged anyway, although {why}: the result may mean nothing")
        used = (clinical or Clinical()).given()
        if self.card.use_metadata:
            result.notes.append(f"clinical data used: {', '.join(used)}" if used else NONE_GIVEN_NOTE)
        elif used:
            result.notes.append("this model does not use clinical data; the values given were ignored")
        return result
