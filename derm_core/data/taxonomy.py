"""Diagnostic taxonomies defined as data: classes, display names and risk tiers.

A taxonomy is a JSON file (see ``taxonomies/ham7.json``); a clinic adds its own by writing
another file, not code. Tiers follow Zhao et al. 2019: low-risk (monitor), high-risk
(see a dermatologist), dangerous (urgent biopsy).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TAXONOMY_DIR = Path(__file__).parent / "taxonomies"


@dataclass(frozen=True)
class Tier:
    name: str
    rank: int
    action: str
    colour: str = "#555555"


@dataclass(frozen=True)
class Taxonomy:
    """Ordered classes and their risk tiers. Class order defines model output order."""

    name: str
    classes: tuple[str, ...]
    display_names: dict[str, str]
    class_tier: dict[str, str]
    tiers: dict[str, Tier]
    isic_codes: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def tier_names(self) -> list[str]:
        """Tier names from least to most urgent."""
        return sorted(self.tiers, key=lambda t: self.tiers[t].rank)

    def index(self, code: str) -> int:
        try:
            return self.classes.index(code)
        except ValueError:
            raise ValueError(f"unknown class {code!r}; {self.name} has {list(self.classes)}") from None

    def tier_members(self, tier: str) -> list[int]:
        """Indices of the classes in ``tier``."""
        return [i for i, c in enumerate(self.classes) if self.class_tier[c] == tier]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "tiers": {t.name: {"rank": t.rank, "action": t.action, "colour": t.colour} for t in self.tiers.values()},
            "classes": [
                {"code": c, "name": self.display_names[c], "tier": self.class_tier[c],
                 **({"isic": self.isic_codes[c]} if c in self.isic_codes else {})}
                for c in self.classes
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Taxonomy":
        try:
            tiers = {n: Tier(n, int(t["rank"]), t["action"], t.get("colour", "#555555")) for n, t in d["tiers"].items()}
            classes = tuple(c["code"] for c in d["classes"])
            class_tier = {c["code"]: c["tier"] for c in d["classes"]}
            names = {c["code"]: c.get("name", c["code"]) for c in d["classes"]}
            isic = {c["code"]: c["isic"] for c in d["classes"] if "isic" in c}
        except (KeyError, TypeError) as e:
            raise ValueError(f"taxonomy is missing field {e}") from None
        if len(set(classes)) != len(classes):
            raise ValueError(f"taxonomy {d.get('name')!r} lists a class twice: {classes}")
        bad = {c: t for c, t in class_tier.items() if t not in tiers}
        if bad:
            raise ValueError(f"taxonomy {d.get('name')!r} maps classes to undefined tiers: {bad}")
        return cls(d.get("name", "custom"), classes, names, class_tier, tiers, isic, d.get("description", ""))


def load_taxonomy(name_or_path: str | Path = "ham7") -> Taxonomy:
    """Load a shipped taxonomy by name (``ham7``, ``han12``) or any taxonomy JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TAXONOMY_DIR / f"{name_or_path}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in TAXONOMY_DIR.glob("*.json"))
        raise FileNotFoundError(f"no taxonomy {str(name_or_path)!r}; shipped: {shipped}, or give a JSON file path")
    return Taxonomy.from_dict(json.loads(path.read_text(encoding="utf-8")))
