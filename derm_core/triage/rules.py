"""From calibrated probabilities to a differential diagnosis and a risk tier (pure logic).

* Differential (Han et al. 2018): every class whose probability reaches its own operating
  threshold, ranked; if none does, the most probable class flagged as low confidence.
* Risk tier (Zhao et al. 2019): tiers are checked from the most urgent down; a tier is
  assigned when the summed probability of its classes *and all more urgent classes*
  reaches that tier's threshold, otherwise the least urgent tier applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from derm_core.data.taxonomy import Taxonomy
from derm_core.evaluate.metrics import threshold_for_sensitivity, youden_threshold


@dataclass(frozen=True)
class Thresholds:
    """An operating point: one threshold per class and one per tier above the lowest."""

    classes: dict[str, float]
    tiers: dict[str, float]
    name: str = "model default"

    def check(self, taxonomy: Taxonomy) -> None:
        """Refuse thresholds made for other classes or tiers."""
        if set(self.classes) != set(taxonomy.classes):
            raise ValueError(f"thresholds are for classes {sorted(self.classes)}, the model has {sorted(taxonomy.classes)}")
        expected = set(taxonomy.tier_names[1:])
        if set(self.tiers) != expected:
            raise ValueError(f"tier thresholds are for {sorted(self.tiers)}, the taxonomy needs {sorted(expected)}")
        for k, v in {**self.classes, **self.tiers}.items():
            if not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"threshold for {k!r} is {v}; it must be between 0 and 1")


@dataclass(frozen=True)
class TriageResult:
    probs: dict[str, float]
    differential: list[tuple[str, float]]
    low_confidence: bool
    tier: str
    action: str
    tier_probs: dict[str, float]
    thresholds: str = ""
    notes: list[str] = field(default_factory=list)
    out_of_scope: bool | None = None   # None: the model has no out-of-scope detector
    ood_score: float | None = None
    most_likely: str = ""              # argmax of the calibrated probabilities (decision.RULES)
    balanced: str | None = None        # the prior-corrected rule's class; None when the model has no such rule

    def to_dict(self) -> dict:
        return {"probabilities": self.probs, "differential": [{"class": c, "probability": p} for c, p in self.differential],
                "most_likely": self.most_likely, "balanced": self.balanced,
                "low_confidence": self.low_confidence, "risk_tier": self.tier, "action": self.action,
                "tier_probabilities": self.tier_probs, "thresholds": self.thresholds, "notes": self.notes,
                "out_of_scope": self.out_of_scope, "out_of_scope_score": self.ood_score}


def tier_scores(probs: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """(N, n_tiers) summed probability of each tier's classes, tiers ordered least to most urgent."""
    probs = np.atleast_2d(probs)
    return np.stack([probs[:, taxonomy.tier_members(t)].sum(1) for t in taxonomy.tier_names], axis=1)


def tier_at_or_above(probs: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """(N, n_tiers) probability that the case is at tier k or a more urgent one: the score the
    tier thresholds apply to (column 0 is 1)."""
    return np.cumsum(tier_scores(probs, taxonomy)[:, ::-1], axis=1)[:, ::-1]


def assign_tiers(probs: np.ndarray, taxonomy: Taxonomy, tier_thresholds: dict[str, float]) -> np.ndarray:
    """(N,) tier index (0 = least urgent) for each row of probabilities."""
    at_or_above = tier_at_or_above(probs, taxonomy)
    out = np.zeros(len(at_or_above), dtype=int)
    for k in range(1, len(taxonomy.tier_names)):  # later (more urgent) tiers overwrite
        out[at_or_above[:, k] >= tier_thresholds[taxonomy.tier_names[k]]] = k
    return out


def true_tiers(y_true: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    names = taxonomy.tier_names
    return np.array([names.index(taxonomy.class_tier[taxonomy.classes[i]]) for i in np.asarray(y_true)], dtype=int)


def triage(probs: np.ndarray, taxonomy: Taxonomy, thresholds: Thresholds) -> TriageResult:
    """Differential diagnosis and risk tier of one image's calibrated probabilities."""
    probs = np.asarray(probs, dtype=float).ravel()
    classes = taxonomy.classes
    passing = [(c, float(p)) for c, p in zip(classes, probs) if p >= thresholds.classes[c]]
    low = not passing
    if low:
        i = int(np.argmax(probs))
        passing = [(classes[i], float(probs[i]))]
    passing.sort(key=lambda cp: -cp[1])
    tier = taxonomy.tier_names[int(assign_tiers(probs[None], taxonomy, thresholds.tiers)[0])]
    ts = tier_scores(probs[None], taxonomy)[0]
    return TriageResult(
        probs={c: float(p) for c, p in zip(classes, probs)},
        differential=passing, low_confidence=low, tier=tier, action=taxonomy.tiers[tier].action,
        tier_probs={t: float(s) for t, s in zip(taxonomy.tier_names, ts)}, thresholds=thresholds.name,
        most_likely=classes[int(np.argmax(probs))],
    )


DEFAULT_TIER_TARGET = 0.90   # share of the cases at a referral tier or above to flag at least that urgent
DEFAULT_TIER_SENSITIVITY = {"high-risk": DEFAULT_TIER_TARGET, "dangerous": DEFAULT_TIER_TARGET}


def fit_thresholds(probs: np.ndarray, y_true: np.ndarray, taxonomy: Taxonomy,
                   tier_sensitivity: dict[str, float] | None = None, name: str = "Youden (validation)") -> Thresholds:
    """Youden-optimal class thresholds and tier thresholds meeting target sensitivities.

    Args:
        tier_sensitivity: per non-lowest tier, the share of cases at that tier or above that
            must be flagged at least that urgent (default :data:`DEFAULT_TIER_SENSITIVITY`).
    """
    y_true = np.asarray(y_true)
    cls = {}
    for i, c in enumerate(taxonomy.classes):
        pos = y_true == i
        cls[c] = youden_threshold(pos.astype(int), probs[:, i]) if 0 < pos.sum() < len(pos) else 0.5
    tiers = {}
    tt = true_tiers(y_true, taxonomy)
    at_or_above = tier_at_or_above(probs, taxonomy)
    for k, t in enumerate(taxonomy.tier_names):
        if k == 0:
            continue
        target = (tier_sensitivity or {}).get(t, DEFAULT_TIER_TARGET)
        pos = (tt >= k).astype(int)
        tiers[t] = threshold_for_sensitivity(pos, at_or_above[:, k], target) if pos.any() else 0.5
    return Thresholds(cls, tiers, name)
