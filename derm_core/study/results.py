"""Reader-study results: scoring, per-reader and per-level summaries, ROC points, tests.

Scoring rules (stated on the Results page too):

* an answer given after the time limit is *timed out*: it counts as wrong for accuracy and
  is left out of sensitivity, specificity, the confusion matrix and the ROC point (the
  reader gave no usable call in time);
* accuracy is the share of a reader's cases answered correctly; balanced accuracy the mean
  over true answers of the share answered correctly;
* a binary *target* is a class against the rest (``"mel"``) or a tier's referral view
  (``"tier:dangerous"`` = dangerous; ``"tier:high-risk"`` = high-risk or more urgent, i.e.
  malignant against benign), as in :mod:`derm_core.evaluate.operating`; a reader's call is positive
  when their answer implies it (a melanoma diagnosis implies the dangerous tier);
* the model's ROC curve on the same cases comes from its frozen probabilities
  (:class:`~derm_core.evaluate.operating.EvalSet`); its own answers and operating point are
  re-derived at whichever thresholds are given, so the active profile applies;
* assisted against unassisted: the parts use different cases, so the comparison is paired
  over readers (Wilcoxon signed-rank, exact for small groups, and a paired t-test on the
  per-reader accuracies); a reader against the model uses the same cases, so McNemar's
  exact test (binomial on the discordant cases) applies. The multi-reader multi-case analysis
  (:mod:`derm_core.study.mrmc`, accuracy) needs the same cases read in both parts, so it is
  reported only for such data and otherwise explained.
"""
from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from derm_core.evaluate.metrics import confusion as confusion_matrix
from derm_core.evaluate.operating import TIER_PREFIX, EvalSet, flags, operating_point, rates
from derm_core.slugs import slugify
from derm_core.study import mrmc
from derm_core.study.cases import LEVELS, PHASES, Study, answer_rank, model_answer
from derm_core.triage.rules import Thresholds, triage

MODEL_READER = "DermTriage model"
MODEL_LEVEL = "model"
ALL_READERS = "all readers"    # reader_choices(): every reader
LEVEL_CHOICE = "level: "       # reader_choices(): the readers of one experience level, e.g. "level: student"
_KEYS = ["reader_id", "reader", "level", "phase"]


def _level_order(levels) -> list[str]:
    known = [lv for lv in (*LEVELS, MODEL_LEVEL) if lv in set(levels)]
    return known + sorted(set(levels) - set(known))


def scored(answers: pd.DataFrame) -> pd.DataFrame:
    """Answers with ``given`` (the answer, None when timed out) and ``correct``."""
    df = answers.copy()
    timed = df["timed_out"].astype(bool)
    df["given"] = df["answer"].where(~timed, None)
    df["correct"] = (~timed) & (df["answer"] == df["truth"])
    return df


def model_as_reader(cases: pd.DataFrame, study: Study, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """The model's own answers on the study's cases, shaped like the readers' answers.

    ``thresholds`` (e.g. the active profile) re-derives the answers from the frozen
    probabilities; None keeps the answers frozen at creation. Empty without model outputs.
    """
    cols = ["answer_id", "study_id", "reader_id", "reader", "level", "case_id", "phase", "position", "image_id",
            "label", "truth", "answer", "timed_out", "seconds", "shown_at", "answered_at", "model_answer"]
    if not len(cases) or cases["model_probs"].isna().any():
        return pd.DataFrame(columns=cols)
    tax = study.taxonomy
    if thresholds is None:
        answers = list(cases["model_answer"])
    else:
        thresholds.check(tax)
        answers = [model_answer(triage(np.array([p[c] for c in tax.classes]), tax, thresholds), study.question, tax)
                   for p in cases["model_probs"]]
    planted = cases["planted"].notna().to_numpy() if "planted" in cases else np.zeros(len(cases), bool)
    return pd.DataFrame({"answer_id": -1, "study_id": study.id, "reader_id": -1, "reader": MODEL_READER,
                         "level": MODEL_LEVEL, "case_id": cases["id"].to_numpy(), "phase": cases["phase"].to_numpy(),
                         "position": cases["position"].to_numpy(), "image_id": cases["image_id"].to_numpy(),
                         "label": cases["label"].to_numpy(), "truth": cases["truth"].to_numpy(), "answer": answers,
                         "timed_out": False, "seconds": np.nan, "shown_at": np.nan, "answered_at": np.nan,
                         "model_answer": answers, "confidence": np.nan, "planted": planted,
                         "planted_answer": None})[cols + ["confidence", "planted", "planted_answer"]]


# ---------------------------------------------------------------------- summaries
def reader_table(answers: pd.DataFrame, reader_id: int | None = None) -> pd.DataFrame:
    """Per reader and part: cases answered, timed out, accuracy, balanced accuracy, seconds
    (only the reader ``reader_id`` when given, e.g. for their own summary)."""
    cols = _KEYS + ["n_cases", "n_timed_out", "accuracy", "balanced_accuracy", "mean_seconds"]
    if reader_id is not None:
        answers = answers[answers["reader_id"] == reader_id]
    if not len(answers):
        return pd.DataFrame(columns=cols)
    df = scored(answers)
    rows = []
    for key, g in df.groupby(_KEYS, sort=False):
        rows.append((*key, len(g), int(g["timed_out"].sum()), float(g["correct"].mean()),
                     float(g.groupby("truth")["correct"].mean().mean()),
                     float(g["seconds"].mean()) if g["seconds"].notna().any() else np.nan))
    return pd.DataFrame(rows, columns=cols)


def level_table(readers: pd.DataFrame) -> pd.DataFrame:
    """Per experience level and part: number of readers and the mean (SD) of their accuracies."""
    cols = ["level", "phase", "n_readers", "accuracy_mean", "accuracy_sd", "balanced_accuracy_mean", "mean_seconds"]
    if not len(readers):
        return pd.DataFrame(columns=cols)
    rows = []
    for lv in _level_order(readers["level"]):
        for ph in PHASES:
            g = readers[(readers["level"] == lv) & (readers["phase"] == ph)]
            if len(g):
                rows.append((lv, ph, len(g), float(g["accuracy"].mean()),
                             float(g["accuracy"].std(ddof=1)) if len(g) > 1 else np.nan,
                             float(g["balanced_accuracy"].mean()), float(g["mean_seconds"].mean())))
    return pd.DataFrame(rows, columns=cols)


def class_table(answers: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Per reader, part and answer option: sensitivity and specificity of that option
    against the others (timed-out answers left out)."""
    cols = _KEYS + ["choice", "n_positive", "sensitivity", "specificity"]
    df = scored(answers)
    df = df[df["given"].notna()]
    rows = []
    for key, g in df.groupby(_KEYS, sort=False):
        truth, given = g["truth"].to_numpy(), g["given"].to_numpy()
        for c in study.choices:
            pos, call = truth == c, given == c
            r = rates((pos & call).sum(), (~pos & call).sum(), (pos & ~call).sum(), (~pos & ~call).sum())
            rows.append((*key, c, int(pos.sum()), float(r["sensitivity"]), float(r["specificity"])))
    return pd.DataFrame(rows, columns=cols)


def level_class_table(classes: pd.DataFrame) -> pd.DataFrame:
    """:func:`class_table` averaged over the readers of each experience level."""
    if not len(classes):
        return pd.DataFrame(columns=["level", "phase", "choice", "n_readers", "sensitivity", "specificity"])
    g = classes.groupby(["level", "phase", "choice"], sort=False)
    out = g.agg(n_readers=("reader_id", "nunique"), sensitivity=("sensitivity", "mean"),
                specificity=("specificity", "mean")).reset_index()
    order = {**{lv: i for i, lv in enumerate(_level_order(out["level"]))}, **{p: i for i, p in enumerate(PHASES)}}
    return out.sort_values(["level", "phase"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def confusion(answers: pd.DataFrame, study: Study) -> np.ndarray:
    """True answer (rows) against given answer (columns), over the study's choices; timed out left out."""
    df = scored(answers)
    df = df[df["given"].notna()]
    index = {c: i for i, c in enumerate(study.choices)}
    if not len(df):
        return np.zeros((len(index), len(index)), dtype=int)
    return confusion_matrix(df["truth"].map(index).to_numpy(), df["given"].map(index).to_numpy(), len(index))


def in_phase(rows: pd.DataFrame, phase: str | None) -> pd.DataFrame:
    """The answers or cases of the part ``phase`` (None: of every part)."""
    return rows if phase is None else rows[rows["phase"] == phase]


def answered_phases(answers: pd.DataFrame, study: Study) -> list[str]:
    """The study's parts that have answers, in the study's order."""
    given = set(answers["phase"]) if len(answers) else set()
    return [p for p in study.spec.phases if p in given]


def with_model(readers: pd.DataFrame, model: pd.DataFrame) -> pd.DataFrame:
    """The :func:`reader_table` of the readers with the model's own rows (``model``: its answers,
    :func:`model_as_reader`) under them. The model reads without help in both parts, so its rows
    name the part's cases ("part 2 cases"), not "assisted"."""
    if not len(model):
        return readers.reset_index(drop=True)
    rows = reader_table(model)
    rows["phase"] = rows["phase"].map(lambda ph: f"part {PHASES.index(ph) + 1} cases")
    return pd.concat([readers, rows], ignore_index=True)


def reader_choices(readers: pd.DataFrame) -> list[str]:
    """Whose answers a view can show: :data:`ALL_READERS`, each experience level
    (``"level: <level>"``, in the usual order) and each reader by name (see :func:`answers_for`)."""
    if not len(readers):
        return [ALL_READERS]
    return [ALL_READERS, *[LEVEL_CHOICE + lv for lv in _level_order(readers["level"])],
            *dict.fromkeys(readers["reader"])]


def answers_for(answers: pd.DataFrame, choice: str = ALL_READERS, phase: str | None = None) -> pd.DataFrame:
    """The answers of the readers a :func:`reader_choices` entry names, in the part ``phase``
    (None: every part). A level entry wins over a reader who named themselves like one.

    Raises:
        ValueError: ``choice`` names no level or reader of these answers.
    """
    sub = in_phase(answers, phase)
    if choice == ALL_READERS:
        return sub
    level = choice[len(LEVEL_CHOICE):] if choice.startswith(LEVEL_CHOICE) else None
    if level is not None and (answers["level"] == level).any():
        return sub[sub["level"] == level]
    if (answers["reader"] == choice).any():
        return sub[sub["reader"] == choice]
    raise ValueError(f"no reader or experience level {choice!r} among these answers")


def studies_table(studies: pd.DataFrame) -> pd.DataFrame:
    """The study list (:meth:`~derm_core.study.store.StudyStore.studies`) as shown: id, name,
    creation time (UTC, to the minute), question, mode and the numbers of cases, readers and answers."""
    created = pd.to_datetime(studies["created_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M")
    return (studies.assign(created=created)[["id", "name", "created", "question", "mode", "n_case_rows", "n_readers",
                                             "n_answers"]]
            .rename(columns={"n_case_rows": "cases", "n_readers": "readers", "n_answers": "answers"}))


# ---------------------------------------------------------------------- ROC
def targets(study: Study) -> list[str]:
    """The binary targets the question allows: class targets need a diagnosis, and a
    benign/malignant question allows only malignant (second tier or more urgent)."""
    tiers = study.taxonomy.tier_names
    tier_targets = [TIER_PREFIX + t for t in reversed(tiers[1:])]
    if study.question == "diagnosis":
        return tier_targets + list(study.taxonomy.classes)
    if study.question == "tier":
        return tier_targets
    return [TIER_PREFIX + tiers[1]]


def target_label(study: Study, target: str) -> str:
    tax = study.taxonomy
    if target.startswith(TIER_PREFIX):
        tier = target[len(TIER_PREFIX):]
        k = tax.tier_names.index(tier)
        if k == 1:
            return f"malignant ({', '.join(tax.tier_names[1:])}) vs benign"
        return f"{tier} tier" + (" or more urgent" if k < len(tax.tier_names) - 1 else "") + " vs the rest"
    return f"{tax.display_names[target]} ({target}) vs the rest"


def _truth_positive(labels, study: Study, target: str) -> np.ndarray:
    tax = study.taxonomy
    if target.startswith(TIER_PREFIX):
        k = tax.tier_names.index(target[len(TIER_PREFIX):])
        return np.array([tax.tier_names.index(tax.class_tier[lb]) >= k for lb in labels], dtype=bool)
    return np.asarray(labels) == target


def _call_positive(given, study: Study, target: str) -> np.ndarray:
    tax = study.taxonomy
    if target.startswith(TIER_PREFIX):
        k = tax.tier_names.index(target[len(TIER_PREFIX):])
        return np.array([answer_rank(a, study.question, tax) >= k for a in given], dtype=bool)
    if study.question != "diagnosis":
        raise ValueError(f"a class target ({target}) needs a diagnosis question")
    return np.asarray(given) == target


def reader_points(answers: pd.DataFrame, study: Study, target: str, phase: str | None = None) -> pd.DataFrame:
    """Each reader's (1 - specificity, sensitivity) for ``target`` per part (timed out left out);
    only in the part ``phase`` when given."""
    cols = _KEYS + ["n_positive", "n_negative", "sensitivity", "specificity", "fpr"]
    if target not in targets(study):
        raise ValueError(f"target {target!r} does not fit a {study.question} question; choose from {targets(study)}")
    df = scored(in_phase(answers, phase))
    df = df[df["given"].notna()]
    rows = []
    for key, g in df.groupby(_KEYS, sort=False):
        pos, call = _truth_positive(g["label"], study, target), _call_positive(g["given"], study, target)
        r = rates((pos & call).sum(), (~pos & call).sum(), (pos & ~call).sum(), (~pos & ~call).sum())
        rows.append((*key, int(pos.sum()), int((~pos).sum()), float(r["sensitivity"]), float(r["specificity"]),
                     1.0 - float(r["specificity"])))
    return pd.DataFrame(rows, columns=cols)


def level_points(points: pd.DataFrame) -> pd.DataFrame:
    """Group averages of the reader points, per experience level and part."""
    cols = ["level", "phase", "n_readers", "sensitivity", "specificity", "fpr"]
    if not len(points):
        return pd.DataFrame(columns=cols)
    rows = []
    for lv in _level_order(points["level"]):
        for ph in PHASES:
            g = points[(points["level"] == lv) & (points["phase"] == ph)]
            if len(g):
                rows.append((lv, ph, len(g), float(g["sensitivity"].mean()), float(g["specificity"].mean()),
                             float(g["fpr"].mean())))
    return pd.DataFrame(rows, columns=cols)


def eval_set(cases: pd.DataFrame, study: Study, phase: str | None = None) -> EvalSet | None:
    """The model's frozen probabilities on these cases (only the part ``phase`` when given) as an
    EvalSet (ROC, AUC with CI); None without them."""
    cases = in_phase(cases, phase)
    if not len(cases) or cases["model_probs"].isna().any():
        return None
    tax = study.taxonomy
    probs = np.array([[p[c] for c in tax.classes] for p in cases["model_probs"]], dtype=float)
    y = np.array([tax.index(lb) for lb in cases["label"]])
    return EvalSet(tax, y, np.log(np.clip(probs, 1e-12, None)), 1.0, cases["image_id"].to_numpy())


def model_point(ev: EvalSet, thresholds: Thresholds, target: str) -> dict[str, float]:
    """The model's sensitivity and specificity for ``target`` at these thresholds: its triage
    flag (the tier it assigns, for a tier target; its probability against the class's threshold,
    for a class), i.e. the point of its ROC curve at these thresholds. Also the threshold and the
    share of the cases it flags (``flagged``: 1.0 puts the point at (1, 1))."""
    r = operating_point(ev, thresholds, target)
    tier = target[len(TIER_PREFIX):] if target.startswith(TIER_PREFIX) else None
    return {"sensitivity": r["sensitivity"], "specificity": r["specificity"], "fpr": 1.0 - r["specificity"],
            "threshold": float(thresholds.tiers[tier] if tier else thresholds.classes[target]),
            "flagged": float(flags(ev, thresholds)[target].mean()) if len(ev) else math.nan}


def model_answer_point(model: pd.DataFrame, study: Study, target: str, phase: str | None = None) -> dict | None:
    """The model's own answers to the study's question (:func:`model_as_reader`) scored like a
    reader's for ``target``; None without them. It equals :func:`model_point` for a tier or
    benign/malignant question; for a diagnosis question the answer is the top of the model's
    differential, whose tier can differ from the tier the model assigns."""
    pts = reader_points(model, study, target, phase) if len(model) else model
    if not len(pts):
        return None
    r = pts.iloc[0]
    return {"sensitivity": float(r["sensitivity"]), "specificity": float(r["specificity"]), "fpr": float(r["fpr"])}


def model_point_note(study: Study, target: str, point: dict | None, thresholds_name: str) -> str:
    """What the model's markers on the reader ROC mean, for the page's caption; says why when
    the star sits in a corner (every or no case flagged at these thresholds)."""
    if not point:
        return "No model point: the study has no model output for these cases."
    if math.isnan(point["sensitivity"]) or math.isnan(point["fpr"]):
        return (f"No model point: the cases of this part have no "
                f"{'positives' if math.isnan(point['sensitivity']) else 'negatives'} for this positive class.")
    what = ("the tier it assigns" if target.startswith(TIER_PREFIX) else "its probability for this class against "
            "the class threshold")
    note = (f"The black star is the model's triage at thresholds {thresholds_name}: {what} "
            f"(threshold {point['threshold']:.3f}), a point on its ROC curve.")
    if point.get("flagged") == 1.0:
        note += (" It is at (1, 1) because at this threshold the model flags every case of this part: the "
                 "referral thresholds are set for high sensitivity, so on a few cases all of them can pass.")
    elif point.get("flagged") == 0.0:
        note += " It is at (0, 0) because at this threshold the model flags none of the cases of this part."
    if study.question == "diagnosis":
        note += (" The open star scores the model's top diagnosis like a reader's answer (drawn where it differs "
                 "from the star).")
    return note


# ---------------------------------------------------------------------- tests
def assistance_comparison(readers: pd.DataFrame, same_cases: bool = False) -> tuple[pd.DataFrame, dict]:
    """Assisted minus unassisted accuracy of each reader who did both parts, and a paired test
    over those readers: Wilcoxon signed-rank (exact for small groups) and a paired t-test
    (``same_cases``: both parts showed the same cases, which only changes how the test is described).
    A p-value is NaN where the test is undefined (fewer than 2 readers, no variation)."""
    r = readers[(readers["reader_id"] >= 0) & readers["phase"].isin(PHASES)]
    acc = {p: r[r["phase"] == p].set_index(["reader_id", "reader", "level"])["accuracy"] for p in PHASES}
    wide = pd.concat(acc, axis=1).dropna().reset_index() if len(r) else pd.DataFrame(
        columns=["reader_id", "reader", "level", *PHASES])
    for p in PHASES:
        if p not in wide.columns:
            wide[p] = pd.Series(dtype=float)
    wide = wide.dropna(subset=list(PHASES))
    wide["difference"] = wide["assisted"] - wide["unassisted"]
    d = wide["difference"].to_numpy(dtype=float)
    n = len(d)
    out = {"n_readers": n, "mean_unassisted": float(wide["unassisted"].mean()) if n else math.nan,
           "mean_assisted": float(wide["assisted"].mean()) if n else math.nan,
           "mean_difference": float(d.mean()) if n else math.nan, "wilcoxon_p": math.nan, "ttest_p": math.nan,
           "test": "paired over readers" + ("" if same_cases else " (the two parts use different cases, so "
                                                                   "McNemar does not apply)")
                   + ": Wilcoxon signed-rank and paired t-test on per-reader accuracy"}
    if n >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if np.any(d != 0):
                out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
            if np.std(d) > 0:
                out["ttest_p"] = float(stats.ttest_rel(wide["assisted"], wide["unassisted"]).pvalue)
    return wide[["reader_id", "reader", "level", "unassisted", "assisted", "difference"]].reset_index(drop=True), out


MRMC_NEEDS_SAME_CASES = (
    "The multi-reader multi-case analysis (Obuchowski-Rockette, which treats readers and cases as random) "
    "compares the same readers on the same cases without and with the AI. This study shows each part a "
    "different case set, so a reader's two accuracies also differ by which cases they drew, and the analysis "
    "cannot separate that from the AI's effect: the paired test over readers above is the comparison here.")


def assistance_mrmc(answers: pd.DataFrame, study: Study | None = None) -> tuple[mrmc.MRMCResult | None, str]:
    """ORH over the readers who answered in both parts, when they read the same cases in both
    (fully crossed); else None and, in plain words, why not. The figure of merit is the AUC of
    the readers' malignancy ratings where the study asks for them, else accuracy (timed out =
    wrong). Cases with planted advice are left out (their advice is not the AI's)."""
    answers = honest(answers)
    df = scored(answers[(answers["reader_id"] >= 0) & answers["phase"].isin(PHASES)])
    both = df.groupby("reader_id")["phase"].nunique() == len(PHASES)
    df = df[df["reader_id"].isin(both[both].index)]
    if df["reader_id"].nunique() < 2:
        return None, "The multi-reader multi-case analysis needs at least two readers who answered in both parts."
    if not set(df.loc[df["phase"] == PHASES[0], "image_id"]) & set(df.loc[df["phase"] == PHASES[1], "image_id"]):
        return None, MRMC_NEEDS_SAME_CASES
    if study is not None and study.spec.ask_confidence:
        fom, score, truth = "auc", df["confidence"].astype(float), malignant(df["label"], study).astype(int)
    else:   # accuracy: every case's truth is "right" (1), a reader's call whether they answered correctly
        fom, score, truth = "accuracy", df["correct"].astype(float), 1
    long = pd.DataFrame({"reader": df["reader"], "case": df["image_id"], "modality": df["phase"],
                         "score": score, "truth": truth})
    try:
        c = mrmc.crossed(long)
        return mrmc.orh(c.truth, c.scores, fom, readers=c.readers), ""
    except mrmc.MRMCError as e:
        return None, f"The multi-reader multi-case analysis cannot be computed yet: {e}."


def mrmc_export(result: mrmc.MRMCResult) -> pd.DataFrame:
    """The MRMC figures as a one-row table, for CSV export."""
    return pd.DataFrame([result.as_dict()])


def mcnemar_vs_model(answers: pd.DataFrame, model: pd.DataFrame) -> pd.DataFrame:
    """Each reader against the model on the same cases: accuracies, discordant counts and
    McNemar's exact two-sided p (binomial test on the discordant cases)."""
    cols = _KEYS + ["n_cases", "reader_accuracy", "model_accuracy", "reader_only", "model_only", "mcnemar_p"]
    if not len(answers) or not len(model):
        return pd.DataFrame(columns=cols)
    m = scored(model).set_index("case_id")["correct"]
    rows = []
    for key, g in scored(answers).groupby(_KEYS, sort=False):
        g = g[g["case_id"].isin(m.index)]
        if not len(g):
            continue
        rc, mc = g["correct"].to_numpy(bool), m.loc[g["case_id"]].to_numpy(bool)
        b, c = int((rc & ~mc).sum()), int((~rc & mc).sum())
        p = float(stats.binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0
        rows.append((*key, len(g), float(rc.mean()), float(mc.mean()), b, c, p))
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------- planted advice
def honest(rows: pd.DataFrame) -> pd.DataFrame:
    """The answers (or cases) without the cases whose advice was planted, in every part (with the
    same cases in both parts, a planted case's unassisted reading goes too, so both parts keep the
    same cases): what the accuracy, ROC and assistance figures are computed on."""
    if "planted" not in rows or not len(rows):
        return rows
    # answers hold a bool, cases the planted advice (a dict) or None
    planted = rows["planted"].map(lambda v: isinstance(v, dict) or (isinstance(v, (bool, np.bool_)) and bool(v)))
    return rows[~rows["image_id"].isin(rows.loc[planted, "image_id"])]


def _standardised_accuracy(answers: pd.DataFrame, truths: pd.Series) -> float:
    """Accuracy of ``answers`` (scored) re-weighted to the mix of correct answers in ``truths``:
    each truth's accuracy weighted by how often it occurs there (truths without answers left out)."""
    acc = answers.groupby("truth")["correct"].mean()
    w = truths.value_counts()
    w = w[w.index.isin(acc.index)]
    return float((acc[w.index] * w).sum() / w.sum()) if len(w) else math.nan


def over_reliance(answers: pd.DataFrame, study: Study) -> tuple[pd.DataFrame, dict]:
    """How the readers fared on the cases whose advice was planted (deliberately wrong), per reader.

    Columns: ``n_planted``; ``followed`` (share of them answered with the planted answer; a timed
    out answer follows nothing); ``accuracy_planted``; ``accuracy_unassisted`` (the same reader
    without the AI on comparable cases: the very cases when both parts show the same cases, else
    their unassisted cases re-weighted to the planted cases' mix of correct answers; NaN without
    an unassisted part); ``difference`` (planted minus unassisted); ``accuracy_honest_advice``
    (assisted cases with the model's own advice); ``switched`` (same cases only: of the planted
    cases they answered right without the AI, the share where they then took the wrong advice).

    The summary adds means over readers and a Wilcoxon signed-rank p on ``difference``.
    """
    cols = ["reader_id", "reader", "level", "n_planted", "followed", "accuracy_planted", "accuracy_unassisted",
            "difference", "accuracy_honest_advice", "switched"]
    df = scored(answers[answers["reader_id"] >= 0]) if len(answers) else scored(answers)
    same = study.spec.design == "same"
    rows = []
    for (rid, name, level), g in df[df["planted"].astype(bool)].groupby(["reader_id", "reader", "level"], sort=False):
        mine = df[df["reader_id"] == rid]
        un = mine[mine["phase"] == "unassisted"]
        if same:
            un = un[un["image_id"].isin(g["image_id"])]
        acc_un = _standardised_accuracy(un, g["truth"])
        ok = mine[(mine["phase"] == "assisted") & ~mine["planted"].astype(bool)]
        switched = math.nan
        if same:
            right_alone = set(un.loc[un["correct"], "image_id"])
            took = g[g["image_id"].isin(right_alone)]
            switched = float((took["given"] == took["planted_answer"]).mean()) if len(took) else math.nan
        acc_p = float(g["correct"].mean())
        rows.append((rid, name, level, len(g), float((g["given"] == g["planted_answer"]).mean()), acc_p, acc_un,
                     acc_p - acc_un, float(ok["correct"].mean()) if len(ok) else math.nan, switched))
    table = pd.DataFrame(rows, columns=cols)
    d = table["difference"].dropna().to_numpy(float)
    summary = {"n_readers": len(table), "n_planted_cases": int(df.loc[df["planted"].astype(bool), "image_id"].nunique()),
               "followed": float(table["followed"].mean()) if len(table) else math.nan,
               "accuracy_planted": float(table["accuracy_planted"].mean()) if len(table) else math.nan,
               "accuracy_unassisted": float(np.nanmean(table["accuracy_unassisted"])) if len(d) else math.nan,
               "difference": float(d.mean()) if len(d) else math.nan, "wilcoxon_p": math.nan}
    if len(d) >= 2 and np.any(d != 0):
        summary["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return table, summary


def over_reliance_summary(summary: dict, study: Study) -> str:
    """The over-reliance figures in plain words, for the page."""
    if not summary["n_readers"]:
        return "No reader has answered a case with planted advice yet."
    n = summary["n_planted_cases"]
    text = (f"On the {n} case{'s' if n != 1 else ''} with planted wrong advice, readers took the wrong advice "
            f"{summary['followed']:.0%} of the time on average and answered {summary['accuracy_planted']:.0%} "
            "correctly")
    if math.isnan(summary["difference"]):
        return text + " (no unassisted part to compare with)."
    base = "the same cases" if study.spec.design == "same" else "comparable cases (same correct answers)"
    p = summary["wilcoxon_p"]
    test = "" if math.isnan(p) else f"; Wilcoxon signed-rank over {summary['n_readers']} readers p = {p:.3f}"
    return (text + f", against {summary['accuracy_unassisted']:.0%} without the AI on {base}: "
            f"{100 * summary['difference']:+.1f} percentage points{test}.")


def debriefing(answers: pd.DataFrame, cases: pd.DataFrame, reader_id: int, study: Study) -> pd.DataFrame:
    """What a reader is told after finishing: each case whose advice was planted, the advice
    shown, the correct answer and theirs. Columns: case, image_path, advice, correct_answer,
    your_answer, followed."""
    cols = ["case", "image_path", "advice", "correct_answer", "your_answer", "followed"]
    if not len(cases) or "planted" not in cases or cases["planted"].isna().all():
        return pd.DataFrame(columns=cols)
    mine = scored(answers[answers["reader_id"] == reader_id]).set_index("case_id")
    rows = []
    for c in cases[cases["planted"].notna()].itertuples(index=False):
        adv = c.planted
        a = mine.loc[c.id] if c.id in mine.index else None
        given = None if a is None else a["given"]
        rows.append((f"{PHASES.index(c.phase) + 1}.{c.position + 1}", c.image_path,
                     f"{study.label(adv['answer'])} (tier {adv['tier']})", study.label(c.truth),
                     "not answered" if a is None else "timed out" if given is None else study.label(given),
                     given == adv["answer"]))
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------- confidence ratings
def malignant(labels, study: Study) -> np.ndarray:
    """Whether each recorded diagnosis is malignant (its tier above the least urgent): what the
    readers' 1-5 malignancy ratings are scored against."""
    return _truth_positive(labels, study, malignant_target(study))


def malignant_target(study: Study) -> str:
    """The binary target the malignancy ratings rank: the second tier or more urgent."""
    return TIER_PREFIX + study.taxonomy.tier_names[1]


def rating_rocs(answers: pd.DataFrame, study: Study, phase: str | None = None) -> pd.DataFrame:
    """Each reader's ROC curve and AUC from their malignancy ratings, per part (every rating as
    given, timed out included: the reader gave it). Columns: the reader keys, n_positive,
    n_negative, auc (NaN without both classes), fpr and tpr (lists, for the figure)."""
    cols = _KEYS + ["n_positive", "n_negative", "auc", "fpr", "tpr"]
    df = in_phase(answers, phase)
    df = df[df["confidence"].notna()] if "confidence" in df else df.iloc[:0]
    rows = []
    for key, g in df.groupby(_KEYS, sort=False):
        y, score = malignant(g["label"], study), g["confidence"].to_numpy(float)
        n1, n0 = int(y.sum()), int((~y).sum())
        if n1 and n0:
            fpr, tpr, _ = roc_curve(y, score)
            auc = float(roc_auc_score(y, score))
        else:
            fpr, tpr, auc = [], [], math.nan
        rows.append((*key, n1, n0, auc, list(map(float, fpr)), list(map(float, tpr))))
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------- export
def _iso(t) -> str:
    return "" if t is None or (isinstance(t, float) and math.isnan(t)) else \
        datetime.fromtimestamp(float(t), UTC).isoformat(timespec="milliseconds")


def export_file_name(study: Study, kind: str) -> str:
    """The CSV file name of one export of a study: ``<study name slug>-<kind>.csv``
    (``study<id>-<kind>.csv`` when the name has no letters or digits)."""
    return f"{slugify(study.spec.name, fallback=f'study{study.id}')}-{kind}.csv"


def answers_export(answers: pd.DataFrame, study: Study) -> pd.DataFrame:
    """All answers of a study, one row each, for CSV export (UTC ISO times)."""
    df = scored(answers)
    return pd.DataFrame({
        "study": study.spec.name, "question": study.question, "reader": df["reader"], "level": df["level"],
        "phase": df["phase"], "position": df["position"] + 1, "image_id": df["image_id"],
        "recorded_diagnosis": df["label"], "correct_answer": df["truth"], "answer": df["answer"],
        "correct": df["correct"], "timed_out": df["timed_out"].astype(bool), "seconds": df["seconds"].round(3),
        "shown_at": [_iso(t) for t in df["shown_at"]], "answered_at": [_iso(t) for t in df["answered_at"]],
        "model_answer": df["model_answer"], "confidence": df["confidence"].astype("Int64"),
        "planted_advice": df["planted"].astype(bool), "planted_answer": df["planted_answer"],
        "followed_planted": df["planted"].astype(bool) & (df["given"] == df["planted_answer"])})

