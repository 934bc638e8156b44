"""Run a model over a dataset table and report the seed papers' metrics.

Predictions are computed once (:meth:`derm_core.model.predictor.Predictor.predict_table`);
:func:`build_report` only re-bins them, so threshold changes are cheap. The report's keys are the contract of
``python -m derm_core evaluate`` and of the Model lab page.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from derm_core.data.taxonomy import Taxonomy
from derm_core.evaluate import metrics as M
from derm_core.model.calibration import softmax
from derm_core.model.decision import BalancedRule
from derm_core.triage.rules import Thresholds, assign_tiers, tier_scores, true_tiers

AGE_BANDS = [(0, 30, "<30"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 200, "70+")]


def _class_block(y_true, probs, thresholds: Thresholds, taxonomy: Taxonomy) -> dict:
    pred = probs.argmax(1)
    per = {}
    for i, c in enumerate(taxonomy.classes):
        pos = (y_true == i).astype(int)
        t = thresholds.classes[c]
        sens, spec = M.sens_spec_at(pos, probs[:, i], threshold=t)
        per[c] = {"n": int(pos.sum()), "auc": M.auc_score(pos, probs[:, i]), "threshold": float(t),
                  "sensitivity": sens, "specificity": spec,
                  "sensitivity_argmax": M.sensitivity_score(pos, (pred == i).astype(int)),
                  "specificity_argmax": M.specificity_score(pos, (pred == i).astype(int))}
    return per


def _tier_block(y_true, probs, thresholds: Thresholds, taxonomy: Taxonomy) -> dict:
    tt, pt, ts = true_tiers(y_true, taxonomy), assign_tiers(probs, taxonomy, thresholds.tiers), tier_scores(probs, taxonomy)
    out = {}
    for k, t in enumerate(taxonomy.tier_names):
        pos = (tt == k).astype(int)
        flagged = (pt >= k).astype(int)
        at_or_above = (tt >= k).astype(int)
        out[t] = {"n": int(pos.sum()), "auc": M.auc_score(pos, ts[:, k]),
                  "threshold": thresholds.tiers.get(t),
                  "sensitivity": M.sensitivity_score(pos, (pt == k).astype(int)),
                  "specificity": M.specificity_score(pos, (pt == k).astype(int)),
                  # referral view: cases at this tier or above flagged at least this urgent
                  "sensitivity_at_or_above": M.sensitivity_score(at_or_above, flagged) if k else None,
                  "specificity_at_or_above": M.specificity_score(at_or_above, flagged) if k else None}
    return out


def _nanmean(values) -> float:
    v = np.array([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    return float(v.mean()) if len(v) else float("nan")


def headline_metrics(y_true, probs, aucs=None) -> dict:
    """Threshold-free headline of one set of predictions: the numbers of the model card, the
    report, the Model lab and each epoch's validation. ``aucs``: per-class one-vs-rest AUCs
    when already computed (the macro AUC is their mean over classes present)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    pred = probs.argmax(1)
    n_classes = probs.shape[1]
    if aucs is None:
        aucs = [M.auc_score((y_true == i).astype(int), probs[:, i]) for i in range(n_classes)]
    with warnings.catch_warnings():   # small sets: a predicted class may be absent from the labels
        warnings.simplefilter("ignore", UserWarning)
        balanced = M.balanced_accuracy_score(y_true, pred)
    return {"n_images": int(len(y_true)), "accuracy": M.accuracy_score(y_true, pred), "balanced_accuracy": balanced,
            "top2_accuracy": M.top_k_accuracy_score(y_true, probs, 2) if n_classes > 2 else 1.0,
            "top3_accuracy": M.top_k_accuracy_score(y_true, probs, 3) if n_classes > 3 else 1.0,
            "macro_auc": _nanmean(aucs)}


def summary_metrics(y_true, probs, thresholds: Thresholds, taxonomy: Taxonomy) -> dict:
    """The headline metrics of one set of predictions, per class and per tier (also used per subgroup)."""
    per = _class_block(y_true, probs, thresholds, taxonomy)
    return {**headline_metrics(y_true, probs, [p["auc"] for p in per.values()]), "per_class": per,
            "tiers": _tier_block(y_true, probs, thresholds, taxonomy)}


def subgroups(table: pd.DataFrame) -> dict[str, pd.Series]:
    """Named groupings of the table's rows for the subgroup analysis (only where data exists)."""
    out = {}
    if table["sex"].notna().any():
        out["sex"] = table["sex"].fillna("unknown")
    if table["age"].notna().any():
        out["age_band"] = table["age"].map(
            lambda a: next((n for lo, hi, n in AGE_BANDS if lo <= a < hi), "unknown") if pd.notna(a) else "unknown")
    if table["site"].notna().any():
        out["site"] = table["site"].fillna("unknown")
    if "skin_tone" in table:       # estimated from the photos (derm_core.explain.skin_tone), when added
        out["skin_tone"] = table["skin_tone"].fillna("unknown")
    return out


def intervals(y_true, probs, clusters, thresholds: Thresholds | None, taxonomy: Taxonomy, rule: BalancedRule | None = None,
              n_boot: int = M.N_BOOT, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals, resampling whole lesions (``clusters``: one lesion id
    per image), for the AUCs, accuracy, balanced accuracy (both rules) and each referral
    tier's sensitivity and specificity (cases at that tier or above flagged at least that urgent;
    only with ``thresholds``)."""
    y_true = np.asarray(y_true)
    counts = M.bootstrap_counts(len(y_true), n_boot, seed, clusters=clusters)
    every = np.ones(len(y_true), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # resamples without some class
        aucs = {c: M.bootstrap_auc_samples(y_true == i, probs[:, i], counts) for i, c in enumerate(taxonomy.classes)}

        def accuracies(pred):
            hit = pred == y_true
            recall = [M.weighted_rate(hit, y_true == i, counts) for i in range(probs.shape[1]) if (y_true == i).any()]
            return M.weighted_rate(hit, every, counts), np.nanmean(np.stack(recall), 0)

        acc, bal = accuracies(probs.argmax(1))
        out = {"method": "percentile bootstrap over lesions" if clusters is not None else "percentile bootstrap over images",
               "level": level, "n_boot": n_boot, "n_clusters": int(len(np.unique(clusters))) if clusters is not None else None,
               "macro_auc": M.interval(np.nanmean(np.stack(list(aucs.values())), 0), level),
               "accuracy": M.interval(acc, level), "balanced_accuracy": M.interval(bal, level),
               "per_class_auc": {c: M.interval(a, level) for c, a in aucs.items()}, "tiers": {}}
        if rule is not None:
            r_acc, r_bal = accuracies(rule.predict(probs))
            out["balanced_rule"] = {"accuracy": M.interval(r_acc, level), "balanced_accuracy": M.interval(r_bal, level)}
    if thresholds is None:
        return out
    tt, pt = true_tiers(y_true, taxonomy), assign_tiers(probs, taxonomy, thresholds.tiers)
    for k, t in enumerate(taxonomy.tier_names):
        if k:
            out["tiers"][t] = {"sensitivity_at_or_above": M.interval(M.weighted_rate(pt >= k, tt >= k, counts), level),
                               "specificity_at_or_above": M.interval(M.weighted_rate(pt < k, tt < k, counts), level)}
    return out


def build_report(y_true, logits, temperature: float, thresholds: Thresholds, taxonomy: Taxonomy,
                 table: pd.DataFrame | None = None, rule: BalancedRule | None = None) -> dict:
    """The full evaluation report (see the CLI's ``evaluate``).

    ``accuracy`` and ``balanced_accuracy`` are those of the most-likely rule; with a
    ``rule``, ``balanced_rule`` holds the prior-corrected rule's (see :mod:`derm_core.model.decision`).
    With a ``table``, ``intervals`` holds lesion-grouped bootstrap intervals and
    ``subgroups`` the metrics per sex, age band and site."""
    y_true, logits = np.asarray(y_true), np.asarray(logits)
    probs = softmax(logits, temperature)
    rep = summary_metrics(y_true, probs, thresholds, taxonomy)
    rep["decision_rule"] = "most_likely"
    if rule is not None:
        rep["balanced_rule"] = rule.report(y_true, probs, taxonomy.classes)
    rep["classes"] = list(taxonomy.classes)
    rep["confusion_matrix"] = M.confusion(y_true, probs.argmax(1), len(taxonomy.classes)).tolist()
    rep["ece"] = M.expected_calibration_error(y_true, probs)
    rep["ece_uncalibrated"] = M.expected_calibration_error(y_true, softmax(logits, 1.0))
    rep["temperature"] = float(temperature)
    rep["thresholds"] = thresholds.name
    if table is not None:
        rep["intervals"] = intervals(y_true, probs, table["group"].to_numpy() if "group" in table else None,
                                     thresholds, taxonomy, rule)
        warnings.filterwarnings("ignore", message=".*(not in y_true|single label).*")  # small subgroups
        rep["subgroups"] = {}
        for gname, groups in subgroups(table).items():
            rep["subgroups"][gname] = {}
            for g in sorted(groups.unique()):
                m = (groups == g).to_numpy()
                s = summary_metrics(y_true[m], probs[m], thresholds, taxonomy)
                s.pop("per_class")
                rep["subgroups"][gname][g] = s
    return rep


def isic_predictions(image_ids, probs: np.ndarray, taxonomy: Taxonomy) -> pd.DataFrame:
    """Predictions in the ISIC 2018 Task 3 CSV layout: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``."""
    order = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    codes = {taxonomy.isic_codes.get(c): i for i, c in enumerate(taxonomy.classes)}
    if set(order) - set(codes):
        raise ValueError(f"taxonomy {taxonomy.name!r} does not map onto the ISIC 2018 classes {order}")
    df = pd.DataFrame({"image": [str(i).rsplit(".", 1)[0] for i in image_ids]})
    for code in order:
        df[code] = np.round(probs[:, codes[code]], 6)
    return df
