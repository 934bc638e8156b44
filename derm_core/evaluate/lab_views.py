"""What the Model lab page shows, computed here so the page only lays it out.

The t-SNE map's colours and hover texts at the current thresholds, the runs table, and the
small number formats and clamps the page's widgets need.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from derm_core.triage.rules import Thresholds, assign_tiers

COLOUR_BY = ("true class", "predicted class", "risk tier", "correct")
CORRECT_COLOURS = {"correct": "#2e7d32", "wrong": "#c62828"}
PREVALENCE_RANGE = (0.1, 99.9)    # percent: the prevalence input's range


# ---------------------------------------------------------------------- t-SNE map
@dataclass(frozen=True, eq=False)
class EmbeddingColours:
    """One category, and one hover text, per image of an EvalSet, and a colour per category."""

    categories: np.ndarray        # (N,) str: the category each point is coloured by
    colours: dict[str, str]       # category -> colour, in legend order
    hover: np.ndarray             # (N,) str: image id, true and predicted class (probability), assigned tier
    tiers: np.ndarray             # (N,) str: the risk tier assigned at the thresholds


def embedding_colours(ev, thresholds: Thresholds, colour_by: str,
                      class_colours: dict[str, str] | None = None) -> EmbeddingColours:
    """The t-SNE map's colouring of an :class:`~derm_core.evaluate.operating.EvalSet` at ``thresholds``.

    Args:
        colour_by: one of :data:`COLOUR_BY`: the recorded class, the most probable class, the
            risk tier assigned at the tier thresholds, or whether the most probable class is right.
        class_colours: class -> colour (default :func:`derm_core.evaluate.figures.target_colours`).

    Raises:
        ValueError: an unknown ``colour_by``.
    """
    if colour_by not in COLOUR_BY:
        raise ValueError(f"colour_by must be one of {COLOUR_BY}, got {colour_by!r}")
    tax = ev.taxonomy
    if class_colours is None:
        from derm_core.evaluate.figures import target_colours
        class_colours = target_colours(ev)
    classes = np.array(ev.classes)
    tiers = np.array(tax.tier_names)[assign_tiers(ev.probs, tax, thresholds.tiers)]
    if colour_by in ("true class", "predicted class"):
        cats = classes[ev.y if colour_by == "true class" else ev.pred]
        colours = {c: class_colours[c] for c in ev.classes}
    elif colour_by == "risk tier":
        cats, colours = tiers, {t: tax.tiers[t].colour for t in tax.tier_names}
    else:
        cats, colours = np.where(ev.pred == ev.y, "correct", "wrong"), dict(CORRECT_COLOURS)
    hover = np.array([f"{i}<br>true {classes[y]} · predicted {classes[p]} ({pr:.0%})<br>tier {t}"
                      for i, y, p, pr, t in zip(ev.image_ids, ev.y, ev.pred, ev.probs.max(1), tiers)], dtype=str)
    return EmbeddingColours(cats.astype(str), colours, hover, tiers.astype(str))


def selected_rows(points, limit: int = 12) -> list[int]:
    """The EvalSet rows of the points selected on the map (plotly's selection points, whose
    ``customdata`` is the row, alone or as a one-element list), at most ``limit``."""
    rows = []
    for p in points or []:
        i = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(i, (list, tuple)):
            i = i[0] if i else None
        if i is not None:
            rows.append(int(i))
    return rows[:limit]


# ---------------------------------------------------------------------- runs
def runs_table(runs) -> pd.DataFrame:
    """One row per run (:func:`derm_core.fit.jobs.list_runs`): state, architecture, epochs, the
    validation and test balanced accuracy and macro AUC from its model card, last change."""
    rows = []
    for r in runs:
        m = r.card.metrics if r.card else {}
        rows.append({"run": r.name, "state": r.status.describe(),
                     "architecture": r.card.arch if r.card else (r.status.request or {}).get("arch"),
                     # a run folder restored without its progress file: the card's record
                     "epochs": len(r.status.history) or (r.card.training.epochs_run
                                                         if r.card and r.card.training else None),
                     "val balanced acc.": m.get("val", {}).get("balanced_accuracy"),
                     "val macro AUC": m.get("val", {}).get("macro_auc"),
                     "test balanced acc.": m.get("test", {}).get("balanced_accuracy"),
                     "test macro AUC": m.get("test", {}).get("macro_auc"),
                     "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified))})
    return pd.DataFrame(rows)


def card_summary(card) -> dict:
    """A run's model card (JSON) as shown: without the per-epoch history and the taxonomy (shown elsewhere)."""
    out = card.to_json()
    training = dict(out.get("training", {}))
    training.pop("history", None)
    out["training"] = training
    out.pop("taxonomy", None)
    return out


# ---------------------------------------------------------------------- tables
UNDEFINED = "–"
UNDEFINED_FOOTNOTE = (f"{UNDEFINED}: not defined for this {{what}}: no images with the condition (sensitivity), none "
                     "without it (specificity), none flagged (PPV) or none cleared (NPV), or a single class among "
                     "its images (macro AUC); most often one with few images.")


HEADER_WORDS = {"ppv": "PPV", "npv": "NPV", "f1": "F1", "auc": "AUC", "ece": "ECE", "mcnemar": "McNemar",
                "95ci": "95% CI", "sd": "SD"}


def header(name) -> str:
    """A column or group name as a person writes it: ``sensitivity_95ci`` -> "sensitivity 95% CI"."""
    return " ".join(HEADER_WORDS.get(w, w) for w in str(name).split("_"))


def with_interval(values, intervals, decimals: int = 3) -> list[str]:
    """Each value with its interval text, "0.667 (0.55–0.78)"; :data:`UNDEFINED` where the value is."""
    out = []
    for v, ci in zip(values, intervals):
        undefined = v is None or (isinstance(v, float) and math.isnan(v))
        out.append(UNDEFINED if undefined else f"{v:.{decimals}f}" + (f" ({ci})" if ci else ""))
    return out


def display_table(df: pd.DataFrame, decimals: int = 3) -> tuple[pd.DataFrame, list[str], bool]:
    """``df`` as shown: every float column as text with ``decimals`` decimals (seconds with one), an undefined value
    (NaN or None: e.g. a sensitivity without positives) as :data:`UNDEFINED`, never "None".

    Returns the table, the columns turned into text (to align right) and whether any value was undefined."""
    out, cols, undefined = df.copy(), [], False
    for c in df.columns:
        col = df[c]
        if col.dtype.kind == "f":
            values = col
        elif (col.dtype == object or pd.api.types.is_string_dtype(col)) and col.isna().any():   # None among them
            values = pd.to_numeric(col, errors="coerce")
            if values.notna().sum() != col.notna().sum():   # text (e.g. an interval): only the gaps filled
                out[c] = col.where(col.notna(), UNDEFINED)
                undefined = True
                continue
        else:
            continue
        missing = values.isna()
        undefined |= bool(missing.any())
        d = 1 if "seconds" in str(c) else decimals      # times to a tenth of a second, not a millisecond
        out[c] = [UNDEFINED if m else f"{v:.{d}f}" for v, m in zip(values, missing)]
        cols.append(c)
    return out, cols, undefined


# ---------------------------------------------------------------------- numbers
def pct(v) -> str:
    """A share as a percentage with one decimal; "—" when missing (None or NaN)."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"


def duration(seconds: float | None) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour; "—" when unknown."""
    if seconds is None:
        return "—"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def unit_interval(v: float) -> float:
    """``v`` clamped to [0, 1] (a threshold slider's range)."""
    return min(1.0, max(0.0, float(v)))


def prevalence_percent(prevalence: float) -> float:
    """A prevalence (0..1) as the prevalence input's starting value: percent, one decimal,
    within :data:`PREVALENCE_RANGE`."""
    low, high = PREVALENCE_RANGE
    return min(high, max(low, round(float(prevalence) * 100, 1)))
