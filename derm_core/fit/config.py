"""The training settings, defined once: :class:`TrainConfig` and what each field means.

The command line (``python -m derm_core train``), the Model lab's training form, the
background job (:mod:`derm_core.fit.jobs`) and the run-folder checks (:mod:`derm_core.fit.run_folder`)
all read the fields below instead of repeating them. Each field's ``metadata`` may hold:

``help``
    the command line's help text.
``choices``
    the allowed values: a tuple, or a function returning them (the architecture registry).
``bounds``
    ``(low, high)``, inclusive (each side, for ``image_size``): checked by
    :func:`derm_core.fit.run_folder.validate_config`, the Model lab's widget limits.
``off``
    the command-line value that means None: ``--ema-decay 0`` (no EMA), ``--freeze-epochs 0``
    (frozen for the whole run).
``flag``
    a bool's command-line spelling when it is not ``--name/--no-name``: one flag that sets the
    opposite of the default (``resume`` <- ``--no-resume``).
``metavar``, ``required``
    as in :meth:`argparse.ArgumentParser.add_argument`.
``cli``
    False for the settings not on the command line (``weight_decay``, ``meta_dropout``,
    ``tier_sensitivity``): a background job can only run them at their defaults.

From these, :func:`add_config_arguments` builds the ``train`` options, :func:`config_from_args`
turns the parsed namespace into a TrainConfig, :func:`config_argv` writes a TrainConfig as
the arguments that parse back to it, and :meth:`TrainConfig.from_dict` reads one back from
JSON (a job file), ignoring unknown keys.

The fields are in the order ``train --help`` lists them.
"""
from __future__ import annotations

import argparse
import functools
import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace

from derm_core.model.device import KINDS
from derm_core.model.networks import DEFAULT_ARCH, list_archs
from derm_core.triage.rules import DEFAULT_TIER_SENSITIVITY

MONITORS = ("val_loss", "val_macro_auc", "val_balanced_accuracy", "val_accuracy")
LOSSES = ("cross_entropy", "logit_adjusted")
CLASS_WEIGHTING = ("none", "sqrt", "inverse")
PRETRAINED = ("offline", "hub", "none")
DEVICES = KINDS                       # or "cuda:N"; None picks CUDA when present (checked by device.py)


def _setting(default=MISSING, *, factory=MISSING, **metadata) -> Field:
    """A TrainConfig field: its default and the metadata described above."""
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class TrainConfig:
    data: str | None = _setting(None, help="dataset folder (HAM10000 or generic layout); default $DERMTRIAGE_DATA")
    csv: str | None = _setting(None, help="label CSV inside the folder (default metadata.csv or labels.csv)")
    out: str = _setting("runs/run", required=True, help="run folder (resumed if it holds a checkpoint)")
    arch: str = _setting(DEFAULT_ARCH, choices=list_archs)
    taxonomy: str = _setting("ham7", help="taxonomy name or JSON file")
    split_file: str | None = _setting(None, help="reuse/create this split file (default <out>/split.csv)")
    seed: int = _setting(0, bounds=(0, 2**32 - 1))
    epochs: int = _setting(12, bounds=(1, 500))
    batch_size: int | None = _setting(None, bounds=(1, 512),
                                      help="images per step (default: 32 on a CPU, 128 on a GPU)")
    lr: float = _setting(1e-3, bounds=(1e-6, 1.0),
                         help="learning rate at batch 32; another batch size scales it by sqrt(batch / 32)")
    weight_decay: float = _setting(1e-2, bounds=(0.0, 10.0), cli=False)
    # (H, W); None: the architecture's
    image_size: tuple[int, int] | None = _setting(None, bounds=(16, 1024), metavar=("H", "W"))
    metadata: bool = _setting(True, help="fuse age/sex/site")
    meta_dropout: float = _setting(0.3, bounds=(0.0, 1.0), cli=False)
    pretrained: str = _setting("offline", choices=PRETRAINED)
    # the arch's early layers frozen for freeze_epochs epochs, then all layers train (None: the whole run)
    freeze_early: bool = _setting(True, help="freeze the arch's early layers for the first --freeze-epochs epochs")
    freeze_epochs: int | None = _setting(1, bounds=(0, 500), off=0,
                                         help="epochs with the early layers frozen (0: the whole run)")
    # loss weights; the logit-adjusted loss replaces them
    class_weighting: str = _setting("none", choices=CLASS_WEIGHTING)
    # logit_adjusted: Menon et al. 2021; balanced softmax at tau 1
    loss: str = _setting("logit_adjusted", choices=LOSSES,
                         help="logit_adjusted: cross-entropy on logits + tau*log(prior) (balanced softmax at tau 1)")
    logit_tau: float = _setting(1.0, bounds=(0.0, 10.0))    # the logit adjustment's tau * log(class prior)
    label_smoothing: float = _setting(0.1, bounds=(0.0, 0.99))
    # weight EMA (timm ModelEmaV3, warm-up); validated and shipped; None: off
    ema_decay: float | None = _setting(0.998, bounds=(0.0, 0.99999), off=0, help="weight EMA decay (0: off)")
    patience: int = _setting(4, bounds=(1, 10_000))
    monitor: str = _setting("val_loss", choices=MONITORS, help="early stopping / best epoch")
    workers: int = _setting(1, bounds=(0, 64))   # unused: batches are built as tensors in the training process
    tier_sensitivity: dict = _setting(factory=lambda: dict(DEFAULT_TIER_SENSITIVITY), cli=False)
    limit: int | None = _setting(None, bounds=(1, 10**7), help="use only the first N images (smoke runs)")
    init_from: str | None = _setting(None, help="fine-tune from this model card (default: ImageNet weights)")
    # distillation (Hinton et al. 2015): the teacher's probabilities on the training photos as a second target
    teacher: str | None = _setting(None, help="distil from this model card (e.g. an ensemble) trained on the same split")
    distill_weight: float = _setting(0.5, bounds=(0.0, 1.0),
                                     help="with --teacher: the weight of matching the teacher (the labels get the rest)")
    tta: bool = _setting(True, help="average over flips at evaluation and inference")
    resume: bool = _setting(True, flag="--no-resume", help="ignore an existing checkpoint in --out")
    device: str | None = _setting(None, help=f"force {' or '.join(DEVICES)}")    # None: CUDA when present, else CPU

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A TrainConfig from ``asdict`` JSON, possibly older or newer: unknown keys are
        ignored, missing ones get their defaults."""
        kw = {k: v for k, v in d.items() if k in _fields()}
        if kw.get("image_size") is not None:
            kw["image_size"] = tuple(kw["image_size"])
        return cls(**kw)


BASE_BATCH = 32                            # the batch size ``lr`` is given for
DEVICE_BATCH = {"cpu": 32, "cuda": 128}    # a GPU's raw step is ~2x faster at 128-256 than at 64 (issue 19)


def device_batch(device) -> int:
    """The default batch size on ``device`` (a torch.device or its name)."""
    return DEVICE_BATCH.get(str(device).split(":")[0], BASE_BATCH)


def for_device(cfg: TrainConfig, device) -> TrainConfig:
    """``cfg`` with its batch size set: the one asked for, or the device's default."""
    return cfg if cfg.batch_size is not None else replace(cfg, batch_size=device_batch(device))


def scaled_lr(cfg: TrainConfig) -> float:
    """The learning rate at ``cfg``'s batch size: square-root scaling from :data:`BASE_BATCH`,
    the usual rule for Adam-type optimisers (the shipped CPU recipe, batch 32, is unchanged)."""
    return cfg.lr * math.sqrt((cfg.batch_size or BASE_BATCH) / BASE_BATCH)


@functools.cache
def _fields() -> dict[str, Field]:
    return {f.name: f for f in fields(TrainConfig)}


@functools.cache
def _hint(name: str) -> tuple[object, bool]:
    """A field's annotation without ``| None``, and whether it has one."""
    hint = typing.get_type_hints(TrainConfig)[name]
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint, optional


def value_type(name: str) -> tuple[type, bool]:
    """A field's value type (str, int, float, bool, tuple or dict) and whether it may be None."""
    hint, optional = _hint(name)
    return typing.get_origin(hint) or hint, optional


def default(name: str):
    """A setting's default value (a fresh copy for a mutable one)."""
    f = _fields()[name]
    return f.default_factory() if f.default is MISSING else f.default


def choices(name: str) -> tuple | None:
    """The allowed values of a setting (None: any)."""
    c = _fields()[name].metadata.get("choices")
    return tuple(c()) if callable(c) else c


def bounds(name: str) -> tuple | None:
    """The inclusive (low, high) limits of a numeric setting (each side, for image_size)."""
    return _fields()[name].metadata.get("bounds")


def cli_fields() -> list[Field]:
    """The fields with a command-line option, in ``--help`` order."""
    return [f for f in _fields().values() if f.metadata.get("cli", True)]


def flag(name: str) -> str:
    """A setting's command-line option: ``--batch-size``, ``--no-resume``, ..."""
    return _fields()[name].metadata.get("flag") or "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, names=None) -> None:
    """Add an option to ``parser`` for each command-line setting (or only those in ``names``),
    each parsed into the attribute of the field's name (``--no-resume`` into ``resume``)."""
    for f in cli_fields():
        if names is not None and f.name not in names:
            continue
        m, (typ, _) = f.metadata, value_type(f.name)
        kw = {"dest": f.name, "help": m.get("help")}
        if typ is bool:
            kw.update(action=("store_false" if f.default else "store_true") if m.get("flag")
                      else argparse.BooleanOptionalAction, default=f.default)
        elif m.get("required"):
            kw.update(type=typ, required=True)
        else:
            kw.update(default=f.default, choices=choices(f.name))
            if typ is tuple:
                elem = typing.get_args(_hint(f.name)[0])
                kw.update(type=elem[0], nargs=len(elem), metavar=m.get("metavar"))
            else:
                kw.update(type=typ)
        parser.add_argument(flag(f.name), **kw)


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a namespace parsed with :func:`add_config_arguments`' options."""
    kw = {}
    for f in cli_fields():
        v = getattr(ns, f.name)
        off = f.metadata.get("off")
        if off is not None and v is not None and v == off:
            v = None
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return TrainConfig(**kw)


def config_argv(cfg: TrainConfig) -> list[str]:
    """``train`` arguments that parse back to ``cfg``: the required options and every
    setting that is not at its default (``python -m derm_core train`` + these, parsed with
    :func:`config_from_args`, gives ``cfg`` again; an ``ema_decay`` or ``freeze_epochs`` of 0
    comes back as None, which is what 0 means there).

    Raises:
        ValueError: a setting that is not on the command line is not at its default, or a
            None the command line cannot say.
    """
    argv: list[str] = []
    for f in _fields().values():
        v, m, (typ, _) = getattr(cfg, f.name), f.metadata, value_type(f.name)
        if v == default(f.name) and not m.get("required"):
            continue
        if not m.get("cli", True):
            raise ValueError(f"{f.name} = {v!r} cannot be given on the command line (only its default, "
                             f"{default(f.name)!r})")
        opt = flag(f.name)
        if v is None:
            if m.get("off") is None:
                raise ValueError(f"{opt} cannot be None on the command line")
            argv += [opt, str(m["off"])]
        elif typ is bool:
            argv.append(opt if m.get("flag") else opt if v else "--no-" + opt[2:])
        elif typ is tuple:
            argv += [opt, *map(str, v)]
        else:
            s = repr(float(v)) if typ is float else str(v)
            argv += [f"{opt}={s}"] if s.startswith("-") else [opt, s]    # a value argparse would take for an option
    return argv
