"""Threshold profiles: named, versioned operating points published from the Model lab.

A profile is one JSON file ``<profiles>/<slug>@v<N>.json`` (never edited: saving the same
name again writes version N + 1) recording the thresholds, who saved them and when, which
model they belong to (card path, name, version, SHA-256 of its weights file, calibration
temperature) and on which validation data they were tuned, with the resulting metrics.

Saving is atomic and exclusive: the JSON is written completely to a hidden staging file
(:func:`derm_core.model.checkpoint.atomic_write_json`) and then hard-linked to its final name,
which fails rather than overwrites if another save took that version first. A crash leaves
at most a hidden staging file, never a half-written profile.

Loading refuses a profile that is not a well-formed profile, whose classes or tiers are not
the model's, or that was made for another model (other weights or another temperature) with
a :class:`ProfileError` saying why. The shipped model's own thresholds stay in its card
("model default"); profiles only override them.
"""
from __future__ import annotations

import getpass
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from derm_core.errors import ConformalError, ProfileError
from derm_core.model.checkpoint import ModelCard, atomic_write_json, read_json
from derm_core.model.conformal import Calibration
from derm_core.settings import settings
from derm_core.slugs import slugify as shared_slugify
from derm_core.triage.rules import Thresholds

FORMAT = "dermtriage-threshold-profile"
FORMAT_VERSION = 1
MODEL_DEFAULT = "model default"
_NAME = re.compile(r"^(?P<slug>[a-z0-9][a-z0-9._-]*)@v(?P<v>[0-9]+)\.json$")


def profiles_dir() -> Path:
    """``settings().profiles``: $DERMTRIAGE_PROFILES, $DERMTRIAGE_HOME/profiles or ``profiles/`` beside the code."""
    return settings().profiles


def slugify(name: str) -> str:
    """The profile's file-name slug (:func:`derm_core.slugs.slugify`, at most 60 characters).

    Raises:
        ProfileError: nothing of the name is left (no ASCII letters or digits).
    """
    s = shared_slugify(name, max_length=60)
    if not s:
        raise ProfileError(f"profile name {name!r} has no letters or digits")
    return s


@dataclass(frozen=True)
class Profile:
    data: dict
    path: Path

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> int:
        return int(self.data["version"])

    @property
    def id(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def thresholds(self) -> Thresholds:
        t = self.data["thresholds"]
        return Thresholds({k: float(v) for k, v in t["classes"].items()}, {k: float(v) for k, v in t["tiers"].items()},
                          f"profile {self.id}")

    @property
    def model(self) -> dict:
        return self.data["model"]

    def label(self) -> str:
        m = self.model
        return f"{self.id} — {m.get('name')} {m.get('version')} ({str(self.data.get('created') or '?')[:16]})"

    def check(self, card: ModelCard) -> None:
        """Refuse this profile for ``card`` unless it was made for the same classes, tiers and model.

        Raises:
            ProfileError: with what differs.
        """
        tax = card.taxonomy
        if list(self.data["classes"]) != list(tax.classes):
            raise ProfileError(f"profile {self.id} is for classes {list(self.data['classes'])}, the model "
                               f"{card.name} has {list(tax.classes)}")
        try:
            self.thresholds.check(tax)
        except ValueError as e:
            raise ProfileError(f"profile {self.id}: {e}") from None
        m, mine = self.model, card.identity()
        if m.get("weights_sha256") != mine.weights_sha256:
            raise ProfileError(f"profile {self.id} was made for model {m.get('name')} version {m.get('version')} "
                               f"(weights {str(m.get('weights_sha256'))[:12]}), not for the active model {card.name} "
                               f"version {card.version} (weights {str(mine.weights_sha256)[:12]})")
        if not math.isclose(float(m.get("temperature", -1)), card.temperature, rel_tol=1e-6):
            raise ProfileError(f"profile {self.id} was tuned at calibration temperature {m.get('temperature')}, the "
                               f"model {card.name} now has {card.temperature:.4g} (recalibrated since): re-tune it")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(data, path: Path) -> dict:
    """Every field the pages and :meth:`Profile.check` read, with the file and field named.

    Raises:
        ProfileError: not a profile, or a field of the wrong type or range.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProfileError(f"{path.name} is not a DermTriage threshold profile")

    def bad(field: str, problem: str) -> ProfileError:
        return ProfileError(f"{path.name}: field '{field}' {problem}")

    fv = data.get("format_version", 1)
    if not _is_int(fv) or fv < 1:
        raise bad("format_version", f"must be a whole number from 1, not {fv!r}")
    if fv > FORMAT_VERSION:
        raise ProfileError(f"{path.name} has format version {data.get('format_version')}; this DermTriage reads "
                           f"up to {FORMAT_VERSION}")
    missing = [k for k in ("name", "version", "classes", "thresholds", "model") if k not in data]
    if missing:
        raise ProfileError(f"{path.name} lacks {missing}")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise bad("name", f"must be a non-empty string, not {data['name']!r}")
    if not _is_int(data["version"]) or data["version"] < 1:
        raise bad("version", f"must be a whole number from 1, not {data['version']!r}")
    classes = data["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", f"must be a list of class codes, not {classes!r}")
    for k in ("created", "author", "note"):
        if k in data and data[k] is not None and not isinstance(data[k], str):
            raise bad(k, f"must be a string, not {data[k]!r}")
    for k in ("validation", "metrics"):
        if k in data and data[k] is not None and not isinstance(data[k], dict):
            raise bad(k, f"must be an object, not {data[k]!r}")
    t = data["thresholds"]
    if not isinstance(t, dict) or not isinstance(t.get("classes"), dict) or not isinstance(t.get("tiers"), dict):
        raise ProfileError(f"{path.name}: thresholds must hold 'classes' and 'tiers' objects")
    for k, v in {**t["classes"], **t["tiers"]}.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise ProfileError(f"{path.name}: threshold for {k!r} is {v!r}; it must be a number between 0 and 1")
    if not isinstance(data["model"], dict) or "weights_sha256" not in data["model"]:
        raise ProfileError(f"{path.name}: the model it was made for is not recorded")
    temp = data["model"].get("temperature")
    if temp is not None and (not isinstance(temp, (int, float)) or isinstance(temp, bool) or not math.isfinite(temp)):
        raise bad("model.temperature", f"must be a finite number, not {temp!r}")
    if data.get("conformal") is not None:     # the prediction sets' calibration stored with the profile
        try:
            Calibration.from_dict(data["conformal"], f"{path.name}, entry 'conformal'")
        except ConformalError as e:
            raise ProfileError(str(e)) from None
    return data


def load_profile(path: str | Path, card: ModelCard | None = None) -> Profile:
    """Read and validate a profile; with ``card``, also refuse it unless it matches that model."""
    path = Path(path)
    if not path.exists():
        raise ProfileError(f"profile {path} not found")
    try:
        data = read_json(path, ProfileError, "threshold profile")
    except ProfileError as e:
        raise ProfileError(f"{path.name} is not a readable profile: {e}") from None
    prof = Profile(_validate(data, path), path)
    if card is not None:
        prof.check(card)
    return prof


def list_profiles(folder: str | Path | None = None) -> list[Profile | ProfileError]:
    """Every profile in the folder, newest first; unreadable files appear as their :class:`ProfileError`."""
    folder = Path(folder) if folder else profiles_dir()
    if not folder.is_dir():
        return []
    out: list = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            out.append(load_profile(p))
        except ProfileError as e:
            e.path = p  # type: ignore[attr-defined]
            out.append(e)
        except Exception as e:  # noqa: BLE001 - one odd file must never break the listing for everyone
            err = ProfileError(f"{p.name} is not a readable profile ({type(e).__name__}: {e})")
            err.path = p  # type: ignore[attr-defined]
            out.append(err)

    def created(x) -> str:
        c = x.data.get("created") if isinstance(x, Profile) else None
        return c if isinstance(c, str) else ""
    return sorted(out, key=created, reverse=True)


def profile_choices(card: ModelCard, current: str | None = None,
                    folder: str | Path | None = None) -> tuple[dict[str, str], list[ProfileError]]:
    """The threshold-profile picker's options for the active model ``card``.

    Returns:
        ``(labels, unreadable)``: profile path -> label, starting with :data:`MODEL_DEFAULT`
        (the card's own thresholds), then the profiles made for this model's weights, then the
        others marked "for another model" (listed so that choosing one explains why it is
        refused), newest first within each; ``current`` (the chosen path) is added, marked
        unavailable, when it is no longer listed. ``unreadable``: the errors of the files that
        are not readable profiles.
    """
    mine = card.identity().weights_sha256
    listed = list_profiles(folder)
    found = sorted((p for p in listed if isinstance(p, Profile)), key=lambda p: p.model.get("weights_sha256") != mine)
    own = card.thresholds.name        # the card's thresholds, named unless that repeats the label
    # "default: Youden (validation)": short enough for the sidebar at 1024 px (it cut "model default (Youden (v")
    labels = {MODEL_DEFAULT: MODEL_DEFAULT if own in (None, "", MODEL_DEFAULT) else f"default: {own}"}
    for p in found:
        other = p.model.get("weights_sha256") != mine
        labels[str(p.path)] = p.id + (f" — for another model ({p.model.get('name')})" if other else "")
    current = current or MODEL_DEFAULT
    if current not in labels:   # e.g. a profile file removed or broken since it was chosen
        labels[current] = f"{Path(current).name} (unavailable)"
    return labels, [x for x in listed if not isinstance(x, Profile)]


def versions(name: str, folder: str | Path | None = None) -> list[int]:
    folder = Path(folder) if folder else profiles_dir()
    slug = slugify(name)
    return sorted(int(m["v"]) for p in folder.glob(f"{slug}@v*.json") if (m := _NAME.match(p.name)) and m["slug"] == slug)


def save_profile(name: str, thresholds: Thresholds, card: ModelCard, *, validation: dict | None = None,
                 metrics: dict | None = None, author: str | None = None, note: str = "",
                 folder: str | Path | None = None, extra: dict | None = None) -> Profile:
    """Write the next version of profile ``name`` atomically and return it.

    Args:
        validation: what the thresholds were tuned on (data folder, split, number of images, data hash).
        metrics: the resulting metrics (e.g. :func:`derm_core.evaluate.operating.summary`).
        author: who saved it (default: the operating-system user).

    Raises:
        ProfileError: thresholds that do not fit the model's classes and tiers, or an empty name.
    """
    folder = Path(folder) if folder else profiles_dir()
    slug = slugify(name)
    try:
        thresholds.check(card.taxonomy)
    except ValueError as e:
        raise ProfileError(f"cannot save profile {name!r}: {e}") from None
    model = card.identity().to_dict()
    if model["weights_sha256"] is None:
        raise ProfileError(f"cannot save profile {name!r}: the model's weights file cannot be read "
                           f"({card.weights_path}); a profile must name the weights it was tuned for")
    if author is None:
        try:
            author = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name on some systems
            author = "unknown"
    base = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name.strip(), "slug": slug,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "author": author, "note": note,
        "model": model,
        "classes": list(card.classes), "tiers": list(card.taxonomy.tier_names),
        "thresholds": {"classes": {c: float(thresholds.classes[c]) for c in card.classes},
                       "tiers": {t: float(v) for t, v in thresholds.tiers.items()}, "from": thresholds.name},
        "validation": validation or {}, "metrics": metrics or {}, **(extra or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{uuid.uuid4().hex}.json"
    for _ in range(100):
        version = max(versions(name, folder), default=0) + 1
        data = {**base, "version": version}
        atomic_write_json(staging, data)
        final = folder / f"{slug}@v{version}.json"
        try:
            os.link(staging, final)       # atomic, and refuses to overwrite a version another save took
        except FileExistsError:
            continue
        except OSError:                   # a file system without hard links: check, then rename
            if final.exists():
                continue
            os.replace(staging, final)
        finally:
            staging.unlink(missing_ok=True)
        return Profile(data, final)
    raise ProfileError(f"could not find a free version number for profile {name!r}")


def find_profile(key: str, folder: str | Path | None = None) -> Profile:
    """A profile by file path, file name or ``"name vN"`` id."""
    p = Path(key)
    if p.suffix == ".json" and p.is_file():
        return load_profile(p)
    folder = Path(folder) if folder else profiles_dir()
    if (folder / key).is_file():
        return load_profile(folder / key)
    for prof in list_profiles(folder):
        if isinstance(prof, Profile) and prof.id == key:
            return prof
    raise ProfileError(f"no profile {key!r} in {folder}")
