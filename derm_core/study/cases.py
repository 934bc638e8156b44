"""Reader studies: a teacher's study set-up, the frozen case draw, and the questions' answers.

A study reproduces the seed papers' reader experiments (dermatologists and general
practitioners against, and with, the CNN): a fixed list of cases drawn once from a dataset
folder with a seed, a question (diagnosis among the classes, risk tier, or benign vs
malignant, where *malignant* means any tier above the least urgent, i.e. high-risk or
dangerous), an optional time limit per case, optional clinical data, and a mode:
unassisted, AI-assisted, or both in sequence, on two *different* case sets (as in the GP
study) or on the *same* cases (a fully crossed design, which the multi-reader multi-case
analysis needs). The model's output for every case (probabilities, differential, tier,
answer) is computed once at creation, at the thresholds then active, and frozen with the
cases, so every reader sees the same thing whatever model is loaded later.

Two options measure more than accuracy (Tschandl et al. 2020): a share of the assisted
cases may carry *planted* advice, deliberately wrong (:func:`plant_advice`), which readers
are told about only after they finish; and readers may rate each case's malignancy from 1
to 5, which gives each of them an ROC curve and an AUC.

Storage is :mod:`derm_core.study.store`; scoring and summaries :mod:`derm_core.study.results`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from derm_core.data.clinical import Clinical
from derm_core.data.dataset import clinical_of
from derm_core.data.taxonomy import Taxonomy
from derm_core.errors import StudyError
from derm_core.triage.rules import Thresholds, TriageResult, triage

QUESTIONS = {"diagnosis": "Diagnosis (one of the classes)", "tier": "Risk tier",
             "malignancy": "Benign or malignant"}
BALANCES = {"class": "equal per class", "tier": "equal per risk tier", "data": "as in the data"}
MODES = {"unassisted": "unassisted", "assisted": "AI-assisted (model output and Grad-CAM shown)",
         "both": "both in sequence: unassisted, then AI-assisted"}
DESIGNS = {"different": "a different case set in each part",
           "same": "the same cases in both parts (needed for the multi-reader multi-case analysis)"}
MAX_PLANTED_SHARE = 0.5
CONFIDENCE_LEVELS = {1: "1 · certainly benign", 2: "2 · probably benign", 3: "3 · unsure",
                     4: "4 · probably malignant", 5: "5 · certainly malignant"}
PHASES = ("unassisted", "assisted")
LEVELS = ("student", "resident", "general practitioner", "dermatologist")
TIME_LIMITS = (None, 30, 45)
BENIGN, MALIGNANT = "benign", "malignant"


# ---------------------------------------------------------------------- questions and answers
def choices(question: str, taxonomy: Taxonomy) -> list[str]:
    """The answer options of a question, in display order."""
    if question == "diagnosis":
        return list(taxonomy.classes)
    if question == "tier":
        return list(taxonomy.tier_names)
    if question == "malignancy":
        if len(taxonomy.tier_names) < 2:
            raise StudyError(f"taxonomy {taxonomy.name!r} has one tier only: benign/malignant needs two")
        return [BENIGN, MALIGNANT]
    raise StudyError(f"unknown question {question!r}; choose one of {list(QUESTIONS)}")


def choice_label(code: str, question: str, taxonomy: Taxonomy) -> str:
    """How an answer option is shown to readers."""
    if question == "diagnosis":
        return f"{taxonomy.display_names[code]} ({code})"
    if question == "malignancy":
        urgent = ", ".join(taxonomy.tier_names[1:])
        return {BENIGN: f"benign ({taxonomy.tier_names[0]})", MALIGNANT: f"malignant ({urgent})"}[code]
    return code


def answer_rank(answer: str, question: str, taxonomy: Taxonomy) -> int:
    """The risk-tier rank (0 = least urgent) an answer implies: its class's tier, the tier
    itself, or 0 for benign and 1 (at least the second tier) for malignant."""
    names = taxonomy.tier_names
    if question == "diagnosis":
        return names.index(taxonomy.class_tier[answer])
    if question == "tier":
        return names.index(answer)
    return int(answer == MALIGNANT)


def truth_of(label: str, question: str, taxonomy: Taxonomy) -> str:
    """The correct answer for a case whose recorded diagnosis is ``label``."""
    if question == "diagnosis":
        return label
    rank = taxonomy.tier_names.index(taxonomy.class_tier[label])
    if question == "tier":
        return taxonomy.tier_names[rank]
    return MALIGNANT if rank >= 1 else BENIGN


def model_answer(result: TriageResult, question: str, taxonomy: Taxonomy) -> str:
    """The model's answer at its thresholds: the top of its differential, its tier, or
    malignant when its tier is above the least urgent."""
    if question == "diagnosis":
        return result.differential[0][0]
    if question == "tier":
        return result.tier
    return MALIGNANT if taxonomy.tier_names.index(result.tier) >= 1 else BENIGN


def seconds_left(shown_at: float, limit_s: float | None, now: float) -> float | None:
    """Seconds a reader has left on a case shown at ``shown_at`` (server time); None without a limit."""
    if not limit_s:
        return None
    return max(0.0, float(limit_s) - (float(now) - float(shown_at)))


# ---------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class StudySpec:
    """What the teacher chose. ``n_cases`` is per part: a ``both`` study has twice as many."""

    name: str
    data_dir: str
    question: str = "diagnosis"
    n_cases: int = 20
    balance: str = "class"
    time_limit_s: float | None = None
    show_clinical: bool = False
    mode: str = "unassisted"
    seed: int = 0
    design: str = "different"          # with mode "both": the same or a different case set per part
    planted_share: float = 0.0         # share of the assisted cases whose advice is deliberately wrong
    ask_confidence: bool = False       # readers also rate malignancy 1-5

    def __post_init__(self):
        if not " ".join(str(self.name).split()):
            raise StudyError("give the study a name")
        for field, value, allowed in (("question", self.question, QUESTIONS), ("balance", self.balance, BALANCES),
                                      ("mode", self.mode, MODES), ("design", self.design, DESIGNS)):
            if value not in allowed:
                raise StudyError(f"unknown {field} {value!r}; choose one of {list(allowed)}")
        if isinstance(self.n_cases, bool) or not isinstance(self.n_cases, (int, np.integer)) or self.n_cases < 1:
            raise StudyError(f"the number of cases must be a positive whole number, got {self.n_cases!r}")
        if self.time_limit_s is not None and not float(self.time_limit_s) > 0:
            raise StudyError(f"the time limit must be positive seconds or none, got {self.time_limit_s!r}")
        if self.design == "same" and self.mode != "both":
            raise StudyError("the same cases in both parts needs both parts: choose the mode 'both'")
        if not 0.0 <= float(self.planted_share) <= MAX_PLANTED_SHARE:
            raise StudyError(f"the share of planted advice must be between 0 and {MAX_PLANTED_SHARE:.0%}, "
                             f"got {self.planted_share!r}")
        if self.planted_share and self.mode == "unassisted":
            raise StudyError("planted advice needs an AI-assisted part: choose the mode 'assisted' or 'both'")

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES if self.mode == "both" else (self.mode,)


def _allocate(n: int, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, int]:
    """Split ``n`` as equally as possible over strata of these sizes; a stratum too small gives
    all it has and the rest goes to the others. Leftover units go to strata chosen at random."""
    alloc = dict.fromkeys(sizes, 0)
    remaining = n
    open_ = [k for k in sizes if sizes[k] > 0]
    while remaining > 0 and open_:
        share, extra = divmod(remaining, len(open_))
        bonus = {open_[i] for i in rng.permutation(len(open_))[:extra]}
        for k in open_:
            give = min(share + (k in bonus), sizes[k] - alloc[k])
            alloc[k] += give
            remaining -= give
        open_ = [k for k in open_ if alloc[k] < sizes[k]]
    if remaining > 0:
        raise StudyError(f"only {n - remaining} distinct lesions are available, {n} were asked for")
    return alloc


def draw_cases(table: pd.DataFrame, spec: StudySpec, taxonomy: Taxonomy) -> pd.DataFrame:
    """The study's cases: ``n_cases`` per part, one image per lesion, strata balanced as asked,
    in a seeded random reading order; no lesion in two parts, unless the design is ``same``
    (then the second part shows the first part's cases in another order). Deterministic for a seed.

    Returns the table's rows plus ``phase``, ``position`` and ``truth``.
    """
    rng = np.random.default_rng(spec.seed)
    pool = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    pool = pool.iloc[rng.permutation(len(pool))]
    pool = pool.drop_duplicates("group", keep="first")            # one image per lesion
    if spec.balance == "class":
        strata = pool["label"].astype(str)
    elif spec.balance == "tier":
        strata = pool["label"].map(taxonomy.class_tier).astype(str)
    else:
        strata = pd.Series("all", index=pool.index)
    draws = 1 if spec.design == "same" else len(spec.phases)
    need = spec.n_cases * draws
    if len(pool) < need:
        raise StudyError(f"only {len(pool)} distinct lesions are available, {need} were asked for "
                         f"({spec.n_cases} per part x {draws} case sets)")
    parts, used = [], set()
    for phase in spec.phases:
        if parts and spec.design == "same":       # the same lesions again, in a new reading order
            again = parts[0].iloc[rng.permutation(len(parts[0]))].reset_index(drop=True)
            parts.append(again.assign(phase=phase, position=np.arange(len(again))))
            continue
        free = ~pool["group"].isin(used)
        avail, s = pool[free], strata[free]
        order = sorted(s.unique())
        alloc = _allocate(spec.n_cases, {k: int((s == k).sum()) for k in order}, rng)
        picked = pd.concat([avail[s == k].head(alloc[k]) for k in order if alloc[k]])
        picked = picked.iloc[rng.permutation(len(picked))].reset_index(drop=True)
        picked["phase"] = phase
        picked["position"] = np.arange(len(picked))
        used |= set(picked["group"])
        parts.append(picked)
    out = pd.concat(parts, ignore_index=True)
    out["truth"] = [truth_of(lbl, spec.question, taxonomy) for lbl in out["label"]]
    return out


def same_model(study_model: dict | None, card) -> bool:
    """Whether ``card`` is the model whose outputs a study froze (same weights, same calibration)."""
    if not study_model:
        return False
    me = card.identity().to_dict()
    if abs(float(study_model.get("temperature", math.nan)) - me["temperature"]) > 1e-9:
        return False
    if study_model.get("weights_sha256") and me["weights_sha256"]:
        return study_model["weights_sha256"] == me["weights_sha256"]
    return all(study_model.get(k) == me[k] for k in ("card", "name", "version"))


def model_outputs(predictor, cases: pd.DataFrame, question: str, thresholds: Thresholds,
                  use_clinical: bool, callback=None) -> pd.DataFrame:
    """The model's probabilities, differential, tier and answer for each case, at ``thresholds``.

    The model gets the clinical data only when readers see it (``use_clinical``), so both
    answer from the same information.
    """
    from derm_core.data.images import load_image
    tax = predictor.taxonomy
    rows = []
    for i, r in enumerate(cases.itertuples(index=False)):
        clinical = clinical_of(r) if use_clinical else Clinical()
        # the cases are the dataset's own lesion photos: triaged even where the gate would refuse one
        res = predictor.predict(load_image(r.path), clinical, thresholds, anyway=True)
        rows.append({"model_probs": res.probs, "model_differential": [[c, p] for c, p in res.differential],
                     "model_tier": res.tier, "model_answer": model_answer(res, question, tax)})
        if callback:
            callback(i + 1, len(cases))
    return pd.DataFrame(rows, index=cases.index)


def _wrong_classes(label: str, question: str, taxonomy: Taxonomy) -> list[str]:
    """Classes whose advice is wrong for this question *and* whose tier differs from the truth's
    (for benign/malignant: on the other side), so a class and its matching tier mislead together."""
    names = taxonomy.tier_names
    rank = names.index(taxonomy.class_tier[label])
    out = []
    for c in taxonomy.classes:
        r = names.index(taxonomy.class_tier[c])
        if (min(r, 1) != min(rank, 1)) if question == "malignancy" else (r != rank):
            out.append(c)
    return out


def plant_advice(probs: dict[str, float], label: str, question: str, taxonomy: Taxonomy,
                 thresholds: Thresholds) -> dict:
    """Deliberately wrong advice for a case whose recorded diagnosis is ``label``: a plausible
    wrong class (the one the model itself finds likeliest among the classes of another tier)
    and the tier that goes with it.

    The shown probabilities are the model's with that class's and its top class's values
    swapped, blended towards the wrong class (``(1 - w) * swapped + w * onehot``) with the
    smallest ``w`` in steps of 0.05 at which the triage rules themselves give that class on top
    and its tier: the page then shows it like any output, "Why this tier" included.
    Returns ``{"class", "probs", "differential", "tier", "answer"}`` (JSON-ready).
    """
    classes = list(taxonomy.classes)
    wrong = _wrong_classes(label, question, taxonomy)
    if not wrong:
        raise StudyError(f"no class of another tier than {label!r}'s: wrong advice cannot be planted")
    p = np.array([float(probs[c]) for c in classes])
    c = max(wrong, key=lambda k: p[classes.index(k)])
    i, top = classes.index(c), int(np.argmax(p))
    swapped = p.copy()
    swapped[[i, top]] = p[[top, i]]
    onehot = np.eye(len(classes))[i]
    for w in np.linspace(0.0, 1.0, 21):
        shown = (1.0 - w) * swapped + w * onehot
        res = triage(shown, taxonomy, thresholds)
        if res.differential[0][0] == c and res.tier == taxonomy.class_tier[c]:
            break
    return {"class": c, "probs": {k: float(v) for k, v in zip(classes, shown)},
            "differential": [[k, v] for k, v in res.differential], "tier": res.tier,
            "answer": model_answer(res, question, taxonomy)}


def advice(case) -> dict:
    """What a reader is shown as the AI's advice on an assisted case: the planted advice where
    there is some, else the model's frozen output. Keys: probs, differential, tier, answer."""
    if case.get("planted"):
        return case["planted"]
    return {"probs": case["model_probs"], "differential": case["model_differential"], "tier": case["model_tier"],
            "answer": case["model_answer"]}


def choose_planted(cases: pd.DataFrame, spec: StudySpec, taxonomy: Taxonomy, thresholds: Thresholds) -> pd.Series:
    """The planted advice (or None) of each case: ``round(planted_share x n_cases)`` assisted cases,
    drawn with the study's seed among those where the model's own answer is right (so each planted
    case turns right advice into wrong advice). Fewer when fewer such cases exist."""
    out = pd.Series([None] * len(cases), index=cases.index, dtype=object)
    want = round(float(spec.planted_share) * spec.n_cases)
    if not want:
        return out
    eligible = cases.index[(cases["phase"] == "assisted") & (cases["model_answer"] == cases["truth"])]
    rng = np.random.default_rng([spec.seed, 20])          # its own stream: the draw above stays as it was
    for k in rng.permutation(np.asarray(eligible))[:want]:
        r = cases.loc[k]
        out[k] = plant_advice(r["model_probs"], r["label"], spec.question, taxonomy, thresholds)
    return out


def create_study(store, spec: StudySpec, table: pd.DataFrame, taxonomy: Taxonomy, predictor=None,
                 thresholds: Thresholds | None = None, pool: str = "", callback=None) -> int:
    """Draw the cases, compute the model's output for them (when a predictor is given: needed
    for assisted parts), plant wrong advice where the spec asks, and freeze everything in
    ``store``; returns the study id."""
    if predictor is None and spec.mode != "unassisted":
        raise StudyError("an AI-assisted study needs the model's output: load a model")
    if predictor is not None and tuple(predictor.taxonomy.classes) != tuple(taxonomy.classes):
        raise StudyError(f"the model's classes {list(predictor.taxonomy.classes)} are not the study's "
                         f"{list(taxonomy.classes)}")
    cases = draw_cases(table, spec, taxonomy)
    model = None
    if predictor is not None:
        thresholds = thresholds or predictor.card.thresholds
        cases = cases.join(model_outputs(predictor, cases, spec.question, thresholds, spec.show_clinical, callback))
        cases["planted"] = choose_planted(cases, spec, taxonomy, thresholds)
        model = predictor.card.identity().to_dict()
    cases = cases.rename(columns={"path": "image_path"})
    row = {**asdict(spec), "name": " ".join(spec.name.split()), "data_dir": str(spec.data_dir), "pool": pool,
           "taxonomy": taxonomy.to_dict(), "model": model,
           "thresholds": None if model is None else {"classes": thresholds.classes, "tiers": thresholds.tiers,
                                                     "name": thresholds.name}}
    return store.create_study(row, choices(spec.question, taxonomy), cases)


# ---------------------------------------------------------------------- a stored study
@dataclass(frozen=True)
class Study:
    """A study as stored: its spec, taxonomy, answer choices and the frozen model details."""

    id: int
    spec: StudySpec
    taxonomy: Taxonomy
    choices: tuple[str, ...]
    model: dict | None
    thresholds: Thresholds | None
    created_at: float
    pool: str = ""

    @classmethod
    def load(cls, store, study_id: int) -> Study:
        r = store.study(study_id)
        spec = StudySpec(r["name"], r["data_dir"], r["question"], int(r["n_cases"]), r["balance"], r["time_limit_s"],
                         bool(r["show_clinical"]), r["mode"], int(r["seed"]), r["design"], float(r["planted_share"]),
                         bool(r["ask_confidence"]))
        t = r["thresholds"]
        thr = None if t is None else Thresholds(dict(t["classes"]), dict(t["tiers"]), t.get("name", ""))
        return cls(int(r["id"]), spec, Taxonomy.from_dict(r["taxonomy"]), tuple(r["choices"]), r["model"], thr,
                   float(r["created_at"]), r.get("pool") or "")

    @property
    def question(self) -> str:
        return self.spec.question

    def label(self, code: str) -> str:
        return choice_label(code, self.question, self.taxonomy)

    def describe(self, readers: bool = False) -> str:
        """The set-up in one line; ``readers``: as readers see it, without the planted advice
        (they are told only afterwards)."""
        s = self.spec
        limit = f"{s.time_limit_s:g} s per case" if s.time_limit_s else "no time limit"
        extras = [DESIGNS[s.design].split(" (")[0]] if s.mode == "both" else []
        if s.planted_share and not readers:
            extras.append(f"planted wrong advice on {s.planted_share:.0%} of assisted cases")
        if s.ask_confidence:
            extras.append("malignancy rated 1-5")
        return " · ".join([f"{QUESTIONS[s.question]}", f"{s.n_cases} cases per part, {BALANCES[s.balance]}",
                           MODES[s.mode], *extras, limit, f"clinical data {'shown' if s.show_clinical else 'hidden'}",
                           f"seed {s.seed}"])
