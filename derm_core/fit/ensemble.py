"""Ensembles: trained runs combined into one model whose logits are the members' average.

``python -m derm_core ensemble RUN RUN ... --data DIR --out DIR`` checks that the members can
be averaged (one taxonomy, input, preprocessing and metadata use) and that they were trained
on the same lesion-grouped split (otherwise one member's validation and test photos would be
another's training photos, and every figure of the ensemble would be optimistic). It then
writes an ensemble card that lists the members, and calibrates it as one model with
:func:`derm_core.fit.train.finish`: one temperature, one set of thresholds, one balanced
rule, one conformal calibration and one out-of-scope gate, from the ensemble's own
validation logits. ``release`` ships it like any other run.

:func:`train_ensemble` trains the members one after another (each a resumable ``train`` run
in ``<out>/members/member-<i>``, all on ``<out>/split.csv``) and combines them: the Model lab's
ensemble job. ``<out>/progress.json`` says which member is training.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from derm_core.data.dataset import load_table, resolve_data_dir
from derm_core.data.splits import load_splits
from derm_core.errors import ModelError
from derm_core.model.card import Member, ModelCard, TrainingRecord
from derm_core.model.checkpoint import atomic_write_json, load_model
from derm_core.model.networks import ENSEMBLE, EnsembleNet
from derm_core.triage.rules import DEFAULT_TIER_SENSITIVITY, Thresholds

PROGRESS = "progress.json"


def member_record(card: ModelCard) -> Member:
    """What the ensemble's card keeps of a member: its run, weights and training."""
    tr = card.training
    cfg = tr.config if tr else {}
    val = card.metrics.get("val", {})
    return Member(card.arch, card.name, card.version, card.weights_sha256(), {
        "command": tr.command if tr else None, "seed": cfg.get("seed"), "epochs_run": (tr.details if tr else {}).get(
            "epochs_run"), "wall_time_s": tr.wall_time_s if tr else None,
        "val": {k: val[k] for k in ("accuracy", "balanced_accuracy", "macro_auc") if k in val}})


def _check_compatible(cards: list[ModelCard]) -> None:
    first = cards[0]
    for c in cards[1:]:
        problems = [what for what, same in (
            ("classes", c.classes == first.classes), ("tiers", c.taxonomy.tiers == first.taxonomy.tiers),
            ("clinical-data use", c.use_metadata == first.use_metadata),
            ("input size", c.input_size == first.input_size),
            ("normalisation", (c.mean, c.std) == (first.mean, first.std)),
            ("flip averaging", c.tta == first.tta),
            ("resizing", (c.preprocessing.resize, c.preprocessing.interpolation)
             == (first.preprocessing.resize, first.preprocessing.interpolation))) if not same]
        if problems:
            raise ModelError(f"{c.path} cannot be averaged with {first.path}: their {', '.join(problems)} differ")
    ensembles = [str(c.path) for c in cards if c.is_ensemble]
    if ensembles:
        raise ModelError(f"{ensembles[0]} is itself an ensemble: list its members instead")


def combine(runs: list, data, out, command: str = "", progress=print) -> Path:
    """Average the finished runs ``runs`` into one calibrated ensemble in ``out``; returns its card."""
    from derm_core.fit.train import finish
    if len(runs) < 2:
        raise ModelError(f"an ensemble needs at least two trained runs, got {len(runs)}")
    loaded = [load_model(r) for r in runs]
    cards = [c for _, c in loaded]
    _check_compatible(cards)
    first = cards[0]
    data_dir = resolve_data_dir(data)
    table = load_table(data_dir, first.taxonomy)
    splits = []
    for c in cards:
        if not c.split_file.is_file():
            raise ModelError(f"{c.path}: its split file {c.split_file} is missing; an ensemble needs its members' split")
        splits.append(load_splits(table, c.split_file))
    split = splits[0]
    for c, s in zip(cards[1:], splits[1:]):
        n = int((s != split).sum())
        if n:
            raise ModelError(f"{c.path} was trained on another split than {first.path} ({n} photos differ): one "
                             f"member's validation and test photos would be another's training photos. Train the "
                             f"members with the same --split-file")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if first.split_file.resolve() != (out / "split.csv").resolve():
        shutil.copyfile(first.split_file, out / "split.csv")
    members = tuple(member_record(c) for c in cards)
    seconds = [m.training.get("wall_time_s") for m in members]
    commands = [cmd for c in cards for cmd in (c.training.commands if c.training else [])]
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    card = ModelCard(
        arch=ENSEMBLE, taxonomy=first.taxonomy, use_metadata=first.use_metadata, preprocessing=first.preprocessing,
        temperature=1.0, thresholds=Thresholds({c: 0.5 for c in first.classes},
                                               {t: 0.5 for t in first.taxonomy.tier_names[1:]}, "uncalibrated"),
        name=out.name, version=time.strftime("%Y%m%d-%H%M%S"), members=members,
        training=TrainingRecord(command=command, config={"members": [str(c.path) for c in cards]},
                                split_file="split.csv", data={**(first.training.data if first.training else {}),
                                                              "folder": str(data_dir), "n_images": len(table)},
                                wall_time_s=round(float(sum(s or 0 for s in seconds)), 1),
                                details={"wall_time_note": "the members' training seconds, summed",
                                         "commands": [*commands, command], "split_counts": counts}))
    model = EnsembleNet([m for m, _ in loaded])
    targets = dict(first.tier_sensitivity_targets or DEFAULT_TIER_SENSITIVITY)
    return finish(model, card, table, split, out / "model", targets, progress=progress)


@dataclass(frozen=True)
class MemberPlan:
    """One member to train: its network and seed (the rest of the settings are the ensemble's)."""

    arch: str
    seed: int


def member_dir(out: Path, i: int) -> Path:
    return Path(out) / "members" / f"member-{i + 1}"


def train_ensemble(cfg, plan: list[MemberPlan], command: str = "") -> Path:
    """Train the members one after another, then combine them in ``cfg.out``.

    Each member is a ``train`` run of ``cfg`` with its own arch and seed in
    ``<out>/members/member-<i>``, on the ensemble's split ``<out>/split.csv`` (made by the first
    member). A member with a finished model is kept; an unfinished one resumes. ``cfg.out/STOP``
    stops the member that is training (resumable), and so the ensemble."""
    from derm_core.fit.train import train
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "STOP").unlink(missing_ok=True)
    split = Path(cfg.split_file) if cfg.split_file else out / "split.csv"

    def note(state: str, member: int = len(plan), **more) -> None:      # what the job's status reads
        atomic_write_json(out / PROGRESS, {"state": state, "member": member, "members": len(plan), **more,
                                           "time": time.time()})
    cards = []
    for i, m in enumerate(plan):
        folder = member_dir(out, i)
        note("training", i + 1, member_run=str(folder))
        if (folder / "model.json").is_file():
            cards.append(folder / "model.json")
            continue
        path = train(replace(cfg, arch=m.arch, seed=m.seed, out=str(folder), split_file=str(split)),
                     command=f"{command} (member {i + 1} of {len(plan)})", stop_file=out / "STOP")
        cards.append(path)
    note("calibrating")
    path = combine(cards, cfg.data, out, command, progress=note)
    note("done", model=str(path))
    return path
