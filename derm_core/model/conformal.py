"""Conformal prediction sets: a differential with a coverage guarantee that reads as a differential.

Class-conditional (Mondrian) split conformal prediction (Vovk et al. 2005; Angelopoulos &
Bates 2021, section 4.5) with an APS-type score (Romano et al. 2020), non-randomised:

* the nonconformity of class ``k`` for a photo is the total probability of the classes *more*
  probable than ``k`` (0 for the most probable class). On the calibration photos (the model's
  validation split) the scores of each class's *own* photos are kept, sorted;
* class ``k``'s p-value for a new photo is the exact finite-sample one,
  ``(#{calibration photos of class k with score >= the photo's} + 1) / (n_k + 1)``;
* the set is then closed upward: a class enters when it, or any less probable class, passes
  ``p >= 1 - L``. A set therefore never leaves out a class more probable than one it holds
  (the old score ``1 - p`` gave {mel, bkl, df, vasc} without nevus at 46%). Closing only
  enlarges sets, so the guarantee stays: if a new photo is exchangeable with the validation
  photos of its true class, the true class is in the set with probability at least ``L``,
  separately *for every class* (the common naevi cannot carry the average for the melanomas);
* a class with fewer than :data:`MIN_CLASS_N` calibration photos (dermatofibroma and vascular
  lesions in HAM10000's validation split) is scored against *all* calibration photos: with 15
  photos a 90% threshold is just the largest score, noisy enough to put that class, and by the
  closure everything above it, in most sets. For those classes the guarantee is the pooled,
  average one, not their own (:attr:`Calibration.pooled` names them; the Model lab shows them).

The most probable class always scores 0, so sets from this method are never empty. Everything
is deterministic (no randomised tie-breaking). ``tests/test_conformal.py`` checks the p-values
against crepes' conformal classifiers. The calibration is kept beside the model
(``model.conformal.json``) and with threshold profiles; it is tied to the model's weights,
temperature and classes and to this method, and refused otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derm_core.errors import ConformalError

DEFAULT_LEVEL = 0.90
PAGE_LEVELS = (0.8, 0.85, 0.9, 0.95, 0.99)        # the triage page's level choices
LEVELS = tuple(round(x, 2) for x in np.arange(0.50, 0.991, 0.01))   # the Model lab's coverage curve
FORMAT = "dermtriage-conformal"
METHOD = "class-conditional APS (probability of the more probable classes), closed upward, small classes pooled"
OLD_METHODS = (None, "class-conditional split conformal, score 1 - p")   # refused: re-fit
MIN_CLASS_N = 30            # fewer calibration photos than this: the class is scored against all of them
LONG_SET = 4                # describe(): a set this long says the photo is uncertain


def _is_number(v) -> bool:
    """A finite JSON number (not a bool, not a string, not NaN or Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v) -> str:
    """``repr`` cut to a length an error line can carry."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"the coverage level must be between 0 and 1 (e.g. 0.9), got {level}")
    return level


def nonconformity(probs: np.ndarray) -> np.ndarray:
    """(N, C) score of every (photo, class): the total probability of the classes more probable than it.

    Ordered by probability within a photo (a more probable class never scores higher), so the
    sets follow the model's ranking; the most probable class scores 0."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    return (p[:, None, :] * (p[:, None, :] > p[:, :, None])).sum(-1)


def close_upward(p_values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each class's p-value raised to the largest p-value of the classes at most as probable as it.

    Thresholding these at any level gives the upward closure of the per-class sets: nested by
    probability (and by level), and never smaller, so every class keeps its coverage."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    return (p_values[:, None, :] * (p[:, None, :] <= p[:, :, None])).max(-1)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Sorted validation nonconformity scores of each class's own photos."""

    classes: tuple[str, ...]
    scores: tuple[np.ndarray, ...]             # one sorted float64 array per class
    source: dict = field(default_factory=dict)  # what it was fitted on: split, images, weights, temperature
    min_class_n: int = MIN_CLASS_N             # classes with fewer photos are scored against all of them

    @classmethod
    def fit(cls, y, probs, classes, source: dict | None = None, min_class_n: int = MIN_CLASS_N) -> "Calibration":
        """Calibrate on labelled photos: ``y`` (N,) class indices, ``probs`` (N, C) calibrated probabilities."""
        y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(classes) or len(y) != len(probs):
            raise ValueError(f"probabilities {probs.shape} do not fit {len(y)} labels and {len(classes)} classes")
        s = nonconformity(probs)[np.arange(len(y)), y] if len(y) else np.zeros(0)
        return cls(tuple(classes), tuple(np.sort(s[y == k]) for k in range(len(classes))), dict(source or {}),
                   int(min_class_n))

    @property
    def n(self) -> dict[str, int]:
        return {c: len(s) for c, s in zip(self.classes, self.scores)}

    @property
    def pooled(self) -> tuple[str, ...]:
        """Classes with too few calibration photos, scored against all of them (an average guarantee only)."""
        return tuple(c for c, s in zip(self.classes, self.scores) if len(s) < self.min_class_n)

    def class_p_values(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) conformal p-values of every class before the closure (each class on its own photos)."""
        a = nonconformity(probs)
        if a.shape[1] != len(self.classes):
            raise ValueError(f"probabilities have {a.shape[1]} classes, the calibration {len(self.classes)}")
        everyone = np.sort(np.concatenate(self.scores)) if self.scores else np.zeros(0)
        p = np.empty_like(a)
        for k, s in enumerate(self.scores):
            s = s if len(s) >= self.min_class_n else everyone
            at_least = len(s) - np.searchsorted(s, a[:, k], side="left")   # calibration scores >= the photo's
            p[:, k] = (at_least + 1) / (len(s) + 1)
        return p

    def p_values(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) p-values the sets are cut from: :meth:`class_p_values` closed upward by probability."""
        return close_upward(self.class_p_values(probs), probs)

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
        return {"format": FORMAT, "method": METHOD, "min_class_n": self.min_class_n,
                "classes": list(self.classes), "source": self.source,
                "scores": {c: [float(v) for v in s] for c, s in zip(self.classes, self.scores)}}

    @classmethod
    def from_dict(cls, d, where: str = "conformal calibration") -> "Calibration":
        """The one reader of a stored calibration (``model.conformal.json`` or a profile's
        ``"conformal"`` entry): every field typed and in range, or a :class:`ConformalError`
        naming ``where`` (the file, and the entry within it) and the field."""

        def bad(name: str, problem: str) -> ConformalError:
            return ConformalError(f"{where}: field '{name}' {problem}")

        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConformalError(f"{where} is not a DermTriage conformal calibration")
        if d.get("method") != METHOD:
            kind = "an older" if d.get("method") in OLD_METHODS else "an unknown"
            raise ConformalError(f"{where} was made with {kind} method "
                                 f"({d.get('method') or 'unnamed'}): re-fit it")
        classes, scores, min_n = d.get("classes"), d.get("scores"), d.get("min_class_n")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise bad("classes", f"must be a list of class codes, not {_short(classes)}")
        if not isinstance(min_n, int) or isinstance(min_n, bool) or min_n < 1:
            raise bad("min_class_n", f"must be a whole number from 1, not {_short(min_n)}")
        if not isinstance(scores, dict):
            raise bad("scores", f"must map each class to its scores, not {_short(scores)}")
        arrays = []
        for c in classes:
            v = scores.get(c)
            if not isinstance(v, list) or not all(_is_number(x) and 0.0 <= x <= 1.0 + 1e-6 for x in v):
                raise bad(f"scores.{c}", "must be a list of numbers from 0 to 1 (a nonconformity score is a "
                                         f"total probability), not {_short(v)}")
            arrays.append(np.sort(np.asarray(v, dtype=np.float64)))
        source = d.get("source")
        if source is None:
            source = {}
        if not isinstance(source, dict):
            raise bad("source", f"must be an object (what it was fitted on), not {_short(source)}")
        for k, ok, what in (("temperature", lambda t: _is_number(t) and t > 0, "a number above 0"),
                            ("weights_sha256", lambda t: isinstance(t, str), "a SHA-256 hex string"),
                            ("split", lambda t: isinstance(t, str), "a split name"),
                            ("n_images", lambda t: isinstance(t, int) and not isinstance(t, bool) and t >= 0,
                             "a whole number")):
            if source.get(k) is not None and not ok(source[k]):
                raise bad(f"source.{k}", f"must be {what}, not {_short(source[k])}")
        return cls(tuple(classes), tuple(arrays), dict(source), min_n)

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
            "per_class": per, "calibration_n": calibration.n, "pooled": list(calibration.pooled),
            "calibrated_on": calibration.source.get("split", "validation")}


def per_class_rows(report: dict) -> list[dict]:
    """The Model lab's per-class table from an :func:`evaluate` block: photos, coverage, calibration photos."""
    pooled = set(report.get("pooled") or ())
    return [{"class": c, "photos": v["n"], "coverage": v["coverage"],
             "calibration photos": report["calibration_n"].get(c, 0),
             "calibrated on": "all classes (too few photos)" if c in pooled else "its own photos"}
            for c, v in report["per_class"].items()]


def per_group_rows(calibration: Calibration, y, probs, groups, order, level: float = DEFAULT_LEVEL) -> list[dict]:
    """Coverage and mean set size per group of photos (e.g. skin tone, in ``order``): whether the
    guarantee, made on average over the validation photos, holds for each group."""
    y, probs, groups = np.asarray(y), np.asarray(probs), np.asarray(groups)
    rows = []
    for g in order:
        m = groups == g
        if m.any():
            r = evaluate(calibration, y[m], probs[m], level)
            rows.append({"group": g, "photos": int(m.sum()), "coverage": r["coverage"],
                         "mean set size": r["mean_set_size"]})
    return rows


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
    """The plain-words sentence the triage page and the case report show beside the set: why it is
    empty or long, then what it promises."""
    pct = f"{_check_level(level):.0%}"
    if not prediction_set:
        return (f"No diagnosis is plausible enough to enter the {pct} set: this photo is unlike the validation "
                "photos of every class. Treat the output with extra caution.")
    names = [(display_names or {}).get(c, c) for c in prediction_set]
    one = "this diagnosis" if len(names) == 1 else f"one of these {len(names)} diagnoses"
    why = ("An uncertain photo: the model cannot narrow it down at this level. "
           if len(names) >= LONG_SET else "")
    return (f"{why}On photos like the validation set, the true diagnosis is in this set {pct} of the time "
            f"({one}: {', '.join(names)}): on average over photos, not for this photo alone.")


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


def load_calibration(card, data: dict | None = None, where: str | None = None) -> Calibration | None:
    """The model's calibration (or ``data``, e.g. a threshold profile's ``"conformal"`` entry,
    read as ``where``); None when the model has none. Raises :class:`ConformalError` when it
    exists but cannot be read (not a regular file, malformed, a field of the wrong type or
    range) or belongs to another model."""
    if data is None:
        path = calibration_path(card) if card.path else None
        if path is None or not (path.exists() or path.is_symlink()):
            return None
        from derm_core.model.checkpoint import read_json
        data, where = read_json(path, ConformalError, "conformal calibration"), str(path)
    cal = Calibration.from_dict(data, where or "conformal calibration")
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
                                       "with `python -m derm_core release` (or recalibrate)"}
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
    """The calibration in use: the chosen threshold profile's (when it stores one), else the model's own.
    A profile that cannot be used is refused where its thresholds are (the page says so), and
    the model's own calibration is used with the model's own thresholds."""
    if profile_path:
        from derm_core.triage.profiles import ProfileError, load_profile
        try:
            prof = load_profile(profile_path)
        except ProfileError:
            prof = None
        if prof is not None and prof.data.get("conformal"):
            return load_calibration(card, prof.data["conformal"], f"profile {Path(profile_path).name}, entry 'conformal'")
    return load_calibration(card)
