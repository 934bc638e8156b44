"""Guards around a training run folder: argument limits, one process per folder, same settings.

* :func:`validate_config` refuses impossible training settings up front (the same limits as
  the Model lab's widgets), before any data is read, with the command-line flag to fix.
* :func:`claim` holds the folder for one training process: a file lock
  (``<out>/.train.lock``, the ``filelock`` package that comes with torch), so a second
  ``train`` on the same ``--out`` is refused with the pid of the first instead of writing
  every epoch twice. It also refuses to resume a folder that holds a run with other
  settings (unless ``force``), and if training fails it leaves ``progress.json`` marked
  ``failed`` with the reason (even on a full disk) instead of "training".

The settings a run was started with are kept in ``<out>/run_config.json``.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from derm_core.errors import ConfigError, DermTriageError, RunFolderError
from derm_core.model.checkpoint import read_card
from derm_core.settings import settings as environment

LOCK_FILE = ".train.lock"
OWNER_FILE = ".train.owner.json"
CONFIG_FILE = "run_config.json"

# The limits and choices of each setting are the ``bounds`` and ``choices`` of its TrainConfig
# field (derm_core.fit.config), the same ones the Model lab's widgets use.
# Settings that may change when a run is resumed (a longer run, another stopping rule, other
# hardware); every other setting must be the one the folder's run was started with.
MAY_CHANGE = frozenset({"epochs", "patience", "monitor", "workers", "device", "tta", "resume", "out"})

_HELD: dict[str, int] = {}          # folders this process holds (claim is re-entrant)
_HELD_LOCK = threading.Lock()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_config(cfg) -> None:
    """Refuse training settings outside the limits, naming the flag.

    Raises:
        ConfigError: e.g. ``--image-size 8 8``, ``--epochs 0``, ``--limit -5``.
    """
    from derm_core.fit.config import TrainConfig, bounds, choices, value_type
    from derm_core.model.networks import list_archs
    names = list(TrainConfig.__dataclass_fields__)
    for name in names:
        lohi = bounds(name)
        v = getattr(cfg, name, None)
        typ, optional = value_type(name)
        if lohi is None or name == "image_size" or (v is None and optional):
            continue
        lo, hi = lohi
        if typ is int:
            if not _is_int(v) or not lo <= v <= hi:
                raise ConfigError(f"{_flag(name)} must be a whole number from {lo} to {hi}, not {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ConfigError(f"{_flag(name)} must be a number from {lo:g} to {hi:g}, not {v!r}")
    if cfg.image_size is not None:
        size = list(cfg.image_size)
        lo, hi = bounds("image_size")
        if len(size) != 2 or not all(_is_int(v) and lo <= v <= hi for v in size):
            raise ConfigError(f"--image-size must be two whole numbers (height width) from {lo} to {hi}, not "
                              f"{' '.join(map(str, size))}")
    if cfg.arch not in list_archs():
        raise ConfigError(f"--arch {cfg.arch!r} is not a known architecture; choose one of {list_archs()}")
    for name in names:
        allowed = choices(name)
        if allowed is not None and name != "arch" and getattr(cfg, name, None) not in allowed:
            raise ConfigError(f"{_flag(name)} must be one of {', '.join(allowed)}, not {getattr(cfg, name, None)!r}")
    for tier, v in (cfg.tier_sensitivity or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ConfigError(f"the sensitivity target for tier {tier!r} must be in (0, 1], not {v!r}")
    if cfg.device is not None:
        from derm_core.model.device import check_device
        check_device(cfg.device, "--device")      # a name torch knows, and a device this machine has
    try:
        from derm_core.data.taxonomy import load_taxonomy
        load_taxonomy(cfg.taxonomy)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ConfigError(f"--taxonomy {cfg.taxonomy!r} cannot be used: {e}") from None
    out = Path(cfg.out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--out {out}: {p} is a file, not a folder")
        if p.exists():
            break


def settings(cfg) -> dict:
    """The settings that define a run (JSON-ready), with defaults resolved as training resolves them."""
    from derm_core.model.networks import get_arch
    s = {k: v for k, v in asdict(cfg).items() if k not in MAY_CHANGE}
    s["image_size"] = list(cfg.image_size) if cfg.image_size else list(get_arch(cfg.arch).input_size)
    env_data = environment().data
    data = cfg.data or (str(env_data) if env_data else None)
    s["data"] = os.path.abspath(os.path.expanduser(data)) if data else None
    s["tier_sensitivity"] = dict(sorted((cfg.tier_sensitivity or {}).items()))
    return json.loads(json.dumps(s))


def _recorded(out: Path) -> tuple[dict | None, str]:
    """The settings of the run already in ``out`` and where they were read from."""
    rc = out / CONFIG_FILE
    if rc.is_file():
        try:
            return json.loads(rc.read_text(encoding="utf-8"))["settings"], str(rc)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    card = out / "model.json"
    if card.is_file():
        try:
            cfg = read_card(card).training.config
        except (DermTriageError, OSError, AttributeError):
            return None, ""
        cfg = {k: v for k, v in cfg.items() if k not in MAY_CHANGE and k != "data"}   # data: relative to an old cwd
        if isinstance(cfg.get("tier_sensitivity"), dict):
            cfg["tier_sensitivity"] = dict(sorted(cfg["tier_sensitivity"].items()))
        return cfg, str(card)
    return None, ""


def differences(cfg, out: str | Path) -> list[str]:
    """``name: was -> now`` for every defining setting that differs from the run in ``out``."""
    old, _ = _recorded(Path(out))
    if old is None:
        return []
    now = settings(cfg)
    return [f"{_flag(k)}: {old[k]!r} -> {now[k]!r}" for k in sorted(now) if k in old and old[k] != now[k]]


def _has_run(out: Path) -> bool:
    return (out / "last.safetensors").is_file() or (out / "model.json").is_file()


def check_resume(cfg, force: bool = False) -> None:
    """Refuse to resume ``cfg.out`` with settings other than its run's (unless ``force``).

    Raises:
        RunFolderError: listing the settings that differ and the ways out.
    """
    out = Path(cfg.out)
    if not cfg.resume or force or not _has_run(out):
        return
    diff = differences(cfg, out)
    if diff:
        state = "a finished run" if (out / "model.json").is_file() else "a run"
        raise RunFolderError(f"{out} holds {state} with other settings ({'; '.join(diff)}): resuming would mix them. "
                             f"Use another --out, repeat the run's own settings, pass --new to start over in this "
                             f"folder, or --force to resume with the new settings")


def _owner(out: Path) -> str:
    try:
        o = json.loads((out / OWNER_FILE).read_text(encoding="utf-8"))
        return f"pid {o.get('pid')} on {o.get('host')}, since {time.strftime('%H:%M:%S', time.localtime(o.get('time', 0)))}"
    except (OSError, ValueError, TypeError, AttributeError):
        return "another process"


def mark_failed(out: Path, error: BaseException | str) -> None:
    """Leave ``progress.json`` saying ``failed`` with the reason, unless the run ended otherwise.

    Best effort and never raises: on a full disk the atomic rewrite fails, so the small file is
    then rewritten in place (truncating first frees its blocks)."""
    from derm_core.model.checkpoint import atomic_write_json
    path = out / "progress.json"
    try:
        prev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prev = {}
    if not isinstance(prev, dict) or prev.get("state") in ("done", "stopped"):
        return
    msg = " ".join(str(error).split()) or type(error).__name__
    new = {**prev, "state": "failed", "error": msg[:500], "time": time.time()}
    new.pop("eta_s", None)
    try:
        atomic_write_json(path, new)
        return
    except OSError:
        pass
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"state": "failed", "error": msg[:300], "time": time.time()}))
    except OSError:
        pass


def _start_fresh(out: Path) -> None:
    """A new run in a used folder: keep the old epoch log aside rather than appending to it."""
    log = out / "log.jsonl"
    if log.is_file() and log.stat().st_size:
        log.rename(out / f"log.{time.strftime('%Y%m%d-%H%M%S')}.previous.jsonl")


@contextmanager
def claim(cfg, command: str = "", rank: int = 0, force: bool = False):
    """Hold ``cfg.out`` for this training process (rank 0 only), after checking the settings.

    Re-entrant within one process: the command line claims the folder with its ``--force``
    choice and :func:`derm_core.fit.train.train` claims it again (a no-op then).

    Raises:
        ConfigError: settings outside the limits.
        RunFolderError: the folder is used by another process, or holds a run with other settings.
    """
    validate_config(cfg)
    out = Path(cfg.out)
    if rank != 0:
        yield out
        return
    key = os.path.abspath(out)
    with _HELD_LOCK:
        nested = _HELD.get(key, 0) > 0
        if nested:
            _HELD[key] += 1
    if nested:
        try:
            yield out
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    from filelock import FileLock, Timeout
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {out}: {e.strerror or e}") from None
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderError(f"run folder {out} is in use by another training process ({_owner(out)}): wait for it "
                             f"to finish or stop it, or use another --out") from None
    with _HELD_LOCK:
        _HELD[key] = 1
    try:
        from derm_core.model.checkpoint import atomic_write_json
        atomic_write_json(out / OWNER_FILE, {"pid": os.getpid(), "host": os.uname().nodename if hasattr(os, "uname")
                                             else "", "time": time.time(), "command": command})
        check_resume(cfg, force)
        if not cfg.resume:
            _start_fresh(out)
        atomic_write_json(out / CONFIG_FILE, {"settings": settings(cfg), "command": command, "time": time.time()})
        yield out
    except BaseException as e:
        if type(e).__name__ != "Stopped" and not isinstance(e, (RunFolderError, ConfigError)):
            mark_failed(out, e)
        raise
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        try:
            (out / OWNER_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        lock.release()
