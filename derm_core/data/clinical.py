"""Clinical metadata (age, sex, anatomical site): vocabulary, validation and encoding.

The encoding always carries a "missing" flag per field, so a metadata-aware model can be
used when any field is unknown (training drops fields at random to teach it that).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NONE_GIVEN_NOTE = "no clinical data given"   # a triage note; the case report says it once, as "none given"
SEXES = ("male", "female")
# The HAM10000 anatomical-site vocabulary ("unknown" means missing).
SITES = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "upper extremity",
)
META_DIM = 2 + (len(SEXES) + 1) + (len(SITES) + 1)


@dataclass(frozen=True)
class Clinical:
    """What the clinician entered; ``None`` means not given."""

    age: float | None = None
    sex: str | None = None
    site: str | None = None

    def __post_init__(self):
        if self.age is not None and not (0 <= self.age <= 120):
            raise ValueError(f"age must be between 0 and 120, got {self.age}")
        if self.sex is not None and self.sex not in SEXES:
            raise ValueError(f"sex must be one of {SEXES} or empty, got {self.sex!r}")
        if self.site is not None and self.site not in SITES:
            raise ValueError(f"site must be one of {SITES} or empty, got {self.site!r}")

    @classmethod
    def parse(cls, age=None, sex=None, site=None) -> "Clinical":
        """Build from loose values (CSV cells, form fields): blanks, NaN and 'unknown' become None."""
        def blank(v):
            return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in ("", "unknown", "nan", "none")
        return cls(
            None if blank(age) else float(age),
            None if blank(sex) else str(sex).strip().lower(),
            None if blank(site) else str(site).strip().lower(),
        )

    def given(self) -> list[str]:
        return [k for k in ("age", "sex", "site") if getattr(self, k) is not None]


def encode(c: Clinical) -> np.ndarray:
    """Fixed-length float vector: [age/100, age_missing, sex one-hot + missing, site one-hot + missing]."""
    v = np.zeros(META_DIM, dtype=np.float32)
    if c.age is None:
        v[1] = 1.0
    else:
        v[0] = c.age / 100.0
    o = 2
    v[o + (SEXES.index(c.sex) if c.sex else len(SEXES))] = 1.0
    o += len(SEXES) + 1
    v[o + (SITES.index(c.site) if c.site else len(SITES))] = 1.0
    return v
