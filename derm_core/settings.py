"""Every ``DERMTRIAGE_*`` environment variable, read in one place.

Each variable is named once, in :data:`VARIABLES`, which is used both to read the environment
(:func:`settings`) and to print it (:func:`describe`, ``python -m derm_core info``), so the
folders the app writes to and the ones it reports cannot drift apart.

``$DERMTRIAGE_HOME`` moves every store (runs, profiles, cache, study database) at once; a
per-store variable still wins over it. Without it the stores stay where they always were
(``runs/`` and ``profiles/`` beside the code, ``.dermtriage/``), so nothing a user has is lost.
An empty variable counts as unset.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from derm_core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent          # the repository (the folder holding derm_core/)
SHIPPED_MODEL = ROOT / "weights" / "default" / "model.json"
DEFAULT_HOME = ROOT / ".dermtriage"
DB_NAME = "studies.sqlite3"
DEFAULT_JOB_NICE = 5
FAST_PATHS = ("auto", "fp32")   # $DERMTRIAGE_FAST_PATH: the fastest path this machine has, or full precision

ENV_HOME = "DERMTRIAGE_HOME"
ENV_DATA = "DERMTRIAGE_DATA"
ENV_MODEL = "DERMTRIAGE_MODEL"
ENV_RUNS = "DERMTRIAGE_RUNS"
ENV_PROFILES = "DERMTRIAGE_PROFILES"
ENV_CACHE = "DERMTRIAGE_CACHE"
ENV_STUDY_DB = "DERMTRIAGE_STUDY_DB"
ENV_DEVICE = "DERMTRIAGE_DEVICE"
ENV_FAST_PATH = "DERMTRIAGE_FAST_PATH"
ENV_NICE = "DERMTRIAGE_JOB_NICE"


@dataclass(frozen=True)
class Settings:
    """The effective settings: environment, else defaults (see :data:`VARIABLES`)."""
    home: Path
    data: Path | None
    model: Path
    runs: Path
    profiles: Path
    cache: Path
    study_db: Path
    device: str | None
    fast_path: str
    job_nice: int | None
    invalid: Mapping[str, str] = field(default_factory=dict)   # field -> why its variable was refused

    def require(self, name: str):
        """A setting that must be valid where it is used (a bad variable breaks only that use).

        Raises:
            ConfigError: its environment variable could not be parsed."""
        if name in self.invalid:
            raise ConfigError(self.invalid[name])
        return getattr(self, name)


def _path(text: str, env: str) -> Path:
    return Path(text).expanduser()


def _nice(text: str, env: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"${env} must be a whole number (CPU priority, 0-19), not {text!r}") from None


def _fast_path(text: str, env: str) -> str:
    value = text.strip().lower()
    if value not in FAST_PATHS:
        raise ConfigError(f"${env} must be {' or '.join(FAST_PATHS)}, not {text!r}")
    return value


@dataclass(frozen=True)
class Variable:
    """One setting: its field, variable, parser, default (given $DERMTRIAGE_HOME or None) and help."""
    field: str
    env: str
    parse: Callable[[str, str], object]
    default: Callable[[Path | None], object]
    default_text: str
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("home", ENV_HOME, _path, lambda h: DEFAULT_HOME, ".dermtriage/ beside the code",
             "DermTriage's data folder; setting it moves runs, profiles, cache and study database"),
    Variable("data", ENV_DATA, _path, lambda h: None, "none",
             "dataset folder (HAM10000 or generic layout) for the pages and --data"),
    Variable("model", ENV_MODEL, _path, lambda h: SHIPPED_MODEL, "the shipped model",
             "model card (.json) or run folder used when none is chosen (pages and --model)"),
    Variable("runs", ENV_RUNS, _path, lambda h: (h or ROOT) / "runs", "$DERMTRIAGE_HOME/runs, else runs/ beside the code",
             "the Model lab's training runs"),
    Variable("profiles", ENV_PROFILES, _path, lambda h: (h or ROOT) / "profiles",
             "$DERMTRIAGE_HOME/profiles, else profiles/ beside the code", "published threshold profiles"),
    Variable("cache", ENV_CACHE, _path, lambda h: (h or DEFAULT_HOME) / "cache",
             "$DERMTRIAGE_HOME/cache, else .dermtriage/cache beside the code", "cached predictions and layouts (safe to delete)"),
    Variable("study_db", ENV_STUDY_DB, _path, lambda h: (h or DEFAULT_HOME) / DB_NAME,
             f"$DERMTRIAGE_HOME/{DB_NAME}, else .dermtriage/{DB_NAME} beside the code", "the reader-study database"),
    Variable("device", ENV_DEVICE, lambda t, e: t.strip(), lambda h: None, "CUDA if available, else CPU",
             "force a torch device: cpu or cuda"),
    Variable("fast_path", ENV_FAST_PATH, _fast_path, lambda h: "auto", "auto",
             "inference fast path: auto, or fp32 to force full precision"),
    Variable("job_nice", ENV_NICE, _nice, lambda h: DEFAULT_JOB_NICE, str(DEFAULT_JOB_NICE),
             "CPU priority of background training jobs (0: same as the app)"),
)


def _read(environ: Mapping[str, str] | None) -> tuple[dict, dict, dict]:
    """(values, sources, problems) of every variable; source is "environment", "default" or
    "default (from $DERMTRIAGE_HOME)"; a variable that cannot be parsed gets value None, and the
    reason as its source and in problems (field -> (reason, the variable's text))."""
    env = os.environ if environ is None else environ
    home_set = (env.get(ENV_HOME) or "").strip()
    home = _path(home_set, ENV_HOME) if home_set else None
    values, sources, problems = {}, {}, {}
    for v in VARIABLES:
        text = (env.get(v.env) or "").strip()
        if text:
            try:
                values[v.field], sources[v.field] = v.parse(text, v.env), "environment"
            except ConfigError as e:
                values[v.field], sources[v.field] = None, f"environment, invalid: {e}"
                problems[v.field] = (str(e), text)
        else:
            values[v.field] = v.default(home)
            derived = home is not None and v.field != "home" and v.default(home) != v.default(None)
            sources[v.field] = f"default (from ${ENV_HOME})" if derived else "default"
    return values, sources, problems


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings now: reads the environment on every call (cheap), so a changed variable counts.
    A variable that cannot be parsed (e.g. a non-numeric $DERMTRIAGE_JOB_NICE) reads as None and
    is refused only where it is used (:meth:`Settings.require`)."""
    values, _, problems = _read(environ)
    return Settings(**values, invalid={k: why for k, (why, _) in problems.items()})


def describe(environ: Mapping[str, str] | None = None) -> list[dict]:
    """One row per variable (field, env, value, source, default, help, valid), for ``python -m
    derm_core info``; a variable that cannot be used shows its text, marked invalid (``valid``
    False, the reason in ``source``), never as if it were in use."""
    values, sources, problems = _read(environ)
    return [{"field": v.field, "env": v.env,
             "value": problems[v.field][1] if v.field in problems else
             str(values[v.field]) if isinstance(values[v.field], Path) else values[v.field],
             "source": sources[v.field], "default": v.default_text, "help": v.help, "valid": v.field not in problems}
            for v in VARIABLES]
