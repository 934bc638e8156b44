"""Dataset layer: one contract for every source of labelled lesion photos.

Two layouts are understood:

* HAM10000: ``metadata.csv`` (lesion_id, image_id, dx, age, sex, localization, ...),
  ``images/<image_id>.jpg`` and optionally ``masks/<image_id>.png``.
* Generic (a clinic's own photos): a CSV (``labels.csv`` by default) with ``image_id`` and
  ``label`` and optionally ``age``, ``sex``, ``site``, ``lesion_id`` / ``patient_id``;
  images in ``images/`` or next to the CSV, named ``<image_id>`` with or without extension.

Both become the same table (:data:`TABLE_COLUMNS`); everything downstream uses only that.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from derm_core.data.clinical import Clinical, encode
from derm_core.data.images import ImageError, load_image
from derm_core.data.taxonomy import Taxonomy
from derm_core.errors import DataError
from derm_core.settings import ENV_DATA, settings

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
TABLE_COLUMNS = ["image_id", "path", "label", "y", "age", "sex", "site", "group", "mask_path"]
HAM_CSV = "metadata.csv"
GENERIC_CSV = "labels.csv"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The dataset folder: the argument, else ``$DERMTRIAGE_DATA``."""
    if data_dir is None:
        data_dir = settings().data
    if not data_dir:
        raise DataError(f"no dataset folder given: pass --data DIR or set {ENV_DATA}")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        if path.is_symlink():   # exists as a link: a loop or a dangling target, not "not found" (issue 13)
            try:
                path.resolve(strict=True)
                why = "is not a folder"
            except RuntimeError:
                why = "is a symbolic link loop"
            except OSError:
                why = f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
            raise DataError(f"dataset folder {path} {why}")
        if path.exists():
            raise DataError(f"dataset folder {path} is a file, not a folder")
        raise DataError(f"dataset folder not found: {path}")
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "patient_id": str}, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the CSV file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None


def _find_image(folder: Path, image_id: str) -> Path | None:
    p = folder / image_id
    if p.suffix.lower() in IMAGE_EXTS and p.is_file():
        return p
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            if (folder / f"{image_id}{e}").is_file():
                return folder / f"{image_id}{e}"
    return None


def load_table(data_dir: str | Path | None, taxonomy: Taxonomy, csv: str | Path | None = None,
               check_files: bool = True) -> pd.DataFrame:
    """Read a dataset folder into the common table, validating it.

    Raises:
        DataError: missing CSV or columns, unknown labels, duplicate ids, missing images.
    """
    root = resolve_data_dir(data_dir)
    if csv is None:
        csv = root / HAM_CSV if (root / HAM_CSV).is_file() else root / GENERIC_CSV
    csv = Path(csv)
    if not csv.is_absolute() and not csv.is_file():
        csv = root / csv
    if not csv.is_file():
        raise DataError(f"{root}: no {HAM_CSV} (HAM10000 layout) or {GENERIC_CSV} (generic layout) found")
    raw = _read_csv(csv)
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    label_col = "label" if "label" in raw.columns else "dx" if "dx" in raw.columns else None
    missing = [c for c, ok in (("image_id", "image_id" in raw.columns), ("label (or dx)", label_col)) if not ok]
    if missing:
        raise DataError(f"{csv}: required column(s) missing: {', '.join(missing)}; found {list(raw.columns)}")
    if raw.empty:
        raise DataError(f"{csv}: no rows")

    for col in ("image_id", label_col):   # (pandas keeps an empty cell missing through astype(str))
        blank = raw[col].isna().to_numpy() | (raw[col].astype(str).str.strip() == "").to_numpy()
        if blank.any():
            raise DataError(f"{csv} row {int(np.flatnonzero(blank)[0]) + 2}: {col} is empty")
    ids = raw["image_id"].astype(str).str.strip()
    dup = ids[ids.duplicated()]
    if len(dup):
        row = int(dup.index[0]) + 2
        raise DataError(f"{csv} row {row}: image_id {dup.iloc[0]!r} appears more than once")
    labels = raw[label_col].astype(str).str.strip().str.lower()
    unknown = ~labels.isin(taxonomy.classes)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(f"{csv} row {i + 2}: unknown label {raw[label_col].iloc[i]!r}; "
                        f"taxonomy {taxonomy.name!r} has {list(taxonomy.classes)}")

    img_dir = root / "images" if (root / "images").is_dir() else root
    mask_dir = root / "masks"
    site_col = "site" if "site" in raw.columns else "localization" if "localization" in raw.columns else None
    group_col = next((c for c in ("lesion_id", "patient_id") if c in raw.columns), None)
    if group_col == "lesion_id":   # one lesion, one diagnosis (issue 13)
        lesions = raw["lesion_id"].astype(str).str.strip()
        per = labels.groupby(lesions[raw["lesion_id"].notna()]).nunique()
        if (per > 1).any():
            lid = per.index[per.to_numpy() > 1][0]
            rows = [int(i) + 2 for i in np.flatnonzero((lesions == lid).to_numpy())][:4]
            raise DataError(f"{csv} rows {rows}: lesion_id {lid!r} is labelled "
                            f"{' and '.join(sorted(labels[lesions == lid].unique()))}; one lesion has one diagnosis")
    rows = []
    for i, (image_id, label) in enumerate(zip(ids, labels)):
        path = _find_image(img_dir, image_id) if check_files else img_dir / image_id
        if path is None:
            raise DataError(f"{csv} row {i + 2}: image {image_id!r} not found in {img_dir}")
        try:
            clin = Clinical.parse(raw["age"].iloc[i] if "age" in raw.columns else None,
                                  raw["sex"].iloc[i] if "sex" in raw.columns else None,
                                  raw[site_col].iloc[i] if site_col else None)
        except ValueError as e:
            raise DataError(f"{csv} row {i + 2}: {e}") from None
        group = raw[group_col].iloc[i] if group_col else None
        mask = mask_dir / f"{Path(image_id).stem}.png"
        rows.append((image_id, str(path), label, taxonomy.index(label), clin.age, clin.sex, clin.site,
                     str(group) if isinstance(group, str) and group else image_id,
                     str(mask) if mask.is_file() else None))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for c in ("bbox_top", "bbox_bottom", "bbox_left", "bbox_right"):
        if c in raw.columns:
            table[c] = raw[c].to_numpy()
    return table


def clinical_of(row) -> Clinical:
    """The clinical metadata of one table row."""
    return Clinical.parse(row.age, row.sex, row.site)


class LesionDataset(torch.utils.data.Dataset):
    """Rows of a dataset table as ``(image, metadata vector, label index)`` tensors.

    Images are decoded once (through :func:`derm_core.data.images.load_image`, so a bad file
    is reported by name) and kept in memory as uint8, downsized to at most ``max_side``.
    Evaluation uses it; training batches come from :mod:`derm_core.fit.batches`.
    """

    def __init__(self, table: pd.DataFrame, transform, preload: bool = True, max_side: int = 400):
        self.table = table.reset_index(drop=True)
        self.transform = transform
        self.max_side = max_side
        self.clinical = [clinical_of(r) for r in self.table.itertuples()]
        self._cache = [self._decode(i) for i in range(len(self.table))] if preload else None

    def _decode(self, i: int) -> Image.Image:
        path = self.table.at[i, "path"]
        try:
            img = load_image(path)
        except ImageError as e:
            raise DataError(f"{path}: {e}") from None
        if max(img.size) > self.max_side:
            img.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        return img

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        img = self._cache[i] if self._cache is not None else self._decode(i)
        return self.transform(img), torch.from_numpy(encode(self.clinical[i])), int(self.table.at[i, "y"])
