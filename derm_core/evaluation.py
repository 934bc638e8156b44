"""Run a model over a dataset table and report the seed papers' metrics.

Predictions are computed once (:func:`predict_table`); :func:`build_report` only re-bins
them, so threshold changes are cheap. The report's keys are the contract of
``python -m derm_core evaluate`` and of the Model lab page.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as M
from .calibration import softmax
from .data import LesionDataset
from .device import pick_device
from .models import embed_tta
from .taxonomy import Taxonomy
from .transforms import eval_transform
from .triage import Thresholds, assign_tiers, tier_scores, true_tiers

AGE_BANDS = [(0, 30, "<30"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 200, "70+")]


@torch.inference_mode()
def predict_table(model, table: pd.DataFrame, input_size, mean, std, *, use_metadata: bool | None = None,
                  batch_size: int = 64, device: torch.device | None = None, embeddings: bool = False,
                  progress: bool = True, callback=None, tta: bool = False) -> dict[str, np.ndarray]:
    """Logits (and optionally penultimate embeddings) for every row of ``table``.

    Args:
        use_metadata: feed the table's age/sex/site (default: when the model fuses metadata).
        tta: average over horizontal/vertical flips (see :func:`derm_core.models.embed_tta`).
        callback: called as ``callback(done, total)`` after each batch (progress bars in the app).
    """
    device = device or pick_device()
    model.eval().to(device)
    use_metadata = model.use_metadata if use_metadata is None else use_metadata
    ds = LesionDataset(table, eval_transform(input_size, mean, std), preload=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0)
    logits, embs, done = [], [], 0
    for x, meta, _ in tqdm(loader, desc="predict", disable=not progress, leave=False):
        x = x.to(device, memory_format=torch.channels_last)
        meta = meta.to(device) if use_metadata and model.use_metadata else None
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            e = embed_tta(model, x, meta, tta)
            z = model.head(e)
        logits.append(z.float().cpu().numpy())
        if embeddings:
            embs.append(e.float().cpu().numpy())
        done += len(x)
        if callback:
            callback(done, len(ds))
    out = {"logits": np.concatenate(logits)}
    if embeddings:
        out["embeddings"] = np.concatenate(embs)
    return out


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
                  "sensitivity_at_or_above": M.sensitivity_score(at_or_above, flagged) if k else None}
    return out


def _nanmean(values) -> float:
    v = np.array([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    return float(v.mean()) if len(v) else float("nan")


def summary_metrics(y_true, probs, thresholds: Thresholds, taxonomy: Taxonomy) -> dict:
    """The headline metrics of one set of predictions (also used per subgroup)."""
    pred = probs.argmax(1)
    per = _class_block(y_true, probs, thresholds, taxonomy)
    n_classes = probs.shape[1]
    return {
        "n_images": int(len(y_true)),
        "accuracy": M.accuracy_score(y_true, pred),
        "balanced_accuracy": M.balanced_accuracy_score(y_true, pred),
        "top2_accuracy": M.top_k_accuracy_score(y_true, probs, 2) if n_classes > 2 else 1.0,
        "top3_accuracy": M.top_k_accuracy_score(y_true, probs, 3) if n_classes > 3 else 1.0,
        "macro_auc": _nanmean(p["auc"] for p in per.values()),
        "per_class": per,
        "tiers": _tier_block(y_true, probs, thresholds, taxonomy),
    }


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
    return out


def build_report(y_true, logits, temperature: float, thresholds: Thresholds, taxonomy: Taxonomy,
                 table: pd.DataFrame | None = None) -> dict:
    """The full evaluation report (see the CLI's ``evaluate``)."""
    y_true, logits = np.asarray(y_true), np.asarray(logits)
    probs = softmax(logits, temperature)
    rep = summary_metrics(y_true, probs, thresholds, taxonomy)
    rep["classes"] = list(taxonomy.classes)
    rep["confusion_matrix"] = M.confusion(y_true, probs.argmax(1), len(taxonomy.classes)).tolist()
    rep["ece"] = M.expected_calibration_error(y_true, probs)
    rep["ece_uncalibrated"] = M.expected_calibration_error(y_true, softmax(logits, 1.0))
    rep["temperature"] = float(temperature)
    rep["thresholds"] = thresholds.name
    if table is not None:
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
