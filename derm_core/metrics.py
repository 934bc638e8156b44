"""The papers' evaluation metrics as pure functions (sklearn argument order: y_true first).

Thin, tested wrappers over scikit-learn where it has the metric; what it lacks
(sensitivity/specificity at a threshold, Youden's J, ECE, top-k) is written here once.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


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
