"""The model card: one typed, frozen description of a trained model, and its JSON form.

A card says what the network is (architecture, taxonomy, preprocessing, metadata use), how
its outputs are read (temperature, class and tier thresholds, decision rules, out-of-scope
detector) and where it came from (training record, metrics, provenance). It is read and
validated once (:meth:`ModelCard.from_json`, errors name the file and the field), changed
with :func:`dataclasses.replace`, and written only by :meth:`ModelCard.to_json` (see
:func:`derm_core.model.checkpoint.write_card`). Nothing else reads the raw JSON.

``format_version`` 2 is this typed card; older cards (1, or none) are migrated on read.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from derm_core.data.taxonomy import Taxonomy
from derm_core.errors import ModelError
from derm_core.model.decision import BalancedRule
from derm_core.model.networks import ENSEMBLE, list_archs
from derm_core.model.ood import SCORES as OOD_SCORES
from derm_core.triage.rules import Thresholds

FORMAT_VERSION = 2
MIN_INPUT, MAX_INPUT = 16, 2048   # a card's input side, pixels (training's own limits: TrainConfig.image_size)
SPLIT_FILE = "split.csv"          # the training split beside the card, unless the card names another


def _is_number(v) -> bool:
    """A finite JSON number (not a bool, not a string such as "0.1", not NaN or Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the network's input."""

    input_size: tuple[int, int]                 # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tta: bool = False                           # average over the four flips
    interpolation: str = "bilinear, antialiased"
    resize: str = "cover then centre-crop"
    extra: dict = field(default_factory=dict)   # keys this version does not interpret, kept as they were


@dataclass(frozen=True)
class OutOfScope:
    """The out-of-scope detector's rule (its centroids live in ``<card>.ood.safetensors``)."""

    score: str
    threshold: float
    in_distribution_pass: float | None = None
    file: str | None = None
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRecord:
    """How the model was trained: the command, the resolved settings and what happened."""

    command: str | None = None
    config: dict = field(default_factory=dict)          # the TrainConfig, as JSON
    split_file: str = SPLIT_FILE                         # relative to the card's folder
    data: dict = field(default_factory=dict)             # folder, n_images, source, license
    wall_time_s: float | None = None
    details: dict = field(default_factory=dict)          # history, epochs, device, versions, ...

    _TYPED = ("command", "config", "split_file", "data", "wall_time_s")

    @classmethod
    def from_json(cls, d: dict) -> TrainingRecord:
        return cls(command=d.get("command"), config=dict(d.get("config") or {}),
                   split_file=d.get("split_file") or SPLIT_FILE, data=dict(d.get("data") or {}),
                   wall_time_s=d.get("wall_time_s"), details={k: v for k, v in d.items() if k not in cls._TYPED})

    @property
    def commands(self) -> list[str]:
        """Every command of the run, in order (a resumed run repeats its command), or the one."""
        return self.details.get("commands") or [self.command]

    @property
    def epochs_run(self) -> int | None:
        """How many epochs the run trained (None: not recorded)."""
        n = self.details.get("epochs_run")
        return int(n) if isinstance(n, (int, float)) else (len(self.details.get("history") or []) or None)

    def to_json(self) -> dict:
        out = {"command": self.command, "config": self.config, **self.details, "split_file": self.split_file,
               "data": self.data}
        if self.wall_time_s is not None:
            out["wall_time_s"] = self.wall_time_s
        return out


@dataclass(frozen=True)
class Member:
    """One member of an ensemble card: its network and where it came from (the run it was
    trained in: its card's name, version and weights hash, and how it was trained)."""

    arch: str
    name: str = ""
    version: str = ""
    weights_sha256: str | None = None
    training: dict = field(default_factory=dict)     # command, seed, epochs, wall time, validation metrics

    def to_json(self) -> dict:
        return {"arch": self.arch, "name": self.name, "version": self.version, "weights_sha256": self.weights_sha256,
                "training": self.training}

    @classmethod
    def from_json(cls, d: dict) -> Member:
        return cls(d["arch"], d.get("name") or "", str(d.get("version") or ""), d.get("weights_sha256"),
                   dict(d.get("training") or {}))

    @property
    def label(self) -> str:
        """How pages name the member: its run and network."""
        return f"{self.name or 'member'} ({self.arch})"


@dataclass(frozen=True)
class ModelIdentity:
    """What ties stored results (threshold profiles, reader studies, caches) to one model:
    the weights' hash and the calibration, plus names a person reads."""

    card: str | None
    name: str
    version: str
    arch: str
    weights_sha256: str | None
    temperature: float
    taxonomy: str
    preprocessing: Preprocessing
    use_metadata: bool

    def to_dict(self) -> dict:
        """The stored form (profiles and studies keep it; without the preprocessing)."""
        return {"card": self.card, "name": self.name, "version": self.version, "arch": self.arch,
                "weights_sha256": self.weights_sha256, "temperature": self.temperature, "taxonomy": self.taxonomy}

    @property
    def network_key(self) -> str:
        """A short hash of everything that changes the logits (weights, preprocessing, metadata
        use): the key of cached predictions, which recalibration leaves valid."""
        return _short_hash({"weights": self.weights_sha256 or f"{self.card}:{self.version}", "arch": self.arch,
                            "pre": asdict(self.preprocessing), "metadata": self.use_metadata})

    @property
    def key(self) -> str:
        """A short hash of everything that changes the calibrated outputs: the network and
        the temperature (cache key of explanations and pages' results)."""
        return _short_hash({"network": self.network_key, "temperature": self.temperature})


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()[:20]


_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) so a big weights file is read once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


@dataclass(frozen=True)
class ModelCard:
    """A trained model's card. ``path`` is where it was read from (None for one built in memory)."""

    arch: str
    taxonomy: Taxonomy
    use_metadata: bool
    preprocessing: Preprocessing
    temperature: float
    thresholds: Thresholds
    tier_sensitivity_targets: dict | None = None
    balanced_rule: BalancedRule | None = None           # the prior-corrected decision rule (validation-fitted)
    out_of_scope: OutOfScope | None = None
    training: TrainingRecord | None = None
    metrics: dict = field(default_factory=dict)         # {"val"|"test": headline report}
    name: str = "model"
    version: str = "0"
    timm_name: str | None = None
    weights_file: str | None = None
    recalibrations: tuple[dict, ...] = ()
    members: tuple[Member, ...] = ()                     # an ensemble's members (arch is then "ensemble")
    extra: dict = field(default_factory=dict)            # top-level keys this version does not interpret, kept
    format_version: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ convenient views
    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.classes

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)

    @property
    def architecture(self) -> str:
        """The network in words: the arch, or an ensemble's members' archs."""
        if not self.members:
            return self.arch
        archs = [m.arch for m in self.members]
        return f"ensemble of {len(archs)}: " + ", ".join(f"{archs.count(a)} x {a}" for a in dict.fromkeys(archs))

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @property
    def tta(self) -> bool:
        return self.preprocessing.tta

    @property
    def weights_path(self) -> Path | None:
        """The safetensors file beside the card (None for a card not read from a file)."""
        if self.path is None:
            return None
        return self.path.with_name(self.weights_file or self.path.with_suffix(".safetensors").name)

    @property
    def split_file(self) -> Path | None:
        """The lesion-grouped split the model was trained on (``split.csv`` beside the card unless
        the card names another); None for a card not read from a file."""
        if self.path is None:
            return None
        return self.path.parent / (self.training.split_file if self.training else SPLIT_FILE)

    @property
    def trained_on(self) -> str | None:
        """The dataset folder the model was trained on, as recorded."""
        return (self.training.data.get("folder") if self.training else None) or None

    def weights_sha256(self) -> str:
        """Hash of the weights file (raises OSError when it is missing)."""
        if self.weights_path is None:
            raise FileNotFoundError("the model card was not read from a file: no weights to hash")
        return file_sha256(self.weights_path)

    def identity(self) -> ModelIdentity:
        """The model's one identity (see :class:`ModelIdentity`); the weights hash is None
        when there is no weights file to read."""
        try:
            sha = self.weights_sha256()
        except OSError:
            sha = None
        return ModelIdentity(str(self.path) if self.path else None, self.name, self.version, self.arch, sha,
                             float(self.temperature), self.taxonomy.name, self.preprocessing, self.use_metadata)

    def with_(self, **changes) -> ModelCard:
        """A copy with some fields changed (the card itself never changes)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """The card's JSON form (what :func:`derm_core.model.checkpoint.write_card` writes); a copy,
        so changing it never changes the (shared) card."""
        d: dict[str, Any] = {"format_version": FORMAT_VERSION, "name": self.name, "version": self.version}
        d["arch"] = self.arch
        if self.timm_name:
            d["timm_name"] = self.timm_name
        d["taxonomy"] = self.taxonomy.to_dict()
        d["use_metadata"] = self.use_metadata
        p = self.preprocessing
        d["preprocessing"] = {"input_size": list(p.input_size), "mean": list(p.mean), "std": list(p.std),
                              "interpolation": p.interpolation, "resize": p.resize, "tta": p.tta, **p.extra}
        if self.training is not None:
            d["training"] = self.training.to_json()
        d["temperature"] = float(self.temperature)
        th = {"name": self.thresholds.name, "classes": dict(self.thresholds.classes), "tiers": dict(self.thresholds.tiers)}
        if self.tier_sensitivity_targets is not None:
            th["tier_sensitivity_targets"] = dict(self.tier_sensitivity_targets)
        d["thresholds"] = th
        if self.balanced_rule is not None:
            d["decision_rules"] = {"balanced": self.balanced_rule.to_dict()}
        if self.metrics:
            d["metrics"] = self.metrics
        if self.recalibrations:
            d["recalibrations"] = list(self.recalibrations)
        if self.weights_file:
            d["weights_file"] = self.weights_file
        if self.members:
            d["members"] = [m.to_json() for m in self.members]
        if self.out_of_scope is not None:
            o = self.out_of_scope
            d["out_of_scope"] = {"score": o.score, "threshold": o.threshold,
                                 **({"in_distribution_pass": o.in_distribution_pass}
                                    if o.in_distribution_pass is not None else {}),
                                 **({"file": o.file} if o.file else {}), **({"report": o.report} if o.report else {})}
        d.update(self.extra)
        return copy.deepcopy(d)

    @classmethod
    def from_json(cls, data: dict, path: str | Path | None = None) -> ModelCard:
        """Validate and read a card's JSON (any format version: older ones are migrated).

        Raises:
            ModelError: a missing field, or one of the wrong type, length or range, named.
        """
        path = Path(path) if path is not None else None
        where = f"model card {path}" if path else "model card"
        if not isinstance(data, dict):
            raise ModelError(f"{where} is not a JSON object")
        d = migrate(data, where)
        tax = _validate(d, where)
        pre = d["preprocessing"]
        th = d["thresholds"]
        rules = d.get("decision_rules") or {}
        ood = d.get("out_of_scope")
        known_pre = {f.name for f in fields(Preprocessing)} - {"extra"}
        return cls(
            arch=d["arch"], taxonomy=tax, use_metadata=d["use_metadata"],
            preprocessing=Preprocessing(**{**{k: v for k, v in pre.items() if k in known_pre},
                                           "input_size": tuple(pre["input_size"]),
                                           "mean": tuple(float(v) for v in pre["mean"]),
                                           "std": tuple(float(v) for v in pre["std"])},
                                        extra={k: v for k, v in pre.items() if k not in known_pre}),
            temperature=float(d["temperature"]),
            thresholds=Thresholds(dict(th["classes"]), dict(th["tiers"]), th["name"]),
            tier_sensitivity_targets=th.get("tier_sensitivity_targets"),
            balanced_rule=BalancedRule.from_dict(rules["balanced"]) if rules.get("balanced") else None,
            out_of_scope=None if not ood else OutOfScope(ood["score"], float(ood["threshold"]),
                                                         ood.get("in_distribution_pass"), ood.get("file"),
                                                         dict(ood.get("report") or {})),
            training=TrainingRecord.from_json(d["training"]) if d.get("training") else None,
            metrics=dict(d.get("metrics") or {}), name=d.get("name") or (path.stem if path else "model"),
            version=str(d.get("version", "0")),
            timm_name=d.get("timm_name"), weights_file=d.get("weights_file"),
            recalibrations=tuple(d.get("recalibrations") or ()),
            members=tuple(Member.from_json(m) for m in d.get("members") or ()), extra={k: v for k, v in d.items() if k not in _KNOWN},
            path=path)


def migrate(data: dict, where: str = "model card") -> dict:
    """The card's JSON upgraded to :data:`FORMAT_VERSION` (a new dict; the input is not changed).

    Version 1 (and cards without a version) left optional fields implicit (a missing ``tta``
    meant none, a missing threshold name "model default") and repeated the class list beside
    the taxonomy; version 2 writes the defaults out and keeps the classes in the taxonomy only."""
    v = data.get("format_version", 1)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ModelError(f"{where}: field 'format_version' must be a whole number from 1, not {v!r}")
    if v > FORMAT_VERSION:
        raise ModelError(f"{where} has format version {v}; this DermTriage reads up to {FORMAT_VERSION}: update it")
    d = json.loads(json.dumps(data))       # a deep copy of plain JSON
    if v == 1:
        pre = d.get("preprocessing")
        if isinstance(pre, dict):
            pre.setdefault("tta", False)
        d["format_version"] = 2
    th = d.get("thresholds")
    if isinstance(th, dict):
        th.setdefault("name", Thresholds.name)
    return d


REQUIRED = ("arch", "taxonomy", "use_metadata", "preprocessing", "temperature", "thresholds")
_KNOWN = {*REQUIRED, "format_version", "name", "version", "timm_name", "classes", "training", "decision_rules",
          "metrics", "recalibrations", "weights_file", "out_of_scope", "members"}


def _validate(d: dict, where: str) -> Taxonomy:
    """Check every field the predictor, trainer and pages read, so that a card that loads can be
    used; returns the taxonomy. Each problem is a :class:`ModelError` naming the file and field."""

    def bad(name: str, problem: str) -> ModelError:
        return ModelError(f"{where}: field '{name}' {problem}")

    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise ModelError(f"{where} lacks {missing}")
    members = d.get("members")
    if d["arch"] == ENSEMBLE or members is not None:
        if d["arch"] != ENSEMBLE or not isinstance(members, list) or len(members) < 2:
            raise ModelError(f"{where}: an ensemble has arch {ENSEMBLE!r} and a list of at least two 'members'; "
                             f"this card has arch {d['arch']!r} and members {members!r}")
        for i, m in enumerate(members):
            if not isinstance(m, dict) or m.get("arch") not in list_archs():
                raise bad(f"members[{i}]", f"must be an object whose 'arch' is one of {list_archs()}, not {m!r}")
            if m.get("training") is not None and not isinstance(m["training"], dict):
                raise bad(f"members[{i}].training", f"must be an object, not {m['training']!r}")
    elif not isinstance(d["arch"], str) or d["arch"] not in list_archs():
        raise ModelError(f"{where}: unknown architecture {d['arch']!r} (field 'arch')")
    if not isinstance(d["taxonomy"], dict):
        raise bad("taxonomy", f"must be an object with the classes and tiers, not {d['taxonomy']!r}")
    try:
        tax = Taxonomy.from_dict(d["taxonomy"])
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
        Thresholds(dict(th["classes"]), dict(th["tiers"])).check(tax)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{where}: field 'thresholds': {e}") from None
    targets = th.get("tier_sensitivity_targets")
    if targets is not None and (not isinstance(targets, dict) or not all(_is_number(v) for v in targets.values())):
        raise bad("thresholds.tier_sensitivity_targets", f"must map tiers to numbers, not {targets!r}")
    rules = d.get("decision_rules")
    if rules is not None:
        if not isinstance(rules, dict):
            raise bad("decision_rules", f"must be an object, not {rules!r}")
        if rules.get("balanced") is not None:
            try:
                BalancedRule.from_dict(rules["balanced"])
            except (ValueError, KeyError, TypeError) as e:
                raise bad("decision_rules.balanced", f"is not a usable rule ({e})") from None
    ood = d.get("out_of_scope")
    if ood is not None:
        if not isinstance(ood, dict):
            raise bad("out_of_scope", f"must be an object or null, not {ood!r}")
        if ood.get("score") not in OOD_SCORES:
            raise bad("out_of_scope.score", f"must be one of {list(OOD_SCORES)}, not {ood.get('score')!r}")
        if not _is_number(ood.get("threshold")):
            raise bad("out_of_scope.threshold", f"must be a finite number, not {ood.get('threshold')!r}")
        if ood.get("in_distribution_pass") is not None and not _is_number(ood["in_distribution_pass"]):
            raise bad("out_of_scope.in_distribution_pass", f"must be a number, not {ood['in_distribution_pass']!r}")
        if ood.get("file") is not None and not isinstance(ood["file"], str):
            raise bad("out_of_scope.file", f"must be a file name, not {ood['file']!r}")
        if ood.get("report") is not None and not isinstance(ood["report"], dict):
            raise bad("out_of_scope.report", f"must be an object, not {ood['report']!r}")
    for k in ("weights_file", "name", "timm_name"):
        if k in d and d[k] is not None and not isinstance(d[k], str):
            raise bad(k, f"must be a string, not {d[k]!r}")
    tr = d.get("training")
    if tr is not None:
        if not isinstance(tr, dict):
            raise bad("training", f"must be an object, not {tr!r}")
        for k, kind, what in (("split_file", str, "a file name"), ("config", dict, "an object"),
                              ("data", dict, "an object"), ("command", str, "a string")):
            if tr.get(k) is not None and not isinstance(tr[k], kind):
                raise bad(f"training.{k}", f"must be {what}, not {tr[k]!r}")
        if tr.get("wall_time_s") is not None and not _is_number(tr["wall_time_s"]):
            raise bad("training.wall_time_s", f"must be a number, not {tr['wall_time_s']!r}")
    for k in ("metrics",):
        if k in d and d[k] is not None and not isinstance(d[k], dict):
            raise bad(k, f"must be an object, not {d[k]!r}")
    if "recalibrations" in d and not isinstance(d["recalibrations"], list):
        raise bad("recalibrations", f"must be a list, not {d['recalibrations']!r}")
    return tax
