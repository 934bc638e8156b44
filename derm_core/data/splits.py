"""Lesion-grouped, class-stratified, seeded train/val/test splits, saved and reused.

Several HAM10000 images show the same lesion; splitting by image would leak lesions
between train and test and inflate every metric. Splits are therefore made over the
table's ``group`` column (lesion_id, else patient_id, else image_id).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from derm_core.data.dataset import DataError

SPLITS = ("train", "val", "test")


def make_splits(table: pd.DataFrame, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0) -> pd.Series:
    """Assign each row to train/val/test; returns a Series aligned with ``table``.

    No group ever appears in two splits; class proportions are kept close to the whole.
    """
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"split fractions must be in (0, 1) and sum below 1, got val={val_frac} test={test_frac}")
    split = np.array(["train"] * len(table), dtype=object)
    y, groups = table["y"].to_numpy(), table["group"].to_numpy()
    if len(np.unique(y)) < 2:
        raise DataError(f"the data hold one class only ({len(table)} image(s)): a classifier needs at least two")
    if len(np.unique(groups)) < 3:
        raise DataError(f"only {len(np.unique(groups))} lesion(s): train, validation and test need at least one "
                        f"each (better dozens per class)")

    def carve(idx: np.ndarray, frac: float, name: str, rs: int) -> None:
        n_splits = max(2, round(1 / frac))
        n_groups = len(np.unique(groups[idx]))
        if n_groups < 2:
            raise DataError(f"only {n_groups} lesion(s) left for the {name} split: the data are too few to split "
                            f"into train, validation and test; give at least a few lesions per class")
        largest = int(np.bincount(y[idx]).max())
        if largest < n_splits:  # tiny dataset: hold out a larger share rather than fail
            warnings.warn(f"too few images per class for a {frac:.0%} {name} split; holding out 1/{max(2, largest)}")
            n_splits = max(2, min(largest, n_groups))
        n_splits = min(n_splits, n_groups)
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=rs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            try:
                _, held = next(cv.split(idx, y[idx], groups[idx]))
            except ValueError as e:   # sklearn's n_splits message, in the data's terms
                raise DataError(f"cannot make a lesion-grouped {name} split of {n_groups} lesions over "
                                f"{len(np.unique(y[idx]))} classes ({e}); give more lesions per class") from None
        split[idx[held]] = name

    carve(np.arange(len(table)), test_frac, "test", seed)
    rest = np.flatnonzero(split == "train")
    carve(rest, val_frac / (1 - test_frac), "val", seed + 1)
    return pd.Series(split, index=table.index, name="split")


def save_splits(table: pd.DataFrame, split: pd.Series, path: str | Path) -> None:
    """Write ``image_id,group,split`` so the same split is reused by every later run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = pd.DataFrame({"image_id": table["image_id"], "group": table["group"], "split": split})
    tmp = path.with_suffix(path.suffix + ".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)


def load_splits(table: pd.DataFrame, path: str | Path) -> pd.Series:
    """Read a split file and align it to ``table``; images the file does not list are an error."""
    saved = pd.read_csv(path, dtype=str).set_index("image_id")["split"]
    missing = table.loc[~table["image_id"].isin(saved.index), "image_id"]
    if len(missing):
        raise DataError(f"split file {path} does not list {len(missing)} image(s), e.g. {missing.iloc[0]!r}")
    bad = set(saved.unique()) - set(SPLITS)
    if bad:
        raise DataError(f"split file {path} has unknown split names {sorted(bad)}")
    return pd.Series(saved.loc[table["image_id"]].to_numpy(), index=table.index, name="split")


def split_rows(table: pd.DataFrame, path: str | Path, split: str) -> pd.DataFrame:
    """The rows of ``table`` in ``split`` of the split file at ``path``, numbered from 0.

    Raises:
        ValueError: ``split`` is not one of :data:`SPLITS`.
        DataError: as :func:`load_splits`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return table[(load_splits(table, path) == split).to_numpy()].reset_index(drop=True)


def get_splits(table: pd.DataFrame, path: str | Path, seed: int = 0) -> pd.Series:
    """Reuse the split saved at ``path``; create and save it if it does not exist yet."""
    path = Path(path)
    if path.is_file():
        return load_splits(table, path)
    split = make_splits(table, seed=seed)
    save_splits(table, split, path)
    return split


def held_out_cases(data_dir: str | Path, taxonomy, card=None) -> tuple[pd.DataFrame, str]:
    """The cases to show from a dataset folder, and where they come from in words: the model's
    test split when the folder is the model's dataset (its split file lists every image), so
    people see the model on images it never trained on; else all of the folder."""
    from derm_core.data.dataset import load_table
    table = load_table(data_dir, taxonomy)
    split_file = card.split_file if card is not None else None
    if split_file is not None and split_file.is_file():
        try:
            test = (load_splits(table, split_file) == "test").to_numpy()
        except ValueError:
            test = None   # another dataset than the model's
        if test is not None and test.any():
            return table[test].reset_index(drop=True), f"the model's test split ({int(test.sum())} images)"
    return table.reset_index(drop=True), f"all {len(table)} images of the folder"
