"""Conformal prediction sets: a differential with a coverage guarantee.

Class-conditional (Mondrian) split conformal prediction (Vovk et al. 2005; Angelopoulos &
Bates 2021, section 4.5). The nonconformity of class ``k`` for a photo is ``1 - p_k`` (the
calibrated probability the model gives it). On the calibration photos (the model's
validation split) the scores of each class's *own* photos are kept, sorted. For a new photo,
class ``k``'s p-value is::

    p_k = (#{validation photos of class k with score >= 1 - p_k} + 1) / (n_k + 1)

and the prediction set at level ``L`` holds every class with ``p_k >= 1 - L``. If the new
photo is exchangeable with the validation photos of its true class, the true class is in the
set with probability at least ``L``: separately *for every class*, so the rare classes keep
their coverage (a pooled threshold lets the common naevi carry the average while melanomas
miss out). A class with fewer than ``1 / (1 - L) - 1`` calibration photos is always in the set.
A set can be empty: no class is plausible at that level (an unusual photo).

``tests/test_conformal.py`` checks the sets against crepes' Mondrian conformal classifier.
The calibration is kept beside the model (``model.conformal.json``) and with threshold
profiles; it is tied to the model's weights and temperature, and refused for any other.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derm_core.errors import ConformalError

DEFAULT_LEVEL = 0.90
PAGE_LEVELS = (0.8, 0.85, 0.9, 0.95, 0.99)        # the triage page's level choices
LEVELS = tuple(round(x, 2) for x in np.arange(0.50, 0.991, 0.01))   # the Model lab's coverage curve
FORMAT = "dermtriage-conformal"


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"the coverage level must be between 0 and 1 (e.g. 0.9), got {level}")
    return level


def nonconformity(probs: np.ndarray) -> np.ndarray:
    """Score of every (photo, class): 1 - calibrated probability (higher = less like that class)."""
    return 1.0 - np.asarray(probs, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Sorted validation nonconformity scores of each class's own photos."""

    classes: tuple[str, ...]
    scores: tuple[np.ndarray, ...]             # one sorted float64 array per class
    source: dict = field(default_factory=dict)  # what it was fitted on: split, images, weights, temperature

    @classmethod
    def fit(cls, y, probs, classes, source: dict | None = None) -> "Calibration":
        """Calibrate on labelled photos: ``y`` (N,) class indices, ``probs`` (N, C) calibrated probabilities."""
        y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(classes) or len(y) != len(probs):
            raise ValueError(f"probabilities {probs.shape} do not fit {len(y)} labels and {len(classes)} classes")
        s = nonconformity(probs)[np.arange(len(y)), y] if len(y) else np.zeros(0)
        return cls(tuple(classes), tuple(np.sort(s[y == k]) for k in range(len(classes))), dict(source or {}))

    @property
    def n(self) -> dict[str, int]:
        return {c: len(s) for c, s in zip(self.classes, self.scores)}

    def p_values(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) class-conditional conformal p-values of every class for every photo."""
        a = nonconformity(np.atleast_2d(probs))
        if a.shape[1] != len(self.classes):
            raise ValueError(f"probabilities have {a.shape[1]} classes, the calibration {len(self.classes)}")
        p = np.empty_like(a)
        for k, s in enumerate(self.scores):
            at_least = len(s) - np.searchsorted(s, a[:, k], side="left")   # calibration scores >= the photo's
            p[:, k] = (at_least + 1) / (len(s) + 1)
        return p

    def sets(self, probs: np.ndarray, level: float = DEFAULT_LEVEL) -> np.ndarray:
        """(N, C) booleans: class in the photo's prediction set at this coverage level."""
        return self.p_values(probs) >= 1.0 - _check_level(level) - 1e-12

    def prediction_set(self, probs, level: float = DEFAULT_LEVEL) -> list[str]:
        """One photo's prediction set (class codes, most probable first). ``probs``: a row or a {code: p} dict."""
        if isinstance(probs, dict):
            probs = [probs[c] for c in self.classes]
        row = np.asarray(probs, dtype=np.float64).ravel()
        inside = self.sets(row[None], level)[0]
        return [self.classes[k] for k in np.argsort(-row, kind="stable") if inside[k]]

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return {"format": FORMAT, "method": "class-conditional split conformal, score 1 - p",
                "classes": list(self.classes), "source": self.source,
                "scores": {c: [float(v) for v in s] for c, s in zip(self.classes, self.scores)}}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConformalError("not a DermTriage conformal calibration")
        try:
            classes = tuple(d["classes"])
            scores = tuple(np.sort(np.asarray(d["scores"][c], dtype=np.float64)) for c in classes)
        except (KeyError, TypeError, ValueError) as e:
            raise ConformalError(f"broken conformal calibration ({e})") from None
        if any(np.any(~np.isfinite(s)) for s in scores):
            raise ConformalError("conformal calibration holds non-finite scores")
        return cls(classes, scores, dict(d.get("source") or {}))

    def check(self, card) -> None:
        """Refuse a calibration made for other classes, other weights or another temperature."""
        if list(self.classes) != list(card.classes):
            raise ConformalError(f"the conformal calibration is for classes {list(self.classes)}, the model has "
                                 f"{list(card.classes)}")
        sha = self.source.get("weights_sha256")
        if sha is not None and sha != card.identity().weights_sha256:
            raise ConformalError("the conformal calibration was made for other model weights: re-fit it")
        t = self.source.get("temperature")
        if t is not None and not math.isclose(float(t), card.temperature, rel_tol=1e-6):
            raise ConformalError(f"the conformal calibration was made at temperature {t}, the model now has "
                                 f"{card.temperature:.4g}: re-fit it")


# ---------------------------------------------------------------------- evaluation
def evaluate(calibration: Calibration, y, probs, level: float = DEFAULT_LEVEL) -> dict:
    """Empirical coverage, set sizes and per-class coverage of the sets on labelled photos.

    The ``report.json`` block: ``{"level", "coverage", "mean_set_size", "per_class": {code: {"coverage", "n"}}}``
    plus the share of empty sets, the set-size counts (index = size) and the calibration's sizes.
    """
    level = _check_level(level)
    y = np.asarray(y)
    s = calibration.sets(probs, level)
    hit = s[np.arange(len(y)), y] if len(y) else np.zeros(0, bool)
    size = s.sum(1)
    per = {c: {"coverage": float(hit[y == k].mean()) if (y == k).any() else None, "n": int((y == k).sum())}
           for k, c in enumerate(calibration.classes)}
    return {"level": level, "coverage": float(hit.mean()) if len(y) else None,
            "mean_set_size": float(size.mean()) if len(y) else None,
            "empty_sets": float((size == 0).mean()) if len(y) else None,
            "set_size_counts": np.bincount(size, minlength=len(calibration.classes) + 1).tolist(),
            "per_class": per, "calibration_n": calibration.n,
            "calibrated_on": calibration.source.get("split", "validation")}


def report_block(y, probs, calibration: Calibration | None, level: float = DEFAULT_LEVEL) -> dict | None:
    """``report.json``'s ``"conformal"`` entry (None without a calibration)."""
    return None if calibration is None else evaluate(calibration, y, probs, level)


def coverage_curve(calibration: Calibration, y, probs, levels=LEVELS) -> dict[str, list]:
    """Coverage, mean set size and per-class coverage against the level (the Model lab's plot)."""
    y = np.asarray(y)
    p = calibration.p_values(probs)
    out = {"level": [], "coverage": [], "mean_set_size": [], "per_class": {c: [] for c in calibration.classes}}
    for lv in levels:
        s = p >= 1.0 - lv - 1e-12
        hit = s[np.arange(len(y)), y]
        out["level"].append(float(lv))
        out["coverage"].append(float(hit.mean()))
        out["mean_set_size"].append(float(s.sum(1).mean()))
        for k, c in enumerate(calibration.classes):
            out["per_class"][c].append(float(hit[y == k].mean()) if (y == k).any() else None)
    return out


def describe(prediction_set: list[str], level: float, display_names: dict[str, str] | None = None) -> str:
    """The plain-words sentence the triage page and the case report show beside the set."""
    pct = f"{_check_level(level):.0%}"
    if not prediction_set:
        return (f"No diagnosis is plausible enough to enter the {pct} set: this photo is unlike the validation "
                "photos of every class. Treat the output with extra caution.")
    names = [(display_names or {}).get(c, c) for c in prediction_set]
    one = "this diagnosis" if len(names) == 1 else f"one of these {len(names)} diagnoses"
    return (f"On photos like the validation set, the true diagnosis is in this set {pct} of the time "
            f"({one}: {', '.join(names)}). The guarantee holds for each diagnosis separately, on average over "
            "photos, not for this photo alone.")


# ---------------------------------------------------------------------- the model's calibration
def calibration_path(card) -> Path:
    """``model.conformal.json`` beside the model card."""
    return card.path.with_name(card.path.stem + ".conformal.json")


def fit_for_model(card, table, split, *, model=None, save: bool = True, callback=None) -> Calibration:
    """Calibrate on the model's validation split of ``table`` (predictions cached per model and data)."""
    from derm_core.evaluate.embedding import predictions
    from derm_core.model.calibration import softmax
    from derm_core.model.checkpoint import atomic_write_json
    val = table[(np.asarray(split) == "val")].reset_index(drop=True)
    if val.empty:
        raise ValueError("the model's split has no validation images to calibrate the prediction sets on")
    pred = predictions(card, val, model=model, callback=callback)
    cal = Calibration.fit(val["y"].to_numpy(), softmax(pred["logits"], card.temperature), card.classes,
                          {"split": "validation", "n_images": int(len(val)), "weights_sha256": card.identity().weights_sha256,
                           "temperature": float(card.temperature)})
    if save:
        atomic_write_json(calibration_path(card), cal.to_dict())
    return cal


def load_calibration(card, data: dict | None = None) -> Calibration | None:
    """The model's calibration (or ``data``, e.g. a threshold profile's ``"conformal"`` entry); None when the
    model has none. Raises :class:`ConformalError` when it exists but belongs to another model."""
    if data is None:
        path = calibration_path(card) if card.path else None
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConformalError(f"{path.name} is not readable ({e})") from None
    cal = Calibration.from_dict(data)
    cal.check(card)
    return cal


def predict_fields(card, probs: dict[str, float], level: float = DEFAULT_LEVEL,
                   calibration: Calibration | None = None) -> dict:
    """``predict --json``'s ``prediction_set`` and ``level`` (with the sentence, or why there is no set)."""
    try:
        level = _check_level(level)
    except ValueError as e:
        raise ConformalError(f"--level: {e}") from None
    try:
        cal = calibration or load_calibration(card)
    except ConformalError as e:
        return {"prediction_set": None, "level": level, "prediction_set_note": str(e)}
    if cal is None:
        return {"prediction_set": None, "level": level,
                "prediction_set_note": "this model has no conformal calibration (model.conformal.json); fit it "
                                       "on the validation split with bench/eval_conformal.py --save"}
    s = cal.prediction_set(probs, level)
    return {"prediction_set": s, "level": level, "prediction_set_note": describe(s, level, card.taxonomy.display_names)}


def report_block_for(card, y, probs, level: float = DEFAULT_LEVEL) -> dict | None:
    """``report.json``'s ``"conformal"`` entry for a model's own calibration (None without one;
    ``{"error": ...}`` when its calibration belongs to other weights or another temperature)."""
    try:
        return report_block(y, probs, load_calibration(card), level)
    except ConformalError as e:
        return {"error": str(e)}


def active_calibration(card, profile_path: str | None = None) -> Calibration | None:
    """The calibration in use: the chosen threshold profile's (when it stores one), else the model's own."""
    if profile_path:
        try:
            data = json.loads(Path(profile_path).read_text(encoding="utf-8")).get("conformal")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            data = None
        if data:
            return load_calibration(card, data)
    return load_calibration(card)
