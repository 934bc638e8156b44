"""From calibrated probabilities to a differential diagnosis and a risk tier (pure logic).

* Differential (Han et al. 2018): every class whose probability reaches its own operating
  threshold, ranked; if none does, the most probable class flagged as low confidence.
* Risk tier (Zhao et al. 2019): tiers are checked from the most urgent down; a tier is
  assigned when the summed probability of its classes *and all more urgent classes*
  reaches that tier's threshold, otherwise the least urgent tier applies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

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
    withheld: str | None = None        # why no triage is given (an out-of-scope photo); None: a normal result
    tier_reason: str = ""              # the score and threshold that decided the tier (:func:`explain_tier`)

    @property
    def anyway_warning(self) -> str:
        """What the page and the report say above the tier of a photo triaged although the
        out-of-scope check flagged it ("" for an in-scope photo or a withheld result)."""
        if not self.out_of_scope or self.withheld:
            return ""
        return ("Triaged anyway: the out-of-scope check flagged this photo as unlike the dermatoscopic lesion photos "
                "the model was trained on, so the tier and differential below may mean nothing.")

    @property
    def what_to_do(self) -> str:
        """The tier's action without the tier's own name in front ("High risk: refer ..." after
        "high-risk" says the tier twice): what a banner shows after the tier."""
        said = "[- ]".join(re.escape(w) for w in self.tier.split("-"))
        action = re.sub(rf"^{said}\s*:\s*", "", self.action, flags=re.I) if self.tier else self.action
        return action[:1].upper() + action[1:]

    def withhold(self, why: str) -> "TriageResult":
        """The same photo with nothing clinical left: no probabilities, differential, tier or action."""
        return replace(self, probs={}, differential=[], low_confidence=False, tier="", action="", tier_probs={},
                       most_likely="", balanced=None, withheld=why, tier_reason="")

    def to_dict(self) -> dict:
        if self.withheld:
            return {"withheld": self.withheld, "probabilities": None, "differential": [], "most_likely": None,
                    "balanced": None, "low_confidence": None, "risk_tier": None, "tier_reason": None, "action": None,
                    "tier_probabilities": None, "thresholds": self.thresholds, "notes": self.notes,
                    "out_of_scope": self.out_of_scope, "out_of_scope_score": self.ood_score}
        return {"withheld": None, "probabilities": self.probs, "differential": [{"class": c, "probability": p} for c, p in self.differential],
                "most_likely": self.most_likely, "balanced": self.balanced,
                "low_confidence": self.low_confidence, "risk_tier": self.tier, "tier_reason": self.tier_reason,
                "action": self.action,
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


def _percent_pair(a: float, b: float) -> tuple[str, str]:
    """Two probabilities as percentages, with enough decimals that unequal values never print equal."""
    for d in (1, 2, 3, 4):
        sa, sb = f"{a:.{d}%}", f"{b:.{d}%}"
        if sa != sb or a == b:
            break
    return sa, sb


def tier_score_name(taxonomy: Taxonomy, k: int) -> str:
    """The name of the score tier ``k``'s threshold applies to: ``P(high-risk or worse)``, or
    ``P(dangerous)`` for the most urgent tier."""
    t = taxonomy.tier_names[k]
    return f"P({t})" if k == len(taxonomy.tier_names) - 1 else f"P({t} or worse)"


def explain_tier(probs, taxonomy: Taxonomy, tier_thresholds: dict[str, float]) -> str:
    """One line saying which score and threshold decided the tier, e.g. ``P(high-risk or worse)
    10.5% ≥ threshold 7.9%: high-risk (P(dangerous) 2.0% < threshold 5.0%)``; for the least
    urgent tier, that no tier threshold was reached, with the values.

    The same arithmetic as :func:`assign_tiers` (tiers checked from the most urgent; a score
    exactly at its threshold reaches it). ``probs``: calibrated class probabilities, an array in
    the taxonomy's class order or a dict by class."""
    p = np.asarray([probs[c] for c in taxonomy.classes] if isinstance(probs, dict) else probs, dtype=float).ravel()
    at = tier_at_or_above(p[None], taxonomy)[0]
    names = taxonomy.tier_names
    k = int(assign_tiers(p[None], taxonomy, tier_thresholds)[0])

    def compare(j: int) -> str:
        thr = float(tier_thresholds[names[j]])
        score, limit = _percent_pair(float(at[j]), thr)
        return f"{tier_score_name(taxonomy, j)} {score} {'≥' if at[j] >= thr else '<'} threshold {limit}"

    not_reached = [compare(j) for j in range(len(names) - 1, k, -1)]   # the more urgent tiers, checked first
    if k == 0:
        return f"No tier threshold reached ({'; '.join(not_reached)}): {names[0]}"
    return f"{compare(k)}: {names[k]}" + (f" ({'; '.join(not_reached)})" if not_reached else "")


def describe_tier_rule(taxonomy: Taxonomy, tier_thresholds: dict[str, float]) -> str:
    """What the tier chart's bars are and how the tier follows from them (a caption)."""
    names = taxonomy.tier_names
    limits = ", ".join(f"{tier_score_name(taxonomy, k)} ≥ {float(tier_thresholds[names[k]]):.1%}: {names[k]}"
                       for k in range(len(names) - 1, 0, -1))
    return (f"Bars: the probability of each tier (the summed probability of its classes). The tier is not simply "
            f"the tallest bar: tiers are checked from the most urgent, and a tier applies when the probability of it or a "
            f"more urgent tier reaches its threshold ({limits}; otherwise {names[0]}).")


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
        most_likely=classes[int(np.argmax(probs))], tier_reason=explain_tier(probs, taxonomy, thresholds.tiers),
    )


def biopsy_class(result: TriageResult, taxonomy: Taxonomy) -> str:
    """The class whose LIME map places the biopsy site: the most urgent class of the differential,
    the more probable one within a tier. A biopsy is taken for the lesion's most serious possible
    diagnosis: with a nevus at 60% and a melanoma at 30% both in the differential, the site is
    where the evidence for melanoma is strongest, not for the nevus."""
    rank = {c: taxonomy.tiers[taxonomy.class_tier[c]].rank for c in taxonomy.classes}
    return max(result.differential, key=lambda cp: (rank[cp[0]], cp[1]))[0]


def biopsy_caveat(result: TriageResult, taxonomy: Taxonomy) -> str:
    """What a biopsy site needs beside it when the tier does not call for a biopsy (the least
    urgent tier, "monitor"): where one would be taken if it is chosen clinically. "" otherwise."""
    if result.tier != taxonomy.tier_names[0]:
        return ""
    return (f"The tier is {result.tier}: it does not call for a biopsy. The site shows where one would be taken if "
            "it is chosen clinically.")


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
