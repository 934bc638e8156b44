"""Conformal prediction sets of a model on its test split (README "Conformal prediction sets").

Fits the class-conditional split-conformal calibration on the model's validation split
(writes ``model.conformal.json`` beside the card with ``--save``) and prints coverage,
melanoma coverage and mean set size on the test split at several levels. Predictions are
computed once per (model, data) and cached (``$DERMTRIAGE_CACHE``).

    python bench/eval_conformal.py --data ../shared/data/ham10000 [--model CARD] [--save]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.splits import load_splits  # noqa: E402
from derm_core.evaluate.embedding import predictions  # noqa: E402
from derm_core.model import conformal as C  # noqa: E402
from derm_core.model.calibration import softmax  # noqa: E402
from derm_core.model.checkpoint import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/ham10000")
    ap.add_argument("--model", default=None)
    ap.add_argument("--save", action="store_true", help="write model.conformal.json beside the card")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95])
    ap.add_argument("--json", help="also write the 90%% block here")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, threads {torch.get_num_threads()}")
    model, card = load_model(a.model)
    table = load_table(a.data, card.taxonomy)
    split = load_splits(table, card.split_file).to_numpy()
    t0 = time.time()
    cal = C.fit_for_model(card, table, split, model=model, save=a.save)
    test = table[split == "test"].reset_index(drop=True)
    probs = softmax(predictions(card, test, model=model)["logits"], card.temperature)
    print(f"predictions ready in {time.time() - t0:.0f} s (cached afterwards); calibration n = {cal.n}")
    y = test["y"].to_numpy()
    mel = card.classes.index("mel") if "mel" in card.classes else None
    print("level  coverage  mel-coverage  mean-size  empty  sizes(0..)")
    for lv in a.levels:
        r = C.evaluate(cal, y, probs, lv)
        mc = r["per_class"][card.classes[mel]]["coverage"] if mel is not None else float("nan")
        print(f"{lv:.2f}   {r['coverage']:.3f}     {mc:.3f}         {r['mean_set_size']:.2f}       "
              f"{r['empty_sets']:.3f}  {r['set_size_counts']}")
    r = C.evaluate(cal, y, probs, C.DEFAULT_LEVEL)
    print(json.dumps({c: v for c, v in r["per_class"].items()}))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
