"""Similar cases: the k nearest images of the model's training and validation split.

The index holds the L2-normalised *image* part of the penultimate embedding (the clinical
metadata branch of a fusion model is left out, so similarity is about how the lesion looks)
of every train + validation image of a dataset folder, with its recorded diagnosis. The
embeddings come from :func:`derm_core.evaluate.embedding.predictions`, computed once per (model,
data) and cached on disk (keyed by the weights hash and the data table), so a changed model
or changed data rebuilds the index and nothing else does. Nearest = highest cosine
similarity; the test split is never offered (the example cases are drawn from it).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from derm_core.errors import CacheError
from derm_core.evaluate.embedding import data_key, model_key, predictions
from derm_core.model.checkpoint import ModelCard

META_WIDTH = 64        # width of DermNet's metadata branch (networks.DermNet.meta)
SPLITS = ("train", "val")
_MEMO: dict[tuple[str, str], "CaseIndex"] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    label: str
    similarity: float      # cosine similarity in [-1, 1]
    path: str
    split: str


@dataclass(frozen=True, eq=False)
class CaseIndex:
    vectors: np.ndarray            # (N, D) float32, unit rows
    table: pd.DataFrame            # image_id, label, path, split of each row
    model_key: str
    data_key: str

    def __len__(self) -> int:
        return len(self.vectors)

    def query(self, embedding: np.ndarray, k: int = 5, exclude: tuple[str, ...] = ()) -> list[Neighbour]:
        """The ``k`` most similar indexed images to one embedding (full penultimate or image part)."""
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        v = _unit(image_part(np.atleast_2d(embedding), self.vectors.shape[1]))[0]
        sim = self.vectors @ v
        if exclude:
            sim = np.where(self.table["image_id"].isin(list(exclude)).to_numpy(), -np.inf, sim)
        k = min(int(k), int(np.isfinite(sim).sum()))
        top = np.argpartition(-sim, k - 1)[:k] if k < len(sim) else np.arange(len(sim))
        top = top[np.lexsort((top, -sim[top]))]
        t = self.table
        return [Neighbour(str(t["image_id"].iat[i]), str(t["label"].iat[i]), float(sim[i]), str(t["path"].iat[i]),
                          str(t["split"].iat[i])) for i in top if np.isfinite(sim[i])]


def image_part(embeddings: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` columns: the image features before the metadata branch."""
    e = np.asarray(embeddings, dtype=np.float32)
    if e.shape[1] < width:
        raise ValueError(f"embedding has {e.shape[1]} dimensions, the index {width}")
    return e[:, :width]


def image_width(card: ModelCard, embedding_dim: int) -> int:
    return embedding_dim - (META_WIDTH if card.use_metadata else 0)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def index_table(table: pd.DataFrame, split) -> pd.DataFrame:
    """The rows that may be offered as similar cases: the model's train and validation images."""
    split = np.asarray(split)
    keep = np.isin(split, SPLITS)
    out = table[keep].assign(split=split[keep])
    order = np.argsort([SPLITS.index(v) for v in out["split"]], kind="stable")   # train rows, then validation
    return out.iloc[order].reset_index(drop=True)


def _split_rows(rows: pd.DataFrame, s: str) -> pd.DataFrame:
    return rows[rows["split"] == s].drop(columns=["split"]).reset_index(drop=True)


def _split_embeddings(card, rows, s, model, callback, refresh) -> np.ndarray:
    """One split's embeddings, cached like the Model lab's per-split evaluation (the same cache files)."""
    return predictions(card, _split_rows(rows, s), model=model, callback=callback, refresh=refresh)["embeddings"]


def build_index(card: ModelCard, table: pd.DataFrame, split, *, model=None, callback=None,
                refresh: bool = False) -> CaseIndex:
    """The similar-case index of this model on this dataset (``split``: the model's split labels for ``table``).

    Built from the cached embeddings (computed on the first call, ``callback(done, total)``
    reports progress over all the index's images) and memoised in memory per (model, data)."""
    rows = index_table(table, split)
    if rows.empty:
        raise ValueError("no training or validation images to find similar cases in")
    key = (model_key(card), data_key(rows))
    with _LOCK:
        if not refresh and key in _MEMO:
            return _MEMO[key]
    parts, done = [], 0
    for s in SPLITS:            # progress over the whole index: the splits one after the other
        n = int((rows["split"] == s).sum())
        if n:
            cb = None if callback is None else (lambda d, t, before=done: callback(before + d, len(rows)))
            parts.append(_split_embeddings(card, rows, s, model, cb, refresh))
            done += n
    emb = np.concatenate(parts)
    width = image_width(card, emb.shape[1])
    idx = CaseIndex(_unit(image_part(emb, width)), rows[["image_id", "label", "path", "split"]].copy(), *key)
    with _LOCK:
        _MEMO[key] = idx
    return idx


def cached_index(card: ModelCard, table: pd.DataFrame, split) -> CaseIndex | None:
    """The index when its embeddings are already cached on disk (no computation), else None.

    Raises:
        CacheError: a cached file is there but is not this model's (another embedding width,
            other classes or images, NaN): it is never used; building the index replaces it.
    """
    from derm_core.evaluate.embedding import read_cached_predictions
    rows = index_table(table, split)
    if rows.empty:
        return None
    key = (model_key(card), data_key(rows))
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
    if any(read_cached_predictions(card, _split_rows(rows, s)) is None for s in SPLITS
           if (rows["split"] == s).any()):
        return None
    return build_index(card, table, split)


class FolderIndex(NamedTuple):
    """What :func:`folder_index` found: the index (None until built), how many images it holds,
    and why a cached index was ignored (None when none was)."""
    index: CaseIndex | None
    n: int
    ignored: str | None = None


def similar_cases(predictor, image, index: CaseIndex, k: int = 5, clinical=None) -> list[Neighbour]:
    """The ``k`` indexed images most like ``image`` (already cropped to the lesion) under the predictor's model."""
    _, emb = predictor.forward(predictor.preprocess([image]), clinical)
    return index.query(emb, k)


def folder_index(card: ModelCard, data_dir, *, build: bool = False, model=None, callback=None) -> FolderIndex:
    """The similar-case index of a dataset folder, when the folder is the model's own dataset
    (its split file covers every image); ``build=False`` only reads the cache, and a cached
    index that is not this model's is ignored with the reason (building replaces it).

    Raises:
        ValueError: the folder is not the model's dataset, or the model has no split file.
    """
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import load_splits
    sf = card.split_file
    if sf is None or not sf.is_file():
        raise ValueError("this model has no split file, so its training images are unknown")
    table = load_table(data_dir, card.taxonomy)
    try:
        split = load_splits(table, sf).to_numpy()
    except ValueError:
        raise ValueError("the dataset folder is not this model's training dataset (its split file does not "
                         "list these images)") from None
    n = int(np.isin(split, SPLITS).sum())
    if build:
        return FolderIndex(build_index(card, table, split, model=model, callback=callback), n)
    try:
        return FolderIndex(cached_index(card, table, split), n)
    except CacheError as e:
        return FolderIndex(None, n, str(e))


# ------------------------------------------------------------------ building the index in the background
@dataclass(eq=False)
class IndexBuild:
    """A dataset folder's similar-case index being built in a background thread, so a page can
    show its progress, survive a rerun (a click elsewhere) and let other sessions see it too."""

    total: int                       # images to embed
    done: int = 0
    index: CaseIndex | None = None   # set when finished
    error: str | None = None         # set when it failed

    def __post_init__(self):
        self._finished = threading.Event()

    @property
    def running(self) -> bool:
        return not self._finished.is_set()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once the build has finished (or failed)."""
        return self._finished.wait(timeout)

    def _run(self, card: ModelCard, data_dir) -> None:
        try:
            self.index = folder_index(card, data_dir, build=True,
                                      callback=lambda d, t: setattr(self, "done", min(int(d), self.total))).index
            self.done = self.total
        except Exception as e:  # noqa: BLE001 - any failure is reported to the page, which offers to try again
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e)
        finally:
            self._finished.set()


_BUILDS: dict[tuple[str, str], IndexBuild] = {}


def _build_key(card: ModelCard, data_dir) -> tuple[str, str]:
    from pathlib import Path
    return model_key(card), str(Path(data_dir).expanduser().resolve())


def index_build(card: ModelCard, data_dir) -> IndexBuild | None:
    """The build of this model's index of ``data_dir`` started in this process (running or
    finished), or None."""
    with _LOCK:
        return _BUILDS.get(_build_key(card, data_dir))


def start_index_build(card: ModelCard, data_dir, total: int) -> IndexBuild:
    """Start building the index in a background thread (``total``: its number of images, from
    :func:`folder_index`); a build still running is returned instead. The embeddings already
    cached on disk are reused, so building again after a finished build is quick."""
    key = _build_key(card, data_dir)
    with _LOCK:
        build = _BUILDS.get(key)
        if build is not None and build.running:
            return build
        build = _BUILDS[key] = IndexBuild(int(total))
    threading.Thread(target=build._run, args=(card, data_dir), name="similar-index", daemon=True).start()
    return build
