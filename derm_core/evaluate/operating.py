"""Operating points: re-binning fixed predictions at new thresholds, presets, prevalence.

The Model lab computes a model's logits for an evaluation set once
(:func:`derm_core.evaluate.embedding.predictions`); everything here works on those numbers only —
vectorised numpy, no model calls — so moving a threshold slider costs milliseconds.

* :class:`EvalSet` holds the predictions and everything that does not depend on the
  thresholds (ROC curves, AUCs with bootstrap confidence intervals, sensitivity and
  specificity against threshold, Youden-optimal thresholds, reliability curves), computed
  lazily once.
* :func:`class_table`, :func:`tier_table`, :func:`tier_confusion`, :func:`subgroup_table`
  re-bin at a :class:`~derm_core.triage.rules.Thresholds`.
* :func:`preset` gives the one-click operating points (Youden-optimal, high-sensitivity
  screening, high-specificity); :func:`at_prevalence` restates PPV/NPV at another
  disease prevalence (Bayes' rule).

Tiers are analysed in the referral view of Zhao et al. 2019: for a tier ``t`` above the
lowest, a case is *positive* when its true tier is ``t`` or more urgent and *flagged* when
the assigned tier is ``t`` or more urgent (:func:`derm_core.triage.rules.assign_tiers`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from derm_core.data.taxonomy import Taxonomy
from derm_core.evaluate import metrics as M
from derm_core.evaluate.evaluation import subgroups
from derm_core.evaluate.metrics import bootstrap_auc, bootstrap_counts  # noqa: F401 - re-exported
from derm_core.model.calibration import softmax
from derm_core.triage.rules import Thresholds, assign_tiers, fit_thresholds, tier_at_or_above, true_tiers

PRESETS = ("youden", "screening", "specific")
PRESET_LABELS = {"youden": "Youden-optimal", "screening": "High-sensitivity screening",
                 "specific": "High-specificity"}
GRID = np.round(np.linspace(0.0, 1.0, 201), 6)   # thresholds for the sensitivity/specificity curves
N_BOOT = M.N_BOOT
TIER_PREFIX = "tier:"


def tier_target(tier: str) -> str:
    """The target name of a tier's referral view (``"tier:dangerous"``), as used by the tables."""
    return TIER_PREFIX + tier


def _safe_div(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 from confusion counts (arrays broadcast; NaN when undefined)."""
    tp, fp, fn, tn = (np.asarray(v, dtype=float) for v in (tp, fp, fn, tn))
    sens, spec = _safe_div(tp, tp + fn), _safe_div(tn, tn + fp)
    ppv, npv = _safe_div(tp, tp + fp), _safe_div(tn, tn + fn)
    return {"sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv, "f1": _safe_div(2 * tp, 2 * tp + fp + fn)}


def at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) of a test with this sensitivity and specificity where the disease has this prevalence."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be strictly between 0 and 1, got {prevalence}")
    se, sp, p = float(sensitivity), float(specificity), float(prevalence)
    if math.isnan(se) or math.isnan(sp):
        return float("nan"), float("nan")
    tp, fp = se * p, (1 - sp) * (1 - p)
    tn, fn = sp * (1 - p), (1 - se) * p
    return (tp / (tp + fp) if tp + fp > 0 else float("nan"), tn / (tn + fn) if tn + fn > 0 else float("nan"))


def threshold_for_specificity(y_true, y_score, target: float) -> float:
    """The lowest threshold (``score >= t`` is positive) whose specificity is at least ``target``."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    neg = np.sort(y_score[y_true == 0])[::-1]
    if len(neg) == 0:
        raise ValueError("no negative samples to set a specificity target on")
    k = int(np.floor((1.0 - target) * len(neg) + 1e-9))  # negatives we may flag
    if k >= len(neg):
        return 0.0
    return float(min(np.nextafter(neg[k], np.inf), 1.0))


@dataclass
class EvalSet:
    """One model's predictions on one evaluation set; the thresholds are applied later.

    Args:
        y: true class indices (N,).
        logits: uncalibrated logits (N, C); ``probs`` divides them by ``temperature``.
        groups: subgroup name -> per-row group label (see :func:`derm_core.evaluate.evaluation.subgroups`).
    """

    taxonomy: Taxonomy
    y: np.ndarray
    logits: np.ndarray
    temperature: float = 1.0
    image_ids: np.ndarray | None = None
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    n_boot: int = N_BOOT
    clusters: np.ndarray | None = None   # lesion id per image: the bootstrap resamples lesions

    def __post_init__(self):
        self.y = np.asarray(self.y, dtype=int)
        self.logits = np.asarray(self.logits, dtype=np.float64)
        if self.logits.ndim != 2 or len(self.logits) != len(self.y):
            raise ValueError(f"logits of shape {self.logits.shape} do not match {len(self.y)} labels")
        if self.logits.shape[1] != len(self.taxonomy.classes):
            raise ValueError(f"logits have {self.logits.shape[1]} columns, the taxonomy {len(self.taxonomy.classes)} classes")
        if len(self.y) == 0:
            raise ValueError("no images to evaluate")
        self.probs = softmax(self.logits, self.temperature)
        self.probs_uncalibrated = softmax(self.logits, 1.0)
        self.pos = self.y[:, None] == np.arange(self.probs.shape[1])[None, :]          # (N, C)
        self.true_tier = true_tiers(self.y, self.taxonomy)                             # (N,)
        self.tier_at_or_above = tier_at_or_above(self.probs, self.taxonomy)             # P(tier >= k)
        self.pred = self.probs.argmax(1)
        self.image_ids = (np.asarray(self.image_ids).astype(str) if self.image_ids is not None
                          else np.array([str(i) for i in range(len(self.y))]))
        self.groups = {k: np.asarray(v).astype(str) for k, v in self.groups.items()}

    @classmethod
    def from_table(cls, taxonomy: Taxonomy, table: pd.DataFrame, logits: np.ndarray, temperature: float,
                   **kw) -> EvalSet:
        """From a :func:`derm_core.data.dataset.load_table` table and the model's logits for its rows."""
        groups = {k: v.to_numpy() for k, v in subgroups(table).items()}
        return cls(taxonomy, table["y"].to_numpy(), logits, temperature, table["image_id"].to_numpy(), groups,
                   clusters=table["group"].to_numpy() if "group" in table else None, **kw)

    # ------------------------------------------------------------------ names
    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.classes

    @property
    def referral_tiers(self) -> list[str]:
        """Tiers above the lowest: the ones with a threshold."""
        return self.taxonomy.tier_names[1:]

    def __len__(self) -> int:
        return len(self.y)

    def target_names(self) -> list[str]:
        """Every binary target: the referral view of each tier (most urgent first), then each class."""
        return [tier_target(t) for t in reversed(self.referral_tiers)] + list(self.classes)

    def target_label(self, target: str) -> str:
        if target.startswith(TIER_PREFIX):
            t = target[len(TIER_PREFIX):]
            k = self.taxonomy.tier_names.index(t)
            return f"{t} tier" + (" or more urgent" if k < len(self.taxonomy.tier_names) - 1 else "")
        return f"{self.taxonomy.display_names[target]} ({target})"

    def target_truth_score(self, target: str) -> tuple[np.ndarray, np.ndarray]:
        """(positives, score) of a binary target: a class's probability, or a tier's P(tier or worse)."""
        if target.startswith(TIER_PREFIX):
            k = self.taxonomy.tier_names.index(target[len(TIER_PREFIX):])
            return self.true_tier >= k, self.tier_at_or_above[:, k]
        i = self.taxonomy.index(target)
        return self.pos[:, i], self.probs[:, i]

    def prevalence(self, target: str) -> float:
        return float(self.target_truth_score(target)[0].mean())

    # ------------------------------------------------------- threshold-free parts (computed once)
    @cached_property
    def _boot_counts(self) -> np.ndarray:
        return bootstrap_counts(len(self.y), self.n_boot, clusters=self.clusters)

    @cached_property
    def auc(self) -> dict[str, tuple[float, float, float]]:
        """Target -> (AUC, 95% CI low, high), bootstrap over lesions (images without lesion ids)."""
        out = {}
        for t in self.target_names():
            pos, score = self.target_truth_score(t)
            out[t] = bootstrap_auc(pos, score, counts=self._boot_counts)
        return out

    @cached_property
    def roc(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Target -> (false-positive rate, true-positive rate); absent when a target has one class only."""
        out = {}
        for t in self.target_names():
            pos, score = self.target_truth_score(t)
            if 0 < pos.sum() < len(pos):
                fpr, tpr, _ = skm.roc_curve(pos.astype(int), score, drop_intermediate=True)
                out[t] = (fpr, tpr)
        return out

    @cached_property
    def sens_spec_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Target -> (sensitivity, specificity) at each threshold of :data:`GRID` (score >= t positive)."""
        out = {}
        for t in self.target_names():
            pos, score = self.target_truth_score(t)
            p, n = np.sort(score[pos]), np.sort(score[~pos])
            sens = (len(p) - np.searchsorted(p, GRID, side="left")) / len(p) if len(p) else np.full(len(GRID), np.nan)
            spec = np.searchsorted(n, GRID, side="left") / len(n) if len(n) else np.full(len(GRID), np.nan)
            out[t] = (sens, spec)
        return out

    @cached_property
    def youden(self) -> dict[str, float]:
        """Target -> Youden-optimal threshold (NaN where a target lacks positives or negatives)."""
        out = {}
        for t in self.target_names():
            pos, score = self.target_truth_score(t)
            out[t] = M.youden_threshold(pos.astype(int), score) if 0 < pos.sum() < len(pos) else float("nan")
        return out

    @cached_property
    def confusion(self) -> np.ndarray:
        """Class confusion matrix of the most probable class (rows: true class)."""
        return M.confusion(self.y, self.pred, len(self.classes))

    @cached_property
    def calibration(self) -> dict[str, dict]:
        """Reliability curve and ECE before (T = 1) and after temperature scaling."""
        return {
            "before": {**M.reliability_curve(self.y, self.probs_uncalibrated),
                       "ece": M.expected_calibration_error(self.y, self.probs_uncalibrated), "temperature": 1.0},
            "after": {**M.reliability_curve(self.y, self.probs),
                      "ece": M.expected_calibration_error(self.y, self.probs), "temperature": float(self.temperature)},
        }

    @cached_property
    def headline(self) -> dict[str, float]:
        """Threshold-free summary: accuracy, balanced accuracy, top-k, macro AUC (as in the
        report: :func:`derm_core.evaluate.evaluation.headline_metrics`), ECE."""
        from derm_core.evaluate.evaluation import headline_metrics
        return {**headline_metrics(self.y, self.probs, [self.auc[k][0] for k in self.classes]),
                "ece": self.calibration["after"]["ece"], "ece_uncalibrated": self.calibration["before"]["ece"]}

    def intervals(self, rule=None) -> dict:
        """Lesion-grouped bootstrap intervals of the threshold-free headline (and of the
        balanced decision ``rule``'s accuracies); see :func:`derm_core.evaluate.evaluation.intervals`."""
        from derm_core.evaluate.evaluation import intervals
        key = None if rule is None else rule.to_dict()["tau"]
        cache = self.__dict__.setdefault("_intervals", {})
        if key not in cache:
            cache[key] = intervals(self.y, self.probs, self.clusters, None, self.taxonomy, rule, n_boot=self.n_boot)
        return cache[key]

    @cached_property
    def _group_static(self) -> dict[str, pd.DataFrame]:
        """Per subgroup: size, accuracy, balanced accuracy, macro AUC (threshold-free, computed once)."""
        import warnings

        from derm_core.evaluate.evaluation import headline_metrics
        out = {}
        for gname, labels in self.groups.items():
            rows = []
            for g in _group_order(gname, labels):
                m = labels == g
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    h = headline_metrics(self.y[m], self.probs[m])
                rows.append({"group": g, "n": int(m.sum()),
                             **{k: h[k] for k in ("accuracy", "balanced_accuracy", "macro_auc")}})
            out[gname] = pd.DataFrame(rows)
        return out

    @cached_property
    def _group_codes(self) -> dict[str, np.ndarray]:
        """Per subgroup: each image's row in ``_group_static[name]``."""
        return {g: pd.Categorical(labels, categories=self._group_static[g]["group"]).codes.astype(np.int64)
                for g, labels in self.groups.items()}

    def warm(self) -> EvalSet:
        """Compute every threshold-free part now (so the first slider move is as fast as the rest)."""
        for name in ("auc", "roc", "sens_spec_curves", "youden", "confusion", "calibration", "headline",
                     "_group_static", "_group_codes"):
            getattr(self, name)
        return self


# ---------------------------------------------------------------------- re-binning at thresholds
def _class_vector(ev: EvalSet, thresholds: Thresholds) -> np.ndarray:
    thresholds.check(ev.taxonomy)
    return np.array([float(thresholds.classes[c]) for c in ev.classes])


def flags(ev: EvalSet, thresholds: Thresholds) -> dict[str, np.ndarray]:
    """Target -> boolean "flagged" per image at these thresholds (class: p >= t; tier: assigned tier or worse)."""
    cls = ev.probs >= _class_vector(ev, thresholds)[None, :]
    assigned = assign_tiers(ev.probs, ev.taxonomy, thresholds.tiers)
    out = {c: cls[:, i] for i, c in enumerate(ev.classes)}
    for k, t in enumerate(ev.taxonomy.tier_names):
        if k:
            out[tier_target(t)] = assigned >= k
    return out


def _target_threshold(ev: EvalSet, thresholds: Thresholds, target: str) -> float:
    if target.startswith(TIER_PREFIX):
        return float(thresholds.tiers[target[len(TIER_PREFIX):]])
    return float(thresholds.classes[target])


def operating_table(ev: EvalSet, thresholds: Thresholds, prevalence: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per target (tiers' referral view first, then classes) at these thresholds.

    Columns: target, label, kind, n (positives), threshold, tp/fp/fn/tn, sensitivity,
    specificity, ppv, npv, f1, auc, auc_low, auc_high, youden; with ``prevalence`` (target ->
    prevalence) also ppv_at_prevalence and npv_at_prevalence.
    """
    fl = flags(ev, thresholds)
    targets = ev.target_names()
    pos = np.stack([ev.target_truth_score(t)[0] for t in targets], axis=1)       # (N, K)
    flg = np.stack([fl[t] for t in targets], axis=1)
    tp, fp = (flg & pos).sum(0), (flg & ~pos).sum(0)
    fn, tn = (~flg & pos).sum(0), (~flg & ~pos).sum(0)
    r = rates(tp, fp, fn, tn)
    df = pd.DataFrame({
        "target": targets, "label": [ev.target_label(t) for t in targets],
        "kind": ["tier" if t.startswith(TIER_PREFIX) else "class" for t in targets],
        "n": pos.sum(0), "threshold": [_target_threshold(ev, thresholds, t) for t in targets],
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, **r,
        "auc": [ev.auc[t][0] for t in targets], "auc_low": [ev.auc[t][1] for t in targets],
        "auc_high": [ev.auc[t][2] for t in targets], "youden": [ev.youden[t] for t in targets],
    })
    if prevalence:
        pp = [at_prevalence(s, c, prevalence[t]) if t in prevalence else (np.nan, np.nan)
              for t, s, c in zip(targets, r["sensitivity"], r["specificity"])]
        df["prevalence"] = [prevalence.get(t, np.nan) for t in targets]
        df["ppv_at_prevalence"] = [p[0] for p in pp]
        df["npv_at_prevalence"] = [p[1] for p in pp]
    return df


def class_table(ev: EvalSet, thresholds: Thresholds) -> pd.DataFrame:
    """The per-class rows of :func:`operating_table`."""
    df = operating_table(ev, thresholds)
    return df[df["kind"] == "class"].reset_index(drop=True)


def tier_table(ev: EvalSet, thresholds: Thresholds) -> pd.DataFrame:
    """The per-tier (referral view) rows of :func:`operating_table`."""
    df = operating_table(ev, thresholds)
    return df[df["kind"] == "tier"].reset_index(drop=True)


def tier_confusion(ev: EvalSet, thresholds: Thresholds) -> np.ndarray:
    """True tier (rows) against the tier assigned at these thresholds (columns)."""
    n = len(ev.taxonomy.tier_names)
    assigned = assign_tiers(ev.probs, ev.taxonomy, thresholds.tiers)
    return np.bincount(ev.true_tier * n + assigned, minlength=n * n).reshape(n, n)


def operating_point(ev: EvalSet, thresholds: Thresholds, target: str,
                    prevalence: float | None = None) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV (and F1) of one target; PPV/NPV at ``prevalence`` when given."""
    pos = ev.target_truth_score(target)[0]
    f = flags(ev, thresholds)[target]
    r = {k: float(v) for k, v in rates((f & pos).sum(), (f & ~pos).sum(), (~f & pos).sum(), (~f & ~pos).sum()).items()}
    r["prevalence"] = float(pos.mean()) if prevalence is None else float(prevalence)
    if prevalence is not None:
        r["ppv"], r["npv"] = at_prevalence(r["sensitivity"], r["specificity"], prevalence)
    return r


def _group_order(grouping: str, labels) -> list[str]:
    """A grouping's groups in reading order: skin tones lightest first, age bands youngest first,
    others alphabetically."""
    if grouping == "skin_tone":
        from derm_core.explain.skin_tone import order
        return order(np.unique(labels))
    if grouping == "age_band":       # youngest first, "unknown" last
        from derm_core.evaluate.evaluation import AGE_BANDS
        rank = {name: k for k, (_, _, name) in enumerate(AGE_BANDS)}
        return sorted(np.unique(labels), key=lambda g: (rank.get(g, len(rank)), g))
    return sorted(np.unique(labels))


def wilson_text(k, n, level: float = 0.95) -> list:
    """Wilson intervals of k successes in n trials as "0.55–0.78" (None where n is 0): small
    subgroups (a rare skin tone) get the wide interval they deserve."""
    from scipy import stats
    out = []
    for a, b in zip(np.asarray(k, int), np.asarray(n, int)):
        ci = stats.binomtest(int(a), int(b)).proportion_ci(level, method="wilson") if b else None
        out.append(None if ci is None else f"{ci.low:.2f}–{ci.high:.2f}")
    return out


def subgroup_table(ev: EvalSet, thresholds: Thresholds, target: str) -> pd.DataFrame:
    """Per subgroup (sex, age band, body site, skin tone when given): size, accuracy, balanced
    accuracy, macro AUC, and sensitivity/specificity/PPV/NPV/F1 of ``target`` at these thresholds,
    with Wilson 95% intervals for the sensitivity and specificity.

    Threshold-dependent columns are counted with ``np.bincount`` over group codes (no loops over images).
    """
    if not ev.groups:
        return pd.DataFrame(columns=["grouping", "group", "n", "n_positive", "accuracy", "balanced_accuracy",
                                     "macro_auc", "sensitivity", "specificity", "ppv", "npv", "f1",
                                     "sensitivity_95ci", "specificity_95ci"])
    pos = ev.target_truth_score(target)[0]
    f = flags(ev, thresholds)[target]
    frames = []
    for gname in ev.groups:
        static, codes = ev._group_static[gname], ev._group_codes[gname]
        k = len(static)

        def count(m, codes=codes, k=k):
            return np.bincount(codes[m], minlength=k)
        tp, fp, fn, tn = count(f & pos), count(f & ~pos), count(~f & pos), count(~f & ~pos)
        frames.append(pd.DataFrame({"grouping": gname, **static.to_dict("list"), "n_positive": tp + fn,
                                    **rates(tp, fp, fn, tn), "sensitivity_95ci": wilson_text(tp, tp + fn),
                                    "specificity_95ci": wilson_text(tn, tn + fp)}))
    cols = ["grouping", "group", "n", "n_positive", "accuracy", "balanced_accuracy", "macro_auc",
            "sensitivity", "specificity", "ppv", "npv", "f1", "sensitivity_95ci", "specificity_95ci"]
    return pd.concat(frames, ignore_index=True)[cols]


def summary(ev: EvalSet, thresholds: Thresholds) -> dict:
    """The metrics a threshold profile records: headline plus every target's operating point."""
    df = operating_table(ev, thresholds)
    keep = ["n", "threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "auc", "auc_low", "auc_high"]

    def clean(v):
        v = v.item() if hasattr(v, "item") else v
        return None if isinstance(v, float) and math.isnan(v) else v
    rows = {r["target"]: {k: clean(r[k]) for k in keep} for _, r in df.iterrows()}
    return {**{k: clean(v) for k, v in ev.headline.items()},
            "classes": {t: v for t, v in rows.items() if not t.startswith(TIER_PREFIX)},
            "tiers": {t[len(TIER_PREFIX):]: v for t, v in rows.items() if t.startswith(TIER_PREFIX)}}


# ---------------------------------------------------------------------- presets
def _snap(value: float, step: float | None, direction: str) -> float:
    """Round a threshold to the slider step without breaking the preset's promise:
    ``down`` keeps sensitivity (lower threshold), ``up`` keeps specificity, ``nearest`` otherwise."""
    value = float(min(max(value, 0.0), 1.0))
    if not step:
        return value
    q = value / step
    q = math.floor(q + 1e-9) if direction == "down" else math.ceil(q - 1e-9) if direction == "up" else round(q)
    return float(min(max(round(q * step, 10), 0.0), 1.0))


def preset(ev: EvalSet, kind: str, target: float = 0.95, step: float | None = 0.001,
           fallback: Thresholds | None = None) -> Thresholds:
    """A one-click operating point computed on this evaluation set.

    Args:
        kind: ``"youden"`` — Youden-optimal threshold for every class and tier;
            ``"screening"`` — every tier above the lowest (and every class in such a tier)
            flagged with sensitivity >= ``target`` (fewest false alarms that achieve it),
            other classes at Youden; ``"specific"`` — every class and tier at specificity
            >= ``target``.
        step: slider step to snap to (rounded in the direction that keeps the promise).
        fallback: thresholds used where a target has no positives or negatives (default 0.5).
    """
    if kind not in PRESETS:
        raise ValueError(f"unknown preset {kind!r}; choose one of {PRESETS}")
    tax = ev.taxonomy
    fb = fallback or Thresholds({c: 0.5 for c in tax.classes}, {t: 0.5 for t in ev.referral_tiers})
    urgent = set(ev.referral_tiers)

    def one(t: str) -> float:
        pos, score = ev.target_truth_score(t)
        default = _target_threshold(ev, fb, t)
        if not 0 < pos.sum() < len(pos):
            return default
        is_urgent = t.startswith(TIER_PREFIX) or tax.class_tier[t] in urgent
        if kind == "screening" and is_urgent:
            return _snap(M.threshold_for_sensitivity(pos.astype(int), score, target), step, "down")
        if kind == "specific":
            return _snap(threshold_for_specificity(pos.astype(int), score, target), step, "up")
        return _snap(ev.youden[t], step, "nearest")

    name = {"youden": "Youden-optimal", "screening": f"screening (sensitivity >= {target:.0%})",
            "specific": f"high specificity (>= {target:.0%})"}[kind]
    return Thresholds({c: one(c) for c in tax.classes}, {t: one(tier_target(t)) for t in ev.referral_tiers}, name)


def refit(ev: EvalSet, tier_sensitivity: dict[str, float] | None = None) -> Thresholds:
    """What training would pick on this set (Youden classes, tier sensitivity targets): :func:`fit_thresholds`."""
    return fit_thresholds(ev.probs, ev.y, ev.taxonomy, tier_sensitivity, name="refit on this set")
