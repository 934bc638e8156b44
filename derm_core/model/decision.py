"""The two decision rules, named wherever a diagnosis or a number is shown.

* ``most_likely`` -- the most likely diagnosis: argmax of the calibrated probabilities.
  It maximises accuracy on photos with the training set's class mix; ``accuracy`` and
  ``balanced_accuracy`` in ``report.json`` (and the ISIC CSV's argmax) use it.
* ``balanced`` -- prior-corrected: argmax of ``log p - tau * log prior`` (Menon et al.
  2021). At ``tau = 1`` every class counts as equally common, which trades accuracy for
  recall of the rare classes; ``tau`` is chosen on the validation split for the best
  balanced accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derm_core.evaluate import metrics as M

RULES = {"most_likely": "most likely diagnosis", "balanced": "balanced (prior-corrected)"}
TAU_GRID = np.round(np.linspace(0.0, 1.5, 31), 3)


def class_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Training-set class frequencies (add-one smoothed, so no class has prior 0)."""
    return (np.bincount(np.asarray(y, dtype=int), minlength=n_classes) + 1.0) / (len(y) + n_classes)


@dataclass(frozen=True)
class BalancedRule:
    tau: float
    prior: tuple[float, ...]

    def scores(self, probs: np.ndarray) -> np.ndarray:
        return np.log(np.clip(probs, 1e-12, None)) - self.tau * np.log(np.asarray(self.prior))

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row of calibrated probabilities."""
        return self.scores(np.atleast_2d(probs)).argmax(1)

    def to_dict(self) -> dict:
        return {"tau": self.tau, "prior": list(self.prior)}

    @classmethod
    def from_dict(cls, d: dict) -> BalancedRule:
        return cls(float(d["tau"]), tuple(float(p) for p in d["prior"]))

    @classmethod
    def fit(cls, probs: np.ndarray, y: np.ndarray, prior: np.ndarray) -> BalancedRule:
        """The tau of :data:`TAU_GRID` with the best balanced accuracy on (validation) ``probs``;
        the smallest such tau on ties, so accuracy is given up no more than needed."""
        best = max(TAU_GRID, key=lambda t: (M.balanced_accuracy_score(y, cls(float(t), tuple(prior)).predict(probs)), -t))
        return cls(float(best), tuple(float(p) for p in prior))

    def report(self, y: np.ndarray, probs: np.ndarray, classes) -> dict:
        """The ``balanced_rule`` block of report.json."""
        pred = self.predict(probs)
        return {"tau": self.tau, "accuracy": M.accuracy_score(y, pred),
                "balanced_accuracy": M.balanced_accuracy_score(y, pred),
                "per_class_recall": {c: (M.sensitivity_score((y == i).astype(int), (pred == i).astype(int))
                                         if (y == i).any() else None) for i, c in enumerate(classes)}}
