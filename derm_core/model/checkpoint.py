"""Model files: safetensors weights plus a JSON model card; never a pickle.

``weights/<name>.safetensors`` holds the tensors, ``weights/<name>.json`` the card
(:class:`~derm_core.model.card.ModelCard`, written only by :func:`write_card` and
:func:`save_model`). Every write goes to a temporary file first and is renamed into place,
so a crash never leaves a half-written model. Training checkpoints (for resuming) use the
same format: optimizer and RNG state are tensors in safetensors, the rest JSON.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from derm_core.errors import ModelError
from derm_core.model.card import ModelCard
from derm_core.model.networks import DermNet, EnsembleNet, create_model
from derm_core.settings import SHIPPED_MODEL

__all__ = ["ModelCard", "ModelError", "atomic_save_tensors", "atomic_write_bytes", "atomic_write_json",
           "embedding_width", "load_model", "model_stamp", "read_card", "read_json", "save_model", "write_card"]

MAX_JSON_BYTES = 64 * 2**20     # a card, profile or calibration is kilobytes; more is not one of ours


def read_json(path: str | Path, error: type[Exception], what: str):
    """The one reader of DermTriage's JSON files (cards, profiles, calibrations): the parsed
    value, or ``error`` naming the file and why. Checked before opening, so a folder or a FIFO
    (which would block) is named as such; a deeply nested file (``RecursionError`` inside
    :mod:`json`) is reported as malformed, not as a crash.

    Raises:
        error: missing, not a regular file, too large, unreadable or not JSON.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else "a special file"
        raise error(f"{what} {path} is {kind}, not a regular file")
    if st.st_size > MAX_JSON_BYTES:
        raise error(f"{what} {path} is {st.st_size / 2**20:.0f} MB; a DermTriage {what} is far smaller")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{what} {path} is not valid JSON (nested too deeply)") from None


def _stage_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` completely (fsynced) to a hidden temporary file beside ``path``; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _stage_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> str:
    """Like :func:`_stage_bytes` for a safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as e:
            raise _os_error(e, path) from None
        with open(tmp, "rb+") as f:     # writable: Windows refuses to fsync a read-only handle
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _os_error(e: Exception, path: Path) -> Exception:
    """safetensors reports a failed write (a full disk) as ``SafetensorError: ... I/O error: No
    space left on device (os error 28)``: the :class:`OSError` it wraps, so callers (the CLI's
    one-line "the disk is full") handle it like any other failed write; ``e`` when it wraps none."""
    m = re.search(r"(?:os error|code:) (\d+)", str(e))
    if not m:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code) if code in errno.errorcode else str(e), str(path))


def _publish(*pairs: tuple[str, Path]) -> None:
    """Rename staged files into place (one ``os.replace`` each); on failure remove what is left."""
    try:
        for tmp, path in pairs:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in pairs:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    _publish((_stage_bytes(path, data), path))


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode("utf-8")


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, _json_bytes(obj))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    _publish((_stage_tensors(path, tensors, metadata), path))


def _card_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        p = p / "model.json"
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if p.suffix != ".json":
        raise ModelError(f"{path}: give a model card (.json), its .safetensors, or a run folder")
    return p, p.with_suffix(".safetensors")


def write_card(card: ModelCard, path: str | Path | None = None) -> Path:
    """The one writer of model cards: ``card.to_json()`` to ``path`` (default: where it was read), atomically."""
    target = Path(path) if path is not None else card.path
    if target is None:
        raise ModelError("the model card has no file to be written to")
    atomic_write_json(target, card.to_json())
    return target


def save_model(model: DermNet, card: ModelCard, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` then ``<path>.json`` (the card last: it marks completeness)."""
    card_path, weights_path = _card_paths(Path(path).with_suffix(".json"))
    card = card.with_(weights_file=weights_path.name)
    # Both files are written in full before either replaces anything, so a failure while
    # writing (a card that is not JSON-serialisable, a full disk, a kill) leaves any previous
    # model in this place intact rather than new weights under the old card.
    card_bytes = _json_bytes(card.to_json())
    staged_weights = _stage_tensors(weights_path, model.state_dict(), {"arch": model.arch})
    try:
        staged_card = _stage_bytes(card_path, card_bytes)
    except BaseException:
        Path(staged_weights).unlink(missing_ok=True)
        raise
    _publish((staged_weights, weights_path), (staged_card, card_path))
    return card_path


def model_stamp(path: str | Path | None = None) -> tuple:
    """(modification time, size) of a model's card and weights: a cache key that changes when
    either file is rewritten (a recalibrated or edited card), so a cached model is not reused."""
    try:
        card_path, weights = _card_paths(path or SHIPPED_MODEL)
    except ModelError:
        return ()
    return tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None for p in (card_path, weights))


def read_card(path: str | Path | None = None) -> ModelCard:
    card_path, _ = _card_paths(path or SHIPPED_MODEL)
    if not card_path.exists():
        raise ModelError(f"model card not found: {card_path}")
    return ModelCard.from_json(read_json(card_path, ModelError, "model card"), card_path)


def embedding_width(card: ModelCard) -> int | None:
    """Width of the model's penultimate embedding (what its linear head reads), from the
    weights file's header without loading the tensors; None when that cannot be read.
    Stored embeddings (caches, the similar-case index) of another width are not this model's."""
    from safetensors import safe_open
    last: dict[str, tuple[int, str]] = {}      # each network's last head layer (an ensemble has one per member)
    try:
        with safe_open(str(card.weights_path), "pt") as f:
            for k in f.keys():
                m = re.fullmatch(r"((?:members\.\d+\.)?)head\.(\d+)\.weight", k)
                if m:
                    last[m.group(1)] = max(last.get(m.group(1), (-1, k)), (int(m.group(2)), k))
            shapes = [f.get_slice(k).get_shape() for _, k in last.values()]
    except (SafetensorError, OSError, TypeError, ValueError):
        return None
    if not shapes or any(len(s) != 2 for s in shapes):
        return None
    return sum(int(s[1]) for s in shapes)


def empty_network(card: ModelCard) -> DermNet | EnsembleNet:
    """The network a card describes, with random weights (the weights file is loaded into it)."""
    n = len(card.classes)
    if card.members:
        return EnsembleNet([create_model(m.arch, n, card.use_metadata, pretrained="none") for m in card.members])
    return create_model(card.arch, n, card.use_metadata, pretrained="none")


def load_model(path: str | Path | None = None) -> tuple[DermNet | EnsembleNet, ModelCard]:
    """Load weights + card (default: the shipped model), refusing anything inconsistent.

    Raises:
        ModelError: missing/truncated files, wrong classes, wrong tensor names or shapes.
    """
    card = read_card(path)
    weights = card.weights_path
    if weights.parent != card.path.parent or not weights.is_file():
        raise ModelError(f"weights file not found next to {card.path}: {weights.name}")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    model = empty_network(card)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ModelError(f"{weights} does not match a {card.architecture} with {len(card.classes)} classes "
                         f"(metadata={card.use_metadata}): missing {missing[:3]}, unexpected {extra[:3]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ModelError(f"{weights}: tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)} "
                         f"(the card says {len(card.classes)} classes)")
    model.load_state_dict(state)
    model.eval()
    return model, card
