"""Similar cases on a model's dataset: builds (or reads) the cached train + validation index and
prints how often the nearest cases share the recorded diagnosis of a test photo.

    python bench/eval_similar.py --data ../shared/data/ham10000 [--model CARD] [--k 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from derm_core.data.dataset import load_table  # noqa: E402
from derm_core.data.splits import load_splits  # noqa: E402
from derm_core.evaluate.embedding import predictions  # noqa: E402
from derm_core.explain import similar  # noqa: E402
from derm_core.model.checkpoint import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/ham10000")
    ap.add_argument("--model", default=None)
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    model, card = load_model(a.model)
    table = load_table(a.data, card.taxonomy)
    split = load_splits(table, card.split_file).to_numpy()
    t0 = time.time()
    idx = similar.build_index(card, table, split, model=model)
    print(f"index of {len(idx)} train + validation images ready in {time.time() - t0:.1f} s")
    t0 = time.time()
    idx2 = similar.build_index(card, table, split)
    print(f"second build (memoised): {time.time() - t0:.3f} s, same object: {idx2 is idx}")
    test = table[split == "test"].reset_index(drop=True)
    emb = predictions(card, test, model=model)["embeddings"]
    t0 = time.time()
    top1 = topk = 0
    for e, lab in zip(emb, test["label"]):
        hits = idx.query(e, a.k)
        top1 += hits[0].label == lab
        topk += any(h.label == lab for h in hits)
    dt = (time.time() - t0) / len(test)
    print(f"test photos: nearest case has the same diagnosis {top1 / len(test):.3f}; one of {a.k}: "
          f"{topk / len(test):.3f}; query {dt * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
