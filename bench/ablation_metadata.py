"""Metadata ablation on the model's own lesion-disjoint split.

    python bench/ablation_metadata.py --data ../shared/data/ham10000 [--model weights/default/model.json]

Two comparisons, both on the same test split:
1. the shipped (metadata-fused) model with age/sex/site given vs. withheld at inference;
2. a fresh linear head (logistic regression) fitted on the train split's image embeddings
   alone vs. on the same embeddings plus the encoded age/sex/site, so the only difference
   is the metadata.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.data.clinical import encode  # noqa: E402
from derm_core.data.dataset import clinical_of, load_table  # noqa: E402
from derm_core.data.splits import load_splits  # noqa: E402
from derm_core.evaluate.evaluation import build_report, summary_metrics  # noqa: E402
from derm_core.model.checkpoint import load_model  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402
from derm_core.settings import SHIPPED_MODEL  # noqa: E402
from derm_core.triage.rules import fit_thresholds  # noqa: E402


def headline(rep: dict) -> dict:
    return {k: round(rep[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_auc")} | \
        {"mel_auc": round(rep["per_class"]["mel"]["auc"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=str(SHIPPED_MODEL))
    ap.add_argument("--out", help="also write the figures as JSON here")
    a = ap.parse_args()
    model, card = load_model(a.model)
    tax = card.taxonomy
    table = load_table(a.data, tax)
    split = load_splits(table, card.split_file)
    parts = {s: table[(split == s).to_numpy()].reset_index(drop=True) for s in ("train", "val", "test")}
    predict_table = Predictor(model, card).predict_table
    y = {s: p["y"].to_numpy() for s, p in parts.items()}
    res = {}

    with_meta = predict_table(parts["test"], use_metadata=True)
    without = predict_table(parts["test"], use_metadata=False, embeddings=True)
    for name, pr in (("given", with_meta), ("withheld", without)):
        res[f"fused model, metadata {name}"] = headline(
            build_report(y["test"], pr["logits"], card.temperature, card.thresholds, tax))

    emb = {"test": without["embeddings"]}
    for s in ("train", "val"):
        emb[s] = predict_table(parts[s], use_metadata=False, embeddings=True)["embeddings"]
    meta = {s: np.stack([encode(clinical_of(r)) for r in p.itertuples()]) for s, p in parts.items()}
    for name, feats in (("image only", lambda s: emb[s]), ("image + metadata", lambda s: np.c_[emb[s], meta[s]])):
        scaler = StandardScaler().fit(feats("train"))
        clf = LogisticRegression(max_iter=2000, C=0.5).fit(scaler.transform(feats("train")), y["train"])
        pv, pt = (clf.predict_proba(scaler.transform(feats(s))) for s in ("val", "test"))
        th = fit_thresholds(pv, y["val"], tax)
        res[f"linear head, {name}"] = headline(summary_metrics(y["test"], pt, th, tax))
    print(f"test split: {len(parts['test'])} images of {parts['test']['group'].nunique()} lesions")
    for k, v in res.items():
        print(f"  {k:<34} " + "  ".join(f"{m}={x:.3f}" for m, x in v.items()))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
