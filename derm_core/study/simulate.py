"""Simulated readers: a teacher sees what the Results page of a study will show before any
clinician reads a case, and the README's reader-study figures come from here.

Each simulated reader answers through the study store as a person would (the case is shown,
then answered a few seconds later), so storage, scoring, over-reliance and the multi-reader
multi-case analysis all run on real rows. The readers follow a simple, stated model, not a
claim about real clinicians:

* alone, a reader of level L gives the correct answer with probability ``skill[L]``, else one
  of the other answer options at random;
* with the AI, they take the advice shown (honest or planted) with probability ``follow[L]``,
  else they answer alone (Tschandl et al. 2020: the less experienced follow it more);
* the 1-5 malignancy rating follows their own answer with noise: a latent
  ``SEPARATION * (answer implies malignant) + N(0, 1)`` cut at :data:`RATING_CUTS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from derm_core.study.cases import LEVELS, PHASES, Study, advice, answer_rank

SKILL = {"student": 0.45, "resident": 0.55, "general practitioner": 0.5, "dermatologist": 0.7}
FOLLOW = {"student": 0.6, "resident": 0.5, "general practitioner": 0.5, "dermatologist": 0.35}
SEPARATION = 1.5
RATING_CUTS = (0.0, 0.5, 1.0, 1.5)          # latent -> rating 1..5
SECONDS = (6.0, 25.0)                       # reading time per case, uniform


@dataclass(frozen=True)
class ReaderModel:
    """How the simulated readers answer (see the module docstring)."""
    skill: dict[str, float] = field(default_factory=lambda: dict(SKILL))
    follow: dict[str, float] = field(default_factory=lambda: dict(FOLLOW))


def simulate_readers(store, study: Study, n_per_level: int = 2, levels=LEVELS, seed: int = 0,
                     model: ReaderModel = ReaderModel(), start: float = 1.0e9, name: str = "simulated") -> list[dict]:
    """Register ``n_per_level`` readers of each level (named ``"<name> <level> <i>"``) and let each
    answer every case of the study, unassisted part first; returns the readers.

    Deterministic for a seed (times are simulated from ``start``, not read from the clock)."""
    rng = np.random.default_rng(seed)
    cases = store.cases(study.id)
    choices = list(study.choices)
    readers = []
    now = float(start)
    for level in levels:
        for i in range(n_per_level):
            me = store.reader(study.id, f"{name} {level} {i + 1}", level, now=now)
            readers.append(me)
            for phase in PHASES:
                for case in (c for _, c in cases.iterrows() if c["phase"] == phase):
                    case = case.to_dict()
                    if phase == "assisted" and rng.random() < model.follow[level]:
                        answer = advice(case)["answer"]
                    elif rng.random() < model.skill[level]:
                        answer = case["truth"]
                    else:
                        answer = str(rng.choice([c for c in choices if c != case["truth"]]))
                    confidence = None
                    if study.spec.ask_confidence:
                        malignant = answer_rank(answer, study.question, study.taxonomy) >= 1
                        latent = SEPARATION * malignant + rng.normal()
                        confidence = int(np.searchsorted(RATING_CUTS, latent)) + 1
                    shown = store.mark_shown(me["id"], int(case["id"]), now=now)
                    now = shown + float(rng.uniform(*SECONDS))
                    store.record_answer(me["id"], int(case["id"]), answer, now=now, confidence=confidence)
    return readers
