"""Similar cases: nearest train/validation images by cosine on the image embedding, cached per (model, data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from derm_core.data.clinical import Clinical
from derm_core.data.dataset import load_table
from derm_core.data.images import load_image
from derm_core.data.splits import make_splits
from derm_core.evaluate import embedding
from derm_core.explain import similar
from derm_core.model.checkpoint import read_card, save_model
from derm_core.model.networks import create_model
from derm_core.model.predictor import Predictor


@pytest.fixture
def setup(tmp_path, synthetic_data, tiny_predictor, monkeypatch):
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    similar._MEMO.clear()
    path = save_model(tiny_predictor.model, tiny_predictor.card, tmp_path / "m" / "model")
    card = read_card(path)
    table = load_table(synthetic_data, card.taxonomy)
    split = make_splits(table, seed=0).to_numpy()
    return path, card, table, split


def test_a_training_image_is_its_own_nearest_neighbour(setup):
    path, card, table, split = setup
    pred = Predictor.from_path(path, device=torch.device("cpu"))
    idx = similar.build_index(card, table, split, model=pred.model)
    assert len(idx) == int(np.isin(split, ["train", "val"]).sum())
    assert set(idx.table["split"]) == {"train", "val"}
    assert not set(idx.table["image_id"]) & set(table["image_id"][split == "test"])   # never the test split
    for i in np.flatnonzero(split == "train")[:6]:
        row = table.iloc[i]
        hits = similar.similar_cases(pred, load_image(row["path"]), idx, k=3)
        assert hits[0].image_id == row["image_id"], (row["image_id"], hits)
        assert hits[0].label == row["label"] and hits[0].similarity > 0.999
        assert len(hits) == 3 and hits[0].similarity >= hits[1].similarity >= hits[2].similarity
        # the clinical branch of the fusion model does not change who is similar
        other = similar.similar_cases(pred, load_image(row["path"]), idx, k=3,
                                      clinical=Clinical(80, "male", "face"))
        assert [h.image_id for h in other] == [h.image_id for h in hits]
    first = table.iloc[int(np.flatnonzero(split == "train")[0])]["image_id"]
    emb = similar.similar_cases(pred, load_image(table.iloc[int(np.flatnonzero(split == "train")[0])]["path"]), idx, 1)
    assert emb[0].image_id == first
    with pytest.raises(ValueError):
        idx.query(np.zeros(idx.vectors.shape[1]), k=0)


def test_index_is_cached_and_rebuilt_when_the_model_changes(setup, monkeypatch):
    path, card, table, split = setup
    calls = []
    real = embedding.predictions
    monkeypatch.setattr(similar, "predictions", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert similar.cached_index(card, table, split) is None          # nothing computed yet
    a = similar.build_index(card, table, split)
    n = len(calls)
    assert similar.build_index(card, table, split) is a and len(calls) == n     # memoised in memory
    similar._MEMO.clear()
    b = similar.cached_index(card, table, split)                      # from the disk cache, no new forward pass
    assert b is not None and np.array_equal(a.vectors, b.vectors)
    # new weights written over the same card: another model key, the index is rebuilt
    torch.manual_seed(123)
    other = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    save_model(other, card, path.with_suffix(""))
    card2 = read_card(path)
    assert similar.cached_index(card2, table, split) is None
    c = similar.build_index(card2, table, split)
    assert c.model_key != a.model_key and not np.allclose(c.vectors, a.vectors)
    # changed data (one label changed) also rebuilds it
    t2 = table.copy()
    t2.loc[t2.index[0], "age"] = 99.0
    assert similar.build_index(card2, t2, split).data_key != c.data_key


def test_build_progress_runs_over_the_whole_index_once(setup):
    path, card, table, split = setup
    seen = []
    idx = similar.build_index(card, table, split, callback=lambda d, t: seen.append((d, t)))
    assert seen and all(t == len(idx) for _, t in seen)                 # one total: the whole index, not per split
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == len(idx)
