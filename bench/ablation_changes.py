"""What each change to the model did, on the validation split: the table of issue 19.

    python bench/ablation_changes.py --data ../shared/data/ham10000 --markdown docs/changes.md \
        --model "v1=runs/v1_ce/model.json" --model "v2=runs/v2_la_ema/model.json" --reference v2 \
        --model "v2 seed 1=runs/lite0_la_ema_s1/model.json" --ablate v2 --ensemble "v2,v2 seed 1"

Earlier shipped models come back from git history into a run folder (their split is the shipped one)::

    mkdir -p runs/v1_ce && for f in model.json model.safetensors; do
        git show a5d18ad:weights/default/$f > runs/v1_ce/$f; done
    cp weights/default/split.csv runs/v1_ce/      # the same file since the first release (e8abf09)

Every row is scored the same way on the validation photos of the shipped split (all models
must use it): one temperature fitted on those photos, the balanced rule's tau chosen on them,
the dangerous tier's threshold placed at 90% sensitivity on them. The absolute figures are
therefore optimistic; the rows are for comparing changes (the test split's figures are in
the model sheet). ``--ablate`` adds the named model without flip averaging and with the
clinical data withheld; ``--ensemble`` averages the named models' logits, as an ensemble card
does (:class:`derm_core.model.networks.EnsembleNet`). Logits are cached in ``--cache``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.splits import load_splits  # noqa: E402
from derm_core.evaluate import metrics as M  # noqa: E402
from derm_core.evaluate.evaluation import headline_metrics  # noqa: E402
from derm_core.model.calibration import fit_temperature, softmax  # noqa: E402
from derm_core.model.checkpoint import load_model, read_card  # noqa: E402
from derm_core.model.decision import BalancedRule, class_prior  # noqa: E402
from derm_core.model.predictor import Predictor  # noqa: E402
from derm_core.settings import SHIPPED_MODEL  # noqa: E402
from derm_core.triage.rules import tier_at_or_above, true_tiers  # noqa: E402

COLUMNS = ("accuracy", "balanced_rule_accuracy", "macro_auc", "mel_auc", "dangerous_spec_at_90")


def macro_auc_samples(probs: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The macro AUC of every bootstrap resample (rows of ``counts``)."""
    return np.nanmean([M.bootstrap_auc_samples(y == i, probs[:, i], counts) for i in range(probs.shape[1])], 0)


def score(logits: np.ndarray, y: np.ndarray, prior: np.ndarray, taxonomy, counts: np.ndarray,
          base: np.ndarray | None) -> dict:
    """The row's figures; ``base``: the reference row's per-resample macro AUCs (paired difference)."""
    probs = softmax(logits, fit_temperature(logits, y))
    head = headline_metrics(y, probs)
    mel = taxonomy.classes.index("mel")
    danger = tier_at_or_above(probs, taxonomy)[:, -1]
    is_danger = (true_tiers(y, taxonomy) == len(taxonomy.tier_names) - 1).astype(int)
    sens, spec = M.sens_spec_at(is_danger, danger, threshold=M.threshold_for_sensitivity(is_danger, danger, 0.90))
    samples = macro_auc_samples(probs, y, counts)
    return {"accuracy": head["accuracy"],
            "balanced_rule_accuracy": M.balanced_accuracy_score(y, BalancedRule.fit(probs, y, prior).predict(probs)),
            "macro_auc": head["macro_auc"], "mel_auc": M.auc_score((y == mel).astype(int), probs[:, mel]),
            "dangerous_spec_at_90": spec, "dangerous_sens": sens,
            "macro_auc_samples": samples, "delta_macro_auc": None if base is None else M.interval(samples - base)}


def markdown(cards: dict[str, str], head: str, table_lines: list[str]) -> str:
    """The table as a page of the docs, with the command that wrote it and how each model was made."""
    lines = ["# What each change did, on the validation split", "",
             "Written by `bench/ablation_changes.py`; do not edit by hand. Command:", "", "```bash",
             "python " + " ".join(shlex.quote(x) for x in sys.argv), "```", "", __doc__.split("\n\n", 4)[4].strip(), "",
             f"The {head}.", "", *table_lines, "", "## The models", ""]
    for label, path in cards.items():
        card = read_card(path)
        t = card.training
        lines += [f"**{label}**: `{path}` ({card.architecture}, weights SHA-256 `{card.weights_sha256()[:16]}…`)", "",
                  "```bash", *(t.commands if t else ["n/a"]), "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", action="append", required=True, help="LABEL=CARD, in the order the changes were made")
    ap.add_argument("--ablate", action="append", default=[], help="a LABEL to score without TTA and without metadata")
    ap.add_argument("--ensemble", action="append", default=[], help="LABEL,LABEL,...: their logits averaged")
    ap.add_argument("--reference", help="the LABEL the last column compares with (default: the first --model)")
    ap.add_argument("--split-file", default=str(SHIPPED_MODEL.parent / "split.csv"))
    ap.add_argument("--cache", default="runs/ablation_cache")
    ap.add_argument("--out", help="also write the figures as JSON here")
    ap.add_argument("--markdown", help="also write the table as a Markdown page here (docs/changes.md)")
    a = ap.parse_args()
    cards = dict(m.split("=", 1) for m in a.model)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)

    first = read_card(next(iter(cards.values())))
    tax = first.taxonomy
    table = load_table(a.data, tax)
    split = load_splits(table, a.split_file)
    for label, path in cards.items():   # a model trained on these validation photos would look better than it is
        if not (load_splits(table, read_card(path).split_file) == split).all():
            sys.exit(f"{label} ({path}) was not trained on the split {a.split_file}")
    val = table[(split == "val").to_numpy()].reset_index(drop=True)
    y = val["y"].to_numpy()
    prior = class_prior(table[(split == "train").to_numpy()]["y"].to_numpy(), len(tax.classes))

    def logits(label: str, tta: bool = True, meta: bool = True) -> np.ndarray:
        card = read_card(cards[label])
        f = cache / f"{card.weights_sha256()[:16]}_val_tta{int(tta)}_meta{int(meta)}.npy"
        if not f.exists():   # the weights are loaded only when their logits are not cached yet
            pred = Predictor(load_model(cards[label])[0], card, out_of_scope=False)
            np.save(f, pred.predict_table(val, use_metadata=meta and card.use_metadata, tta=tta)["logits"])
        return np.load(f)

    counts = M.bootstrap_counts(len(y), seed=0, clusters=val["group"].to_numpy())   # one set of resamples for all rows
    base = a.reference or next(iter(cards))
    ref_row = score(logits(base), y, prior, tax, counts, None)
    ref = ref_row["macro_auc_samples"]
    rows = {}

    def add(label: str, z: np.ndarray) -> None:
        rows[label] = score(z, y, prior, tax, counts, None if label == base else ref)

    for label in cards:
        add(label, logits(label))
        if label in a.ablate:
            add(f"{label}, no flip averaging", logits(label, tta=False))
            add(f"{label}, clinical data withheld", logits(label, meta=False))
    for spec in a.ensemble:
        labels = spec.split(",")
        add(f"ensemble: {' + '.join(labels)}", np.mean([logits(x) for x in labels], 0))

    table_lines = [
        f"| model | accuracy | balanced acc. (balanced rule) | macro AUC | melanoma AUC | dangerous spec. at 90% sens. "
        f"| macro AUC minus {base}'s (95% interval, paired bootstrap over lesions) |", "|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        d = r["delta_macro_auc"]
        delta = "reference" if label == base else f"{r['macro_auc'] - ref_row['macro_auc']:+.3f} ({d[0]:+.3f} to {d[1]:+.3f})"
        table_lines.append(f"| {label} | " + " | ".join(f"{r[c]:.3f}" for c in COLUMNS) + f" | {delta} |")
    head = f"validation split: {len(val)} photos of {val['group'].nunique()} lesions"
    print(head, *table_lines, sep="\n")
    if a.markdown:
        Path(a.markdown).write_text(markdown(cards, head, table_lines))
    if a.out:
        Path(a.out).write_text(json.dumps({k: {m: v for m, v in r.items() if m != "macro_auc_samples"}
                                           for k, r in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
