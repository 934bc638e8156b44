"""Training: fine-tune a registry architecture on a dataset folder and write a model card.

One function, :func:`train`, used by the CLI, the Model lab and ``torchrun`` alike.
It follows the seed papers (augmentation, class-imbalance weighting, early stopping on the
validation split), then calibrates (temperature scaling) and picks operating thresholds on
validation, and reports the test split. Runs on CUDA with mixed precision when present, on
CPU otherwise, and under ``torchrun`` as DistributedDataParallel (gloo on CPU, nccl on GPU).

Everything a run writes lives in its folder::

    split.csv            lesion-grouped split (reused when present)
    progress.json        live progress (epoch, batch, elapsed, ETA), rewritten atomically
    log.jsonl            one line per epoch
    last.safetensors/.json   resumable checkpoint (weights, optimizer, RNG; no pickle)
    model.safetensors/.json  the finished model and its card
    report_val.json, report_test.json
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from derm_core import __version__
from derm_core.data.dataset import load_table, resolve_data_dir
from derm_core.data.splits import get_splits, load_splits
from derm_core.data.taxonomy import load_taxonomy
from derm_core.errors import ConfigError
from derm_core.evaluate.evaluation import build_report, headline_metrics
from derm_core.fit.batches import BatchAugment, TrainBatches, image_cache, metadata_matrix

# The training settings are defined once, in derm_core.fit.config (the CLI's options, the
# Model lab's form and the background job's arguments are derived from them).
from derm_core.fit.config import LOSSES, MONITORS, TrainConfig, for_device, scaled_lr  # noqa: E402,F401
from derm_core.model.calibration import fit_temperature, softmax
from derm_core.model.card import ModelCard, Preprocessing, TrainingRecord
from derm_core.model.checkpoint import atomic_save_tensors, atomic_write_json, load_model, read_card, save_model
from derm_core.model.decision import BalancedRule, class_prior
from derm_core.model.device import amp_dtype, pick_device
from derm_core.model.networks import create_model, data_config, freeze_early, get_arch
from derm_core.model.ood import fit_for_model
from derm_core.model.predictor import Predictor
from derm_core.triage.rules import Thresholds, fit_thresholds


class Stopped(Exception):
    """Raised when the run's STOP file appears (the Model lab's Stop button)."""


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def logit_adjustment(y: np.ndarray, n_classes: int, tau: float) -> torch.Tensor:
    """tau * log(class prior) of the training labels. Training on ``logits + adjustment``
    makes the network's own logits balanced (Menon et al. 2021); adding the adjustment to the
    head's bias afterwards (:func:`fold_logit_adjustment`) turns them back into posterior logits."""
    return torch.tensor(tau * np.log(class_prior(y, n_classes)), dtype=torch.float32)


def fold_logit_adjustment(model, adjustment: torch.Tensor) -> None:
    """Add the adjustment to the classifier's bias, so the shipped model outputs posterior logits."""
    with torch.no_grad():
        model.head[-1].bias.add_(adjustment.to(model.head[-1].bias))


def set_early_frozen(model, frozen: bool) -> list[str]:
    """Freeze or unfreeze the arch's early layers; returns the names now frozen."""
    if frozen:
        return freeze_early(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return []


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> torch.Tensor:
    """Loss weights against class imbalance, normalised to mean 1 over the samples."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    if mode == "none":
        w = np.ones(n_classes)
    elif mode in ("sqrt", "inverse"):
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
        w = np.sqrt(w) if mode == "sqrt" else w
    else:
        raise ValueError(f"class_weighting must be none, sqrt or inverse, got {mode!r}")
    w = w / (w[y].mean() if len(y) else 1.0)
    return torch.tensor(w, dtype=torch.float32)


def _init_from(model, card_path: str, arch: str) -> None:
    """Fine-tune: start from a trained model's weights (every tensor whose name and shape match,
    so a new taxonomy gets a fresh head)."""
    src, card = load_model(card_path)
    if card.arch != arch:
        raise ValueError(f"--init-from model is a {card.arch}, not a {arch}")
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape},
                          strict=False)


DISTILL_T = 2.0   # the softmax temperature of distillation: the teacher's runner-up classes carry its knowledge


def teacher_split_file(card: ModelCard) -> Path:
    """The split file a student of this teacher trains on: the teacher's own.

    Raises:
        ConfigError: the teacher has none beside it (the Model lab's form and ``train`` say why).
    """
    if not card.split_file or not card.split_file.is_file():
        raise ConfigError(f"{card.path} has no split file beside it: a student must train on its teacher's split")
    return card.split_file


def with_teacher_split(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with a teacher's split file when it names a teacher and no split file (the command
    line's and the Model lab's default: a student must train on its teacher's split)."""
    if not cfg.teacher or cfg.split_file:
        return cfg
    return replace(cfg, split_file=str(teacher_split_file(read_card(cfg.teacher))))


def teacher_record(card: ModelCard) -> dict:
    """What a student's card keeps of its teacher: which model, and the commands that made it
    (the model sheet prints them before the student's own, so the recipe stays whole)."""
    tr = card.training
    return {"card": str(card.path), "architecture": card.architecture, "weights_sha256": card.weights_sha256(),
            "commands": tr.commands if tr else [], "temperature": DISTILL_T,
            "wall_time_s": tr.wall_time_s if tr else None,
            "val": {k: card.metrics.get("val", {}).get(k) for k in ("accuracy", "balanced_accuracy", "macro_auc")}}


def teacher_soft_labels(card: ModelCard, table, split, classes, out: Path) -> np.ndarray:
    """The teacher's probabilities at :data:`DISTILL_T` on the training photos, with its flip
    averaging, computed once per teacher and kept in the run folder (a resumed run reuses them);
    one row per training photo of ``table`` (``split == "train"``), in order.

    Raises:
        ConfigError: the teacher was not trained on this run's split (its members would have
            seen this run's validation or test photos, and every figure would be optimistic),
            or predicts other classes.
    """
    if not (load_splits(table, teacher_split_file(card)) == split).all():
        raise ConfigError(f"--teacher {card.path} was not trained on this run's split: distil only from models "
                          f"trained with the same --split-file")
    if list(card.classes) != list(classes):
        raise ConfigError(f"--teacher {card.path} predicts {card.classes}, not this run's classes")
    cache = out / f"teacher-{card.weights_sha256()[:16]}.npy"
    if not cache.is_file():
        rows = table[(split == "train").to_numpy()].reset_index(drop=True)
        logits = Predictor(load_model(card.path)[0], card, out_of_scope=False).predict_table(rows)["logits"]
        with open(cache.with_suffix(".part"), "wb") as f:   # a crash leaves no half-written file
            np.save(f, logits)
        os.replace(cache.with_suffix(".part"), cache)
    return softmax(np.load(cache), DISTILL_T)


def distill_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, cfg: TrainConfig,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on the labels (``logits``: posterior logits, the logit adjustment added);
    with a teacher's probabilities at :data:`DISTILL_T`, mixed with the KL divergence to them,
    scaled by T^2 so its gradients keep their size (Hinton et al. 2015)."""
    hard = torch.nn.functional.cross_entropy(logits, y, weight=weights, label_smoothing=cfg.label_smoothing)
    if teacher is None:
        return hard
    soft = torch.nn.functional.kl_div(torch.log_softmax(logits / DISTILL_T, 1), teacher, reduction="batchmean")
    return (1 - cfg.distill_weight) * hard + cfg.distill_weight * DISTILL_T ** 2 * soft


def _lr_lambda(total_steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return f


def _optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"optim.{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
               for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _optim_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out: Path, model, opt, sched, epoch: int, history: list, best: dict, commands: list,
                    ema=None) -> None:
    """Resumable state in one safetensors file (no pickle): weights, optimizer and RNG as tensors,
    the counters as JSON in its metadata, so a kill mid-save can never pair new weights with old
    counters. ``last.json`` is a readable copy of the counters, written after."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_meta = _optim_tensors(opt)
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    meta = {"epoch": epoch, "scheduler_step": sched.last_epoch, "history": history, "best": best,
            "commands": commands, **opt_meta}
    atomic_save_tensors(out / "last.safetensors", tensors, {"checkpoint": json.dumps(meta)})
    atomic_write_json(out / "last.json", meta)


def load_checkpoint(out: Path, model, opt, sched, ema=None) -> dict | None:
    """Restore weights, optimizer, scheduler and RNG; returns the JSON half (epoch, history, best, ...)."""
    if not (out / "last.safetensors").is_file():
        return None
    with safe_open(out / "last.safetensors", "pt") as f:
        saved = (f.metadata() or {}).get("checkpoint")
    if saved is None:                      # written before the counters moved into the file
        if not (out / "last.json").is_file():
            return None
        saved = (out / "last.json").read_text()
    meta = json.loads(saved)
    tensors = load_file(out / "last.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _optim_from_tensors(opt, tensors, meta)
    torch.set_rng_state(tensors["rng.torch"])
    if ema is not None:
        ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        ema.module.load_state_dict(ema_sd or model.state_dict())
    sched.last_epoch = meta["scheduler_step"]  # the restored param_groups already hold the current lr
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    return meta


def _write_progress(out: Path, **kw) -> None:
    atomic_write_json(out / "progress.json", {"time": time.time(), **kw})


def _val_metrics(y, logits) -> dict:
    """One epoch's validation: the loss and the report's headline (``val_`` + its names)."""
    head = headline_metrics(y, softmax(logits))
    return {"val_loss": float(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y))),
            **{f"val_{k}": head[k] for k in ("accuracy", "balanced_accuracy", "macro_auc")}}


def train(cfg: TrainConfig, command: str = "", stop_file: Path | None = None) -> Path | None:
    """Train, calibrate, pick thresholds, evaluate; returns the model card path (rank 0).

    Resumes from ``<out>/last.*`` when present. Creating ``<out>/STOP`` (or ``stop_file``:
    an ensemble's, for its members) stops the run cleanly after the current batch, leaving a
    resumable checkpoint.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(cfg.device)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    rank = dist.get_rank() if world > 1 else 0
    cfg = for_device(cfg, device)
    from derm_core.fit.run_folder import claim  # limits, one process per run folder, same settings on resume (issue 13)
    try:
        with claim(cfg, command, rank):
            return _train(cfg, command, device, rank, world, stop_file)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, command: str, device: torch.device, rank: int, world: int,
           stop_file: Path | None = None) -> Path | None:
    if cfg.monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {cfg.monitor!r}")
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stop_file = Path(stop_file) if stop_file else out / "STOP"
    if rank == 0 and stop_file.parent == out:
        stop_file.unlink(missing_ok=True)
    _seed_all(cfg.seed)
    tax = load_taxonomy(cfg.taxonomy)
    data_dir = resolve_data_dir(cfg.data)
    table = load_table(data_dir, tax, cfg.csv)
    if cfg.limit:
        table = table.iloc[: cfg.limit].reset_index(drop=True)
    split_file = Path(cfg.split_file) if cfg.split_file else out / "split.csv"
    if rank == 0:
        get_splits(table, split_file, cfg.seed)  # rank 0 creates the file; every rank then reads it
    if world > 1:
        dist.barrier()
    split = get_splits(table, split_file, cfg.seed)
    parts = {s: table[split == s].reset_index(drop=True) for s in ("train", "val", "test")}
    if len(parts["train"]) == 0 or len(parts["val"]) == 0:
        raise ValueError("the split left no training or no validation images")

    dcfg = data_config(cfg.arch)
    size = tuple(cfg.image_size) if cfg.image_size else tuple(get_arch(cfg.arch).input_size)
    dcfg["input_size"] = list(size)
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    teacher = read_card(cfg.teacher) if cfg.teacher else None
    soft = teacher_soft_labels(teacher, table, split, tax.classes, out) if teacher else None
    loader = TrainBatches(image_cache(parts["train"], size, progress=rank == 0), metadata_matrix(parts["train"]),
                          parts["train"]["y"].to_numpy(), cfg.batch_size, BatchAugment(dcfg["mean"], dcfg["std"]),
                          meta_dropout=cfg.meta_dropout if cfg.metadata else 0.0, seed=cfg.seed, rank=rank, world=world,
                          device=device, soft_labels=soft)

    _seed_all(cfg.seed)
    model = create_model(cfg.arch, len(tax.classes), cfg.metadata, "none" if cfg.init_from else cfg.pretrained)
    if cfg.init_from:
        _init_from(model, cfg.init_from, cfg.arch)
    model.to(device, memory_format=torch.channels_last)

    def wrap():  # DDP records which parameters train, so it is rebuilt when the early layers thaw
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    y_train = parts["train"]["y"].to_numpy()
    weights = class_weights(y_train, len(tax.classes), cfg.class_weighting).to(device)
    adjust = (logit_adjustment(y_train, len(tax.classes), cfg.logit_tau) if cfg.loss == "logit_adjusted"
              else torch.zeros(len(tax.classes))).to(device)
    # every parameter is in the optimizer; AdamW skips the frozen ones (no gradient) until they thaw
    opt = torch.optim.AdamW(model.parameters(), lr=scaled_lr(cfg), weight_decay=cfg.weight_decay)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema_decay else None
    evaluated = (lambda: ema.module) if ema is not None else (lambda: model)  # what is validated and shipped
    steps_per_epoch = max(1, len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.epochs * steps_per_epoch, steps_per_epoch // 2 + 1))
    amp = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)   # bf16 needs no loss scaling

    sign = 1.0 if cfg.monitor == "val_loss" else -1.0  # lower is better for the loss only
    start_epoch, history, best = 0, [], {"epoch": -1, "score": float("inf"), "monitor": cfg.monitor}
    commands = [command]
    restored = load_checkpoint(out, model, opt, sched, ema) if cfg.resume else None
    if restored:
        start_epoch, history, best = restored["epoch"], restored["history"], restored["best"]
        commands = restored.get("commands", []) + [command]
        if rank == 0:
            print(f"resuming {out} after epoch {start_epoch}")
        if (best.get("monitor", "val_loss") != cfg.monitor or "score" not in best) and history:
            # a new early-stopping criterion: the best so far is where we are now
            best = {"epoch": history[-1]["epoch"], "score": sign * history[-1][cfg.monitor], "monitor": cfg.monitor}
            if rank == 0:
                atomic_save_tensors(out / "best.safetensors", evaluated().state_dict())

    # the card as far as it is known before calibration: what runs the network for validation
    provisional = ModelCard(
        arch=cfg.arch, taxonomy=tax, use_metadata=cfg.metadata, temperature=1.0,
        preprocessing=Preprocessing(tuple(size), tuple(dcfg["mean"]), tuple(dcfg["std"]), cfg.tta,
                                    dcfg["interpolation"]),
        thresholds=Thresholds({c: 0.5 for c in tax.classes}, {t: 0.5 for t in tax.tier_names[1:]}, "uncalibrated"))
    bad_epochs = sum(1 for h in history if h["epoch"] > best["epoch"])
    frozen: list[str] = []        # the early layers frozen now (set on the first epoch this process runs)
    for epoch in range(start_epoch, cfg.epochs):
        if bad_epochs >= cfg.patience:
            break
        loader.set_epoch(epoch)   # the order and augmentation depend on the epoch only (resume-safe)
        want = cfg.freeze_early and (cfg.freeze_epochs is None or epoch < cfg.freeze_epochs)
        if epoch == start_epoch or bool(frozen) != want:
            frozen = set_early_frozen(model, want)
            net = wrap()
        net.train()
        for name in frozen:  # frozen layers keep their ImageNet BatchNorm statistics
            model.backbone.get_submodule(name).eval()
        t_epoch, losses = time.time(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, leave=False)
        for b, (x, meta, y, target) in enumerate(bar):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = net(x, meta if cfg.metadata else None)
                loss = distill_loss(logits.float() + adjust, y, target, cfg, weights)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update(model, step=sched.last_epoch)
            losses.append(loss.detach())   # read every 10th step: a GPU step does not wait for the host
            if rank == 0 and (b % 10 == 0 or b == len(loader) - 1):
                recent = float(torch.stack(losses[-20:]).mean())
                bar.set_postfix(loss=f"{recent:.3f}")
                done = (epoch - start_epoch) * len(loader) + b + 1
                left = (cfg.epochs - epoch) * len(loader) - b - 1
                el = time.time() - t0
                _write_progress(out, state="training", epoch=epoch + 1, epochs=cfg.epochs, batch=b + 1,
                                batches=len(loader), loss=recent, elapsed_s=el,
                                eta_s=el / done * left, history=history)
            if stop_file.exists():
                if rank == 0:
                    save_checkpoint(out, model, opt, sched, epoch, history, best, commands, ema)
                    _write_progress(out, state="stopped", epoch=epoch + 1, epochs=cfg.epochs, history=history)
                raise Stopped(f"stopped by {stop_file}; resume with the same command")

        stop_early = torch.zeros(1)
        if rank == 0:
            pv = Predictor(evaluated(), provisional, device=device).predict_table(parts["val"], tta=False, progress=False)
            logits_val = pv["logits"] + adjust.cpu().numpy()      # posterior logits
            train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": sched.get_last_lr()[0],
                   "seconds": time.time() - t_epoch, **_val_metrics(parts["val"]["y"].to_numpy(), logits_val)}
            history.append(row)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
            if sign * row[cfg.monitor] < best["score"]:
                best = {"epoch": epoch + 1, "score": sign * row[cfg.monitor], "monitor": cfg.monitor}
                atomic_save_tensors(out / "best.safetensors", evaluated().state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            save_checkpoint(out, model, opt, sched, epoch + 1, history, best, commands, ema)
            stop_early[0] = float(bad_epochs >= cfg.patience)
        if world > 1:
            dist.broadcast(stop_early, 0)
        if stop_early.item():
            break

    if rank != 0:
        return None
    _write_progress(out, state="calibrating", history=history, elapsed_s=time.time() - t0)
    model.load_state_dict(load_file(out / "best.safetensors"))
    fold_logit_adjustment(model, adjust)
    set_early_frozen(model, False)
    train_seconds = sum(h["seconds"] for h in history)  # all epochs, across resumed processes
    card = provisional.with_(
        name=out.name, version=time.strftime("%Y%m%d-%H%M%S"), timm_name=get_arch(cfg.arch).timm_name,
        training=TrainingRecord(
            command=command, config={**asdict(cfg), "image_size": list(size)},
            split_file=os.path.relpath(split_file, out), wall_time_s=round(train_seconds, 1),
            data={"folder": str(data_dir), "n_images": len(table), **_provenance(data_dir)},
            details={"commands": commands, "frozen_layers": get_arch(cfg.arch).freeze if cfg.freeze_early else [],
                     "logit_adjustment": adjust.cpu().tolist(), "epochs_run": len(history),
                     "best_epoch": best["epoch"], "history": history,
                     "wall_time_note": "sum of the epochs' training + validation seconds, over all resumed runs",
                     "device": str(device) + (f" x{world}" if world > 1 else ""),
                     "torch": torch.__version__, "derm_core": __version__, "cpu_threads": torch.get_num_threads(),
                     "split_counts": {s: len(p) for s, p in parts.items()},
                     **({"teacher": teacher_record(teacher)} if teacher else {})}))
    path = finish(model, card, table, split, out / "model", cfg.tier_sensitivity, device,
                  progress=lambda state: _write_progress(out, state=state, history=history, elapsed_s=time.time() - t0))
    _write_progress(out, state="done", history=history, elapsed_s=time.time() - t0, model=str(path))
    return path


def finish(model, card: ModelCard, table, split, path: Path, tier_sensitivity: dict, device=None,
           progress=None) -> Path:
    """Every artifact of a finished model from one set of predictions: calibrate on the validation
    split (temperature, Youden class thresholds, tier thresholds for the target sensitivities,
    balanced rule, conformal prediction sets), report validation and test, save the model and
    its card, and fit the out-of-scope gate. Used at the end of training, by ``recalibrate``
    and by ``release``."""
    from derm_core.model import conformal
    progress = progress or (lambda state: None)
    tax = card.taxonomy
    net = Predictor(model, card, device=device, out_of_scope=False)
    parts = {s: table[(split == s).to_numpy()].reset_index(drop=True) for s in ("val", "test")}
    progress("calibrating")
    pv = net.predict_table(parts["val"], progress=False)
    yv = parts["val"]["y"].to_numpy()
    temperature = fit_temperature(pv["logits"], yv)
    thresholds = fit_thresholds(softmax(pv["logits"], temperature), yv, tax, tier_sensitivity)
    prior = class_prior(table["y"].to_numpy()[(split == "train").to_numpy()], len(tax.classes))
    rule = BalancedRule.fit(softmax(pv["logits"], temperature), yv, prior)
    outputs = {"val": (yv, pv["logits"])}
    if len(parts["test"]):
        progress("evaluating the test split")
        outputs["test"] = (parts["test"]["y"].to_numpy(), net.predict_table(parts["test"], progress=False)["logits"])
    reports = {name: build_report(y, z, temperature, thresholds, tax, parts[name], rule) for name, (y, z) in outputs.items()}
    card = card.with_(temperature=temperature, thresholds=thresholds, tier_sensitivity_targets=dict(tier_sensitivity),
                      balanced_rule=rule, metrics={name: _headline(rep) for name, rep in reports.items()},
                      out_of_scope=None)
    card_path = save_model(model, card, path)
    identity = read_card(card_path).identity()
    cal = conformal.Calibration.fit(yv, softmax(pv["logits"], temperature), tax.classes,
                                    {"split": "validation", "n_images": int(len(yv)), "temperature": float(temperature),
                                     "weights_sha256": identity.weights_sha256})
    atomic_write_json(conformal.calibration_path(read_card(card_path)), cal.to_dict())
    for name, rep in reports.items():   # each report says which weights and calibration made it
        y, z = outputs[name]
        rep["conformal"] = conformal.report_block(y, softmax(z, temperature), cal)
        rep["model_identity"] = {"weights_sha256": identity.weights_sha256, "temperature": float(temperature)}
        atomic_write_json(path.parent / f"report_{name}.json", rep)
    progress("fitting the out-of-scope gate")
    fit_for_model(model, read_card(card_path), table, split, progress=False)
    return card_path


def _provenance(data_dir: Path) -> dict:
    """Title and licence lines of the dataset's README, so the card says where the data came from."""
    readme = data_dir / "README.md"
    if not readme.is_file():
        return {}
    lines = [ln.strip("# ").strip() for ln in readme.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    lic = next((ln for ln in lines if ln.lower().startswith("license")), None)
    return {"source": lines[0], **({"license": lic} if lic else {})}


def _headline(rep: dict) -> dict:
    """The report without its bulky parts, for the model card."""
    keep = ("n_images", "accuracy", "balanced_accuracy", "top2_accuracy", "top3_accuracy", "macro_auc", "ece",
            "ece_uncalibrated")
    return {**{k: rep[k] for k in keep}, **{k: rep[k] for k in ("balanced_rule", "intervals") if k in rep},
            "per_class": {c: {k: v[k] for k in ("n", "auc", "sensitivity", "specificity", "threshold")}
                          for c, v in rep["per_class"].items()},
            "tiers": rep["tiers"]}
