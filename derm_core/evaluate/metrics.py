"""The papers' evaluation metrics as pure functions (sklearn argument order: y_true first).

Thin, tested wrappers over scikit-learn where it has the metric; what it lacks
(sensitivity/specificity at a threshold, Youden's J, ECE, top-k) is written here once.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

N_BOOT = 500


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} items but y_score has {len(y_score)}")
    if len(y_true) == 0:
        raise ValueError("no samples")
    return y_true, y_score


def sensitivity_score(y_true, y_pred) -> float:
    """Recall of the positive class (binary 0/1 arrays); NaN when there are no positives."""
    y_true, y_pred = _check(y_true, y_pred)
    pos = y_true == 1
    return float(np.mean(y_pred[pos] == 1)) if pos.any() else float("nan")


def specificity_score(y_true, y_pred) -> float:
    """Recall of the negative class; NaN when there are no negatives."""
    y_true, y_pred = _check(y_true, y_pred)
    neg = y_true == 0
    return float(np.mean(y_pred[neg] == 0)) if neg.any() else float("nan")


def sens_spec_at(y_true, y_score, *, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``y_score >= threshold`` counts as positive."""
    y_true, y_score = _check(y_true, y_score)
    pred = (y_score >= threshold).astype(int)
    return sensitivity_score(y_true, pred), specificity_score(y_true, pred)


def auc_score(y_true, y_score) -> float:
    """ROC AUC of a binary problem; NaN (not an error) when only one class is present."""
    y_true, y_score = _check(y_true, y_score)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(skm.roc_auc_score(y_true, y_score))


def youden_threshold(y_true, y_score) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (Han et al. 2018)."""
    y_true, y_score = _check(y_true, y_score)
    if len(np.unique(y_true)) < 2:
        raise ValueError("Youden's threshold needs both positive and negative samples")
    fpr, tpr, thr = skm.roc_curve(y_true, y_score)
    j = tpr - fpr
    i = int(np.argmax(j[1:]) + 1)  # thr[0] is +inf
    return float(min(thr[i], 1.0))


def threshold_for_sensitivity(y_true, y_score, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (fewest false alarms)."""
    y_true, y_score = _check(y_true, y_score)
    pos = np.sort(y_score[y_true == 1])
    if len(pos) == 0:
        raise ValueError("no positive samples to set a sensitivity target on")
    k = int(np.floor((1.0 - target) * len(pos) + 1e-9))  # number of positives we may miss
    return float(pos[min(k, len(pos) - 1)])


def accuracy_score(y_true, y_pred) -> float:
    return float(skm.accuracy_score(*_check(y_true, y_pred)))


def balanced_accuracy_score(y_true, y_pred) -> float:
    return float(skm.balanced_accuracy_score(*_check(y_true, y_pred)))


def top_k_accuracy_score(y_true, probs, k: int) -> float:
    """Share of samples whose true class is among the ``k`` most probable."""
    y_true, probs = _check(y_true, probs)
    return float(skm.top_k_accuracy_score(y_true, probs, k=k, labels=np.arange(probs.shape[1])))


def expected_calibration_error(y_true, probs, n_bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins (Guo et al. 2017)."""
    y_true, probs = _check(y_true, probs)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y_true).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_curve(y_true, probs, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram."""
    y_true, probs = _check(y_true, probs)
    conf, correct = probs.max(1), (probs.argmax(1) == y_true).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        if m.any():
            out["confidence"].append(float(conf[m].mean()))
            out["accuracy"].append(float(correct[m].mean()))
            out["count"].append(int(m.sum()))
    return out


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    return skm.confusion_matrix(*_check(y_true, y_pred), labels=np.arange(n_classes))


def bootstrap_counts(n: int, n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> np.ndarray:
    """(n_boot, n) multiplicities of each image in each bootstrap resample.

    With ``clusters`` (one lesion id per image) whole lesions are resampled: the images of
    one lesion are not independent, so resampling images would make intervals too narrow.
    Every image then takes its lesion's multiplicity."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float32)
    _, code = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    k = int(code.max()) + 1
    return rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float32)[:, code]


def bootstrap_auc(y_true, y_score, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95,
                  counts: np.ndarray | None = None) -> tuple[float, float, float]:
    """(AUC, lower, upper): ROC AUC with a percentile bootstrap confidence interval.

    Each resample's AUC is the weighted Mann-Whitney statistic of the original images with
    their resample multiplicities as weights, so the scores are sorted once, not per resample
    (ties count one half). NaN when one class is absent. ``counts`` may pass
    :func:`bootstrap_counts` to share one set of resamples between targets.
    """
    y_true, y_score = np.asarray(y_true).astype(bool), np.asarray(y_score, dtype=float)
    auc = auc_score(y_true.astype(int), y_score)
    if math.isnan(auc):
        return auc, float("nan"), float("nan")
    if counts is None:
        counts = bootstrap_counts(len(y_true), n_boot, seed)
    aucs = bootstrap_auc_samples(y_true, y_score, counts)
    lo, hi = np.nanpercentile(aucs, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return auc, float(lo), float(hi)


def bootstrap_auc_samples(y_true, y_score, counts: np.ndarray) -> np.ndarray:
    """The AUC of every resample (rows of ``counts``); NaN where a resample lacks a class."""
    y_true, y_score = np.asarray(y_true).astype(bool), np.asarray(y_score, dtype=float)
    order = np.argsort(y_score, kind="stable")
    s, p = y_score[order], y_true[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])          # tie groups, in ascending score
    w = counts[:, order]
    w_pos = np.add.reduceat(w * p, starts, axis=1)
    w_neg = np.add.reduceat(w * ~p, starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg                       # negative weight strictly below each group
    u = (w_pos * (below + 0.5 * w_neg)).sum(1, dtype=np.float64)
    denom = w_pos.sum(1, dtype=np.float64) * w_neg.sum(1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, u / denom, np.nan)


def weighted_rate(hit: np.ndarray, among: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample: the weighted share of ``hit`` among the rows where ``among`` holds."""
    den = counts @ among.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (counts @ (hit & among).astype(np.float64)) / den, np.nan)


def interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap values; None when every resample was undefined."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return [float(lo), float(hi)]
