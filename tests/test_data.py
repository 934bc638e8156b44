import numpy as np
import pandas as pd
import pytest
import torch

from derm_core.data.dataset import DataError, LesionDataset, load_table
from derm_core.model.transforms import eval_transform


def test_generic_layout(synthetic_data, ham7):
    t = load_table(synthetic_data, ham7)
    assert len(t) == 70
    assert set(t["label"]) == set(ham7.classes)
    assert (t["y"] == t["label"].map(ham7.index)).all()
    assert t["group"].str.startswith("L_").all()
    assert t["sex"].isin(["male", "female"]).all() and t["site"].notna().all()


def test_ham_layout_on_synthetic(tmp_path, ham7):
    from conftest import write_dataset
    root = write_dataset(tmp_path / "ham", per_class=3, layout="ham")
    t = load_table(root, ham7)
    assert len(t) == 21 and t["site"].isin(["back", "face", "trunk"]).all()


def test_real_ham10000(ham_dir, ham7):
    t = load_table(ham_dir, ham7)
    assert len(t) == 9001
    assert t["group"].nunique() == 6722
    assert t["label"].value_counts()["nv"] == 6047
    assert t["mask_path"].notna().all()


def test_data_dir_from_environment(synthetic_data, ham7, monkeypatch):
    monkeypatch.setenv("DERMTRIAGE_DATA", str(synthetic_data))
    assert len(load_table(None, ham7)) == 70
    monkeypatch.delenv("DERMTRIAGE_DATA")
    with pytest.raises(DataError, match="DERMTRIAGE_DATA"):
        load_table(None, ham7)


def _edit_csv(root, fn):
    df = pd.read_csv(root / "labels.csv")
    fn(df).to_csv(root / "labels.csv", index=False)


def test_missing_column(synthetic_data, ham7):
    _edit_csv(synthetic_data, lambda d: d.drop(columns="label"))
    with pytest.raises(DataError, match=r"labels.csv: required column\(s\) missing: label"):
        load_table(synthetic_data, ham7)


def test_unknown_label_names_row(synthetic_data, ham7):
    def f(d):
        d.loc[4, "label"] = "wart"
        return d
    _edit_csv(synthetic_data, f)
    with pytest.raises(DataError, match=r"row 6: unknown label 'wart'"):
        load_table(synthetic_data, ham7)


def test_duplicate_ids(synthetic_data, ham7):
    _edit_csv(synthetic_data, lambda d: pd.concat([d, d.iloc[[3]]]))
    with pytest.raises(DataError, match="appears more than once"):
        load_table(synthetic_data, ham7)


def test_missing_image_names_file(synthetic_data, ham7):
    (synthetic_data / "images" / "mel_003.jpg").unlink()
    with pytest.raises(DataError, match="mel_003"):
        load_table(synthetic_data, ham7)


def test_non_utf8_csv(synthetic_data, ham7):
    raw = (synthetic_data / "labels.csv").read_bytes().replace(b"face", b"f\xe9ce")
    (synthetic_data / "labels.csv").write_bytes(raw)
    with pytest.raises(DataError, match="not UTF-8"):
        load_table(synthetic_data, ham7)


def test_no_csv(tmp_path, ham7):
    with pytest.raises(DataError, match="metadata.csv"):
        load_table(tmp_path, ham7)


def test_unreadable_image_named_when_decoded(synthetic_data, ham7):
    (synthetic_data / "images" / "bcc_001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    t = load_table(synthetic_data, ham7)
    with pytest.raises(DataError, match="bcc_001.jpg"):
        LesionDataset(t, eval_transform((48, 64), [0.5] * 3, [0.5] * 3))


def test_dataset_items_and_metadata(synthetic_data, ham7):
    t = load_table(synthetic_data, ham7)
    x, meta, y = LesionDataset(t, eval_transform((48, 64), [0.5] * 3, [0.5] * 3))[0]
    assert x.shape == (3, 48, 64) and x.dtype == torch.float32
    assert y == t["y"][0]
    assert meta[1] == 0 and np.isclose(meta[0], t["age"][0] / 100)
