"""A model's outputs on a dataset, computed once and cached; t-SNE maps of its embeddings.

:func:`predictions` runs :meth:`derm_core.model.predictor.Predictor.predict_table` once per (model, data)
and keeps the logits and penultimate-layer embeddings on disk (``.npz`` under
:func:`cache_root`), keyed by a hash of the weights file plus the preprocessing that
changes the logits, and a hash of the dataset table (ids, labels, clinical data, image
files' sizes and modification times). Re-opening the Model lab on the same model and data
is then a file read. The temperature is applied later, so recalibrating a model does not
invalidate its cache.

:func:`tsne` lays the embeddings out in 2D or 3D with openTSNE (PCA to 50 dimensions,
PCA initialisation, FFT-accelerated gradients in 2D; 3D relaxes the 2D layout with
Barnes-Hut), as in the BCC-vs-SK paper's figures; :func:`cached_tsne` caches a layout
beside the predictions.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from derm_core.errors import CacheError
from derm_core.model.checkpoint import ModelCard, atomic_write_bytes, embedding_width
from derm_core.settings import settings

CACHE_FORMAT = 1


def cache_root() -> Path:
    """Where predictions and layouts are cached: ``settings().cache`` ($DERMTRIAGE_CACHE or ``<home>/cache``)."""
    return settings().cache


def model_key(card: ModelCard) -> str:
    """Key of a model's cached outputs: its network identity (the temperature is applied later)."""
    return _short_key(card.identity().network_key, CACHE_FORMAT)


def _short_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def data_key(table: pd.DataFrame) -> str:
    """Hash of a dataset table: ids, labels, clinical columns and each image file's size and mtime."""
    h = hashlib.sha256()
    cols = [c for c in ("image_id", "path", "y", "age", "sex", "site") if c in table.columns]
    h.update(pd.util.hash_pandas_object(table[cols].astype(str), index=False).to_numpy().tobytes())
    stats = []
    for p in table["path"]:
        try:
            s = os.stat(p)
            stats.append((s.st_size, s.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    h.update(np.asarray(stats, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def cache_path(card: ModelCard, table: pd.DataFrame, kind: str = "pred") -> Path:
    return cache_root() / model_key(card) / f"{data_key(table)}.{kind}.npz"


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    # object arrays (e.g. pandas strings) would need pickle to load: store them as fixed-width text
    np.savez(buf, **{k: np.asarray(v).astype(str) if np.asarray(v).dtype == object else v for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())   # a crash never leaves a half-written cache file


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file; None when there is none.

    Raises:
        CacheError: the path is not a regular file (a folder, a FIFO that would block), or the
            file is not a readable ``.npz`` (truncated, foreign, pickled objects)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CacheError(f"cache file {path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise CacheError(f"cache file {path} is not a regular file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError) as e:
        raise CacheError(f"cache file {path} is not readable ({type(e).__name__}: {e})") from None


def _float_matrix(cached: dict, key: str, rows: int, cols: int | None, path: Path) -> np.ndarray:
    """``cached[key]`` as a finite (rows, cols) float matrix (``cols`` None: any width)."""
    a = cached.get(key)
    where = f"cache file {path}: field '{key}'"
    if a is None or a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        raise CacheError(f"{where} must be a 2-D float array, not {None if a is None else f'{a.dtype} {a.shape}'}")
    if a.shape[0] != rows or (cols is not None and a.shape[1] != cols):
        raise CacheError(f"{where} is {a.shape[0]}x{a.shape[1]}; this model and data need "
                         f"{rows}x{cols if cols is not None else 'any'}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise CacheError(f"{where} holds {bad} value(s) that are not numbers (NaN or infinity)")
    return a


def read_cached_predictions(card: ModelCard, table: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """The one reader of cached predictions: the logits (N, classes) and embeddings (N, the
    model's embedding width) of this (model, data), or None when nothing is cached.

    Raises:
        CacheError: a cached file that is malformed or does not belong to this model and data
            (other rows, classes or embedding width; NaN), naming the file and field.
    """
    path = cache_path(card, table)
    cached = _load_npz(path)
    if cached is None:
        return None
    n = len(table)
    _float_matrix(cached, "logits", n, len(card.classes), path)
    _float_matrix(cached, "embeddings", n, embedding_width(card), path)
    ids = cached.get("image_id")
    if ids is not None and list(map(str, ids)) != [str(i) for i in table["image_id"]]:
        raise CacheError(f"cache file {path}: field 'image_id' lists other images than this dataset's")
    return cached


def load_cached_predictions(card: ModelCard, table: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """The cached logits/embeddings of this (model, data), or None (none, or refused: recomputed)."""
    try:
        return read_cached_predictions(card, table)
    except CacheError:
        return None


def predictions(card: ModelCard, table: pd.DataFrame, *, model=None, device=None, callback=None,
                batch_size: int = 64, refresh: bool = False) -> dict[str, np.ndarray]:
    """Logits (N, C) and embeddings (N, D) of ``table`` under the model, from the cache when possible.

    Args:
        model: the loaded network (default: loaded from ``card``'s weights when needed).
        callback: ``callback(done, total)`` after each batch (a progress bar).
    """
    if not refresh:
        cached = load_cached_predictions(card, table)
        if cached is not None:
            return cached
    from derm_core.model.checkpoint import load_model
    from derm_core.model.predictor import Predictor
    if model is None:
        model, _ = load_model(card.path)
    out = Predictor(model, card, device, out_of_scope=False).predict_table(
        table, batch_size=batch_size, embeddings=True, progress=False, callback=callback)
    res = {"logits": out["logits"].astype(np.float32), "embeddings": out["embeddings"].astype(np.float16),
           "image_id": np.asarray([str(i) for i in table["image_id"]])}
    _save_npz(cache_path(card, table), **res)
    return res


# ---------------------------------------------------------------------- t-SNE
def pca(x: np.ndarray, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """Principal components (randomised SVD) of the centred rows; fewer when there are fewer rows/columns."""
    from sklearn.decomposition import PCA
    x = np.asarray(x, dtype=np.float32)
    k = int(min(n_components, x.shape[0] - 1, x.shape[1]))
    if k < 1:
        return x - x.mean(0)
    return PCA(k, svd_solver="randomized" if k < min(x.shape) * 0.8 else "full", random_state=seed).fit_transform(x)


def tsne(embeddings: np.ndarray, dims: int = 2, *, perplexity: float = 30.0, seed: int = 0, n_jobs: int | None = None,
         n_iter: int = 500, early_iter: int = 250, pca_dims: int = 50, init2d: np.ndarray | None = None,
         refine_iter: int = 150, theta: float = 0.8) -> np.ndarray:
    """(N, dims) t-SNE layout of the embeddings (openTSNE; dims 2 or 3).

    2D: PCA to ``pca_dims``, perplexity-based nearest-neighbour affinities, PCA initialisation,
    ``early_iter`` iterations with early exaggeration then ``n_iter`` without, FFT-accelerated
    gradients (openTSNE's defaults). 3D: openTSNE's FFT gradients are 2D only and Barnes-Hut
    from scratch is several times slower, so the 2D layout (``init2d``, or computed here) is
    lifted into 3D with the third principal component as depth and relaxed for
    ``refine_iter`` Barnes-Hut iterations (opening angle ``theta``) with the same affinities.
    Small sets get a smaller perplexity automatically (openTSNE needs N > 3 * perplexity).
    ``n_jobs`` defaults to the CPU count (at most 8) from 5,000 points, else 1.
    """
    from openTSNE import TSNEEmbedding, affinity, initialization

    if dims not in (2, 3):
        raise ValueError(f"t-SNE layouts are 2D or 3D, not {dims}D")
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n < 4:
        return np.zeros((n, dims), dtype=np.float32)
    x = pca(x, pca_dims, seed)
    if n_jobs is None:   # threads only pay off for large sets (and hurt small ones on a busy machine)
        n_jobs = max(1, min(8, os.cpu_count() or 1)) if n >= 5000 else 1
    perp = float(min(perplexity, max(2.0, (n - 1) / 3.0 - 1)))
    aff = affinity.PerplexityBasedNN(x, perplexity=perp, method="auto", n_jobs=n_jobs, random_state=seed)
    if init2d is None or len(init2d) != n:
        # FFT gradients pay off from about a thousand points; below that Barnes-Hut is faster
        # (and FFT's interpolation grid grows with the layout's spread, which is pathological for tiny sets)
        emb = TSNEEmbedding(initialization.pca(x, 2, random_state=seed), aff,
                            negative_gradient_method="fft" if n >= 1000 else "bh", n_jobs=n_jobs, random_state=seed)
        emb.optimize(early_iter, exaggeration=12, momentum=0.5, inplace=True)
        emb.optimize(n_iter, momentum=0.8, inplace=True)
        init2d = np.asarray(emb)
    xy = np.asarray(init2d, dtype=np.float64)
    if dims == 2:
        return xy.astype(np.float32)
    depth = x[:, 2] if x.shape[1] > 2 else np.random.default_rng(seed).normal(size=n)
    depth = (depth - depth.mean()) / (depth.std() + 1e-12) * 0.5 * xy.std(0).mean()
    emb = TSNEEmbedding(np.c_[xy, depth], aff, negative_gradient_method="bh", theta=theta, n_jobs=n_jobs,
                        random_state=seed)
    emb.optimize(refine_iter, momentum=0.8, inplace=True)
    return np.asarray(emb, dtype=np.float32)


def load_cached_tsne(card: ModelCard, table: pd.DataFrame, dims: int = 2) -> np.ndarray | None:
    """The cached t-SNE layout of this (model, data), or None (none, or refused: recomputed)."""
    path = cache_path(card, table, f"tsne{dims}d")
    try:
        cached = _load_npz(path)
        return None if cached is None else _float_matrix(cached, "xy", len(table), dims, path)
    except CacheError:
        return None


def cached_tsne(card: ModelCard, table: pd.DataFrame, embeddings: np.ndarray, dims: int = 2, **kw) -> np.ndarray:
    """:func:`tsne`, cached on disk per (model, data, dims); the 3D layout starts from the cached 2D one."""
    path = cache_path(card, table, f"tsne{dims}d")
    cached = load_cached_tsne(card, table, dims)
    if cached is not None:
        return cached
    if dims == 3:
        kw.setdefault("init2d", cached_tsne(card, table, embeddings, 2, **kw))
    xy = tsne(embeddings, dims, **kw)
    _save_npz(path, xy=xy)
    return xy
