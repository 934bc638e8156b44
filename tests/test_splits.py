import pandas as pd
import pytest

from derm_core.data.dataset import load_table
from derm_core.data.splits import get_splits, load_splits, make_splits


def _assert_grouped(table, split):
    per_group = pd.Series(split.to_numpy(), index=table.index).groupby(table["group"]).nunique()
    assert (per_group == 1).all(), "a lesion appears in two splits"


def test_grouped_stratified_seeded(synthetic_data, ham7):
    t = load_table(synthetic_data, ham7)
    s = make_splits(t, seed=3)
    _assert_grouped(t, s)
    assert set(s) == {"train", "val", "test"}
    assert s.equals(make_splits(t, seed=3))
    assert not s.equals(make_splits(t, seed=4))


def test_saved_and_reused(synthetic_data, ham7, tmp_path):
    t = load_table(synthetic_data, ham7)
    f = tmp_path / "split.csv"
    s1 = get_splits(t, f, seed=1)
    s2 = get_splits(t, f, seed=99)  # the saved file wins over a new seed
    assert s1.equals(s2)
    with pytest.raises(ValueError, match="does not list"):
        load_splits(pd.concat([t, t.assign(image_id="new")]).reset_index(drop=True), f)


def test_ham10000_split_is_lesion_disjoint_and_stratified(ham_dir, ham7):
    t = load_table(ham_dir, ham7, check_files=False)
    s = make_splits(t, seed=0)
    _assert_grouped(t, s)
    frac = s.value_counts(normalize=True)
    assert 0.12 < frac["test"] < 0.18 and 0.12 < frac["val"] < 0.18
    share = pd.crosstab(t["label"], s, normalize="columns")
    assert (abs(share["test"] - share["train"]) < 0.03).all()


def test_split_rows_picks_one_split_numbered_from_zero(synthetic_data, ham7, tmp_path):
    from derm_core.data.splits import split_rows
    t = load_table(synthetic_data, ham7)
    f = tmp_path / "split.csv"
    s = get_splits(t, f, seed=1)
    for name in ("train", "val", "test"):
        part = split_rows(t, f, name)
        assert list(part["image_id"]) == list(t.loc[s == name, "image_id"])
        assert list(part.index) == list(range(len(part)))
    assert sum(len(split_rows(t, f, n)) for n in ("train", "val", "test")) == len(t)
    with pytest.raises(ValueError, match="split must be one of"):
        split_rows(t, f, "validation")
