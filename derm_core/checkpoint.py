"""Model files: safetensors weights plus a JSON model card; never a pickle.

``weights/<name>.safetensors`` holds the tensors, ``weights/<name>.json`` the card
(architecture, classes, taxonomy, preprocessing, temperature, thresholds, training command,
metrics, provenance). Every write goes to a temporary file first and is renamed into place,
so a crash never leaves a half-written model. Training checkpoints (for resuming) use the
same format: optimizer and RNG state are tensors in safetensors, the rest JSON.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DermTriageError
from .models import DermNet, create_model, list_archs
from .taxonomy import Taxonomy
from .triage import Thresholds

CARD_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "default" / "model.json"
ENV_MODEL = "DERMTRIAGE_MODEL"
REQUIRED = ("arch", "taxonomy", "use_metadata", "preprocessing", "temperature", "thresholds")


MIN_INPUT, MAX_INPUT = 16, 2048   # model input side, pixels (the Model lab's image-size limits)


class ModelError(DermTriageError, ValueError):
    """A model file that cannot be used, with the reason."""


def _is_number(v) -> bool:
    """A finite JSON number (not a bool, not a string such as "0.1", not NaN or Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:     # writable: Windows refuses to fsync a read-only handle
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


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


@dataclass
class ModelCard:
    """The JSON sidecar of a model, read into typed accessors."""

    data: dict
    path: Path | None = None

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy.from_dict(self.data["taxonomy"])

    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.classes

    @property
    def arch(self) -> str:
        return self.data["arch"]

    @property
    def use_metadata(self) -> bool:
        return bool(self.data["use_metadata"])

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.data["preprocessing"]["input_size"])

    @property
    def mean(self) -> list[float]:
        return self.data["preprocessing"]["mean"]

    @property
    def std(self) -> list[float]:
        return self.data["preprocessing"]["std"]

    @property
    def split_file(self) -> Path | None:
        """The lesion-grouped split the model was trained on (``split.csv`` beside the card unless
        the card names another); None for a card not read from a file."""
        if self.path is None:
            return None
        return self.path.parent / self.data.get("training", {}).get("split_file", "split.csv")

    @property
    def temperature(self) -> float:
        return float(self.data["temperature"])

    @property
    def thresholds(self) -> Thresholds:
        t = self.data["thresholds"]
        return Thresholds(dict(t["classes"]), dict(t["tiers"]), t.get("name", "model default"))

    @property
    def balanced_rule(self):
        """The prior-corrected decision rule fitted on validation (None on cards from before it)."""
        from .decision import BalancedRule
        d = (self.data.get("decision_rules") or {}).get("balanced")
        return BalancedRule.from_dict(d) if d else None

    @property
    def name(self) -> str:
        return self.data.get("name") or (self.path.stem if self.path else "model")

    @property
    def version(self) -> str:
        return str(self.data.get("version", "0"))

    def validate(self) -> None:
        """Check every field the predictor, trainer and pages read, so that a card that loads
        can be used: each problem is a :class:`ModelError` naming the file and the field.

        Raises:
            ModelError: a missing field, or one of the wrong type, length or range.
        """
        where = f"model card {self.path}" if self.path else "model card"

        def bad(field: str, problem: str) -> ModelError:
            return ModelError(f"{where}: field '{field}' {problem}")

        d = self.data
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ModelError(f"{where} lacks {missing}")
        if not isinstance(d["arch"], str) or d["arch"] not in list_archs():
            raise ModelError(f"{where}: unknown architecture {d['arch']!r} (field 'arch')")
        if not isinstance(d["taxonomy"], dict):
            raise bad("taxonomy", f"must be an object with the classes and tiers, not {d['taxonomy']!r}")
        try:
            tax = self.taxonomy
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise bad("taxonomy", f"is not a usable taxonomy ({e})") from None
        if "classes" in d and (not isinstance(d["classes"], list) or list(d["classes"]) != list(tax.classes)):
            raise bad("classes", f"is {d['classes']!r}, but the taxonomy lists {list(tax.classes)}")
        if not isinstance(d["use_metadata"], bool):
            raise bad("use_metadata", f"must be true or false, not {d['use_metadata']!r}")
        pre = d["preprocessing"]
        if not isinstance(pre, dict):
            raise bad("preprocessing", f"must be an object, not {pre!r}")
        for k in ("input_size", "mean", "std"):
            if k not in pre:
                raise bad(f"preprocessing.{k}", "is missing")
        size = pre["input_size"]
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and MIN_INPUT <= v <= MAX_INPUT for v in size)):
            raise bad("preprocessing.input_size", f"must be [height, width], two whole numbers from {MIN_INPUT} to "
                                                  f"{MAX_INPUT}, not {size!r}")
        for k in ("mean", "std"):
            v = pre[k]
            if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v):
                raise bad(f"preprocessing.{k}", f"must be three finite numbers (one per colour channel), not {v!r}")
        if not all(x > 0 for x in pre["std"]):
            raise bad("preprocessing.std", f"must be positive (it divides the pixels), not {pre['std']!r}")
        if "tta" in pre and not isinstance(pre["tta"], bool):
            raise bad("preprocessing.tta", f"must be true or false, not {pre['tta']!r}")
        t = d["temperature"]
        if not _is_number(t) or not 0 < t <= 1e3:
            raise bad("temperature", f"must be a finite number above 0 (at most 1000), not {t!r}")
        th = d["thresholds"]
        if not isinstance(th, dict) or not isinstance(th.get("classes"), dict) or not isinstance(th.get("tiers"), dict):
            raise bad("thresholds", "must hold 'classes' and 'tiers' objects")
        for group in ("classes", "tiers"):
            for k, v in th[group].items():
                if not _is_number(v) or not 0.0 <= v <= 1.0:
                    raise bad(f"thresholds.{group}.{k}", f"must be a number between 0 and 1, not {v!r}")
        try:
            self.thresholds.check(tax)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{where}: field 'thresholds': {e}") from None
        ood = d.get("out_of_scope")
        if ood is not None:
            from .ood import SCORES
            if not isinstance(ood, dict):
                raise bad("out_of_scope", f"must be an object or null, not {ood!r}")
            if ood.get("score") not in SCORES:
                raise bad("out_of_scope.score", f"must be one of {list(SCORES)}, not {ood.get('score')!r}")
            if not _is_number(ood.get("threshold")):
                raise bad("out_of_scope.threshold", f"must be a finite number, not {ood.get('threshold')!r}")
        for k in ("weights_file", "name"):
            if k in d and d[k] is not None and not isinstance(d[k], str):
                raise bad(k, f"must be a string, not {d[k]!r}")
        if "training" in d and not isinstance(d["training"], dict):
            raise bad("training", f"must be an object, not {d['training']!r}")


def _card_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        p = p / "model.json"
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if p.suffix != ".json":
        raise ModelError(f"{path}: give a model card (.json), its .safetensors, or a run folder")
    return p, p.with_suffix(".safetensors")


def save_model(model: DermNet, card: dict, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` then ``<path>.json`` (the card last: it marks completeness)."""
    card_path, weights_path = _card_paths(Path(path).with_suffix(".json"))
    card = {"format_version": CARD_VERSION, **card, "weights_file": weights_path.name}
    # Both files are written in full before either replaces anything, so a failure while
    # writing (a card that is not JSON-serialisable, a full disk, a kill) leaves any previous
    # model in this place intact rather than new weights under the old card.
    card_bytes = _json_bytes(card)
    staged_weights = _stage_tensors(weights_path, model.state_dict(), {"arch": model.arch})
    try:
        staged_card = _stage_bytes(card_path, card_bytes)
    except BaseException:
        Path(staged_weights).unlink(missing_ok=True)
        raise
    _publish((staged_weights, weights_path), (staged_card, card_path))
    return card_path


def read_card(path: str | Path | None = None) -> ModelCard:
    card_path, _ = _card_paths(path or DEFAULT_MODEL)
    if not card_path.is_file():
        raise ModelError(f"model card not found: {card_path}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"model card {card_path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"model card {card_path} is not a JSON object")
    card = ModelCard(data, card_path)
    card.validate()
    return card


def load_model(path: str | Path | None = None) -> tuple[DermNet, ModelCard]:
    """Load weights + card (default: the shipped model), refusing anything inconsistent.

    Raises:
        ModelError: missing/truncated files, wrong classes, wrong tensor names or shapes.
    """
    card = read_card(path)
    weights = card.path.with_name(card.data.get("weights_file", card.path.with_suffix(".safetensors").name))
    if weights.parent != card.path.parent or not weights.is_file():
        raise ModelError(f"weights file not found next to {card.path}: {weights.name}")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    model = create_model(card.arch, len(card.classes), card.use_metadata, pretrained="none")
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ModelError(f"{weights} does not match a {card.arch} with {len(card.classes)} classes "
                         f"(metadata={card.use_metadata}): missing {missing[:3]}, unexpected {extra[:3]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ModelError(f"{weights}: tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)} "
                         f"(the card says {len(card.classes)} classes)")
    model.load_state_dict(state)
    model.eval()
    return model, card
