"""Reader-study logic: questions and answers, the seeded balanced case draw, creation with the
model's frozen output, and the scoring (accuracy, sensitivity/specificity, ROC points, tests)."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from conftest import tiny_card, write_dataset
from derm_core.data.clinical import Clinical
from derm_core.data.dataset import clinical_of, load_table
from derm_core.data.images import load_image
from derm_core.data.splits import held_out_cases
from derm_core.data.taxonomy import load_taxonomy
from derm_core.evaluate.figures import reader_roc_figure
from derm_core.study import results as R
from derm_core.study.cases import (
    BENIGN,
    MALIGNANT,
    Study,
    StudyError,
    StudySpec,
    answer_rank,
    choices,
    create_study,
    draw_cases,
    model_answer,
    same_model,
    seconds_left,
    truth_of,
)
from derm_core.study.store import StudyStore
from derm_core.triage.rules import Thresholds, triage


# ---------------------------------------------------------------------- questions
def test_questions_choices_truth_and_implied_tier(ham7):
    assert choices("diagnosis", ham7) == list(ham7.classes)
    assert choices("tier", ham7) == ["low-risk", "high-risk", "dangerous"]
    assert choices("malignancy", ham7) == [BENIGN, MALIGNANT]
    # malignant = high-risk + dangerous tiers
    assert [truth_of(c, "malignancy", ham7) for c in ("mel", "bcc", "akiec", "nv", "bkl", "df", "vasc")] == \
        [MALIGNANT] * 3 + [BENIGN] * 4
    assert truth_of("akiec", "tier", ham7) == "high-risk" and truth_of("nv", "diagnosis", ham7) == "nv"
    assert answer_rank("mel", "diagnosis", ham7) == 2 and answer_rank("bkl", "diagnosis", ham7) == 0
    assert answer_rank("high-risk", "tier", ham7) == 1 and answer_rank(MALIGNANT, "malignancy", ham7) == 1
    with pytest.raises(StudyError):
        choices("colour", ham7)


def test_model_answer_follows_the_thresholds(ham7):
    p = np.array([0.02, 0.02, 0.02, 0.02, 0.30, 0.60, 0.02])       # mel 0.30, nv 0.60
    strict_mel = Thresholds({c: 0.95 for c in ham7.classes} | {"mel": 0.25}, {"high-risk": 0.9, "dangerous": 0.25})
    res = triage(p, ham7, strict_mel)
    assert model_answer(res, "diagnosis", ham7) == "mel"          # only melanoma reaches its threshold
    assert model_answer(res, "tier", ham7) == "dangerous" and model_answer(res, "malignancy", ham7) == MALIGNANT
    lax = Thresholds({c: 0.0 for c in ham7.classes}, {"high-risk": 0.99, "dangerous": 0.99})
    res = triage(p, ham7, lax)
    assert model_answer(res, "diagnosis", ham7) == "nv" and model_answer(res, "malignancy", ham7) == BENIGN


def test_spec_is_validated():
    StudySpec("ok", "/d")
    for bad in (dict(name="  "), dict(question="colour"), dict(balance="x"), dict(mode="x"), dict(n_cases=0),
                dict(n_cases=2.5), dict(time_limit_s=-3)):
        with pytest.raises(StudyError):
            StudySpec(**{"name": "s", "data_dir": "/d", **bad})
    assert StudySpec("s", "/d", mode="both").phases == ("unassisted", "assisted")
    assert seconds_left(100.0, 30, 110.0) == 20.0 and seconds_left(100.0, 30, 200.0) == 0.0
    assert seconds_left(100.0, None, 110.0) is None


# ---------------------------------------------------------------------- drawing
def _table(counts: dict[str, int], per_lesion: int = 2) -> pd.DataFrame:
    rows = []
    for c, n in counts.items():
        for i in range(n):
            rows.append({"image_id": f"{c}_{i:03d}", "label": c, "group": f"L_{c}_{i // per_lesion}",
                         "path": f"/x/{c}_{i}.jpg"})
    return pd.DataFrame(rows)


def test_draw_is_balanced_per_class_one_image_per_lesion_and_seeded(ham7):
    table = _table({c: 12 for c in ham7.classes})                     # 6 lesions per class
    spec = StudySpec("s", "/d", "diagnosis", 14, "class", seed=3)
    a = draw_cases(table, spec, ham7)
    assert len(a) == 14 and a["label"].value_counts().eq(2).all() and a["group"].is_unique
    assert list(a["position"]) == list(range(14)) and set(a["phase"]) == {"unassisted"}
    assert (a["truth"] == a["label"]).all()
    shuffled = table.sample(frac=1, random_state=1)
    assert draw_cases(shuffled, spec, ham7)["image_id"].tolist() == a["image_id"].tolist()   # frozen by the seed
    other = draw_cases(table, StudySpec("s", "/d", "diagnosis", 14, "class", seed=4), ham7)
    assert other["image_id"].tolist() != a["image_id"].tolist()


def test_both_mode_draws_two_different_case_sets(ham7):
    table = _table({c: 8 for c in ham7.classes})                      # 4 lesions per class
    cases = draw_cases(table, StudySpec("s", "/d", "tier", 6, "tier", mode="both", seed=0), ham7)
    parts = {ph: g for ph, g in cases.groupby("phase")}
    assert set(parts) == {"unassisted", "assisted"} and all(len(g) == 6 for g in parts.values())
    assert not set(parts["unassisted"]["group"]) & set(parts["assisted"]["group"])   # no lesion in both parts
    for g in parts.values():                                         # equal per tier: 2 + 2 + 2
        assert g["label"].map(ham7.class_tier).value_counts().eq(2).all()
        assert (g["truth"] == g["label"].map(ham7.class_tier)).all()


def test_rare_classes_give_what_they_have_and_too_few_lesions_is_an_error(ham7):
    table = _table({"mel": 1, "nv": 20, "bcc": 20, "akiec": 2, "bkl": 20, "df": 20, "vasc": 20}, per_lesion=1)
    cases = draw_cases(table, StudySpec("s", "/d", "diagnosis", 21, "class"), ham7)
    counts = cases["label"].value_counts()
    assert len(cases) == 21 and counts["mel"] == 1 and counts["akiec"] == 2
    assert counts.drop(["mel", "akiec"]).between(3, 4).all()         # the shortfall spread over the rest
    data = draw_cases(table, StudySpec("s", "/d", "diagnosis", 10, "data"), ham7)
    assert len(data) == 10 and data["group"].is_unique
    with pytest.raises(StudyError, match="distinct lesions"):
        draw_cases(table, StudySpec("s", "/d", "diagnosis", 60, "class", mode="both"), ham7)


def test_case_pool_prefers_the_models_test_split(tmp_path, ham7):
    data = write_dataset(tmp_path / "data", per_class=2)
    table = load_table(data, ham7)
    card = tiny_card(ham7).with_(path=tmp_path / "model" / "model.json")
    card.path.parent.mkdir()
    assert held_out_cases(data, ham7, card)[0].shape[0] == 14              # no split file: all images
    test_ids = set(table["image_id"][::3])
    pd.DataFrame({"image_id": table["image_id"],
                  "split": ["test" if i in test_ids else "train" for i in table["image_id"]]}).to_csv(
        card.path.parent / "split.csv", index=False)
    pool, where = held_out_cases(data, ham7, card)
    assert set(pool["image_id"]) == test_ids and "test split" in where
    pd.DataFrame({"image_id": ["elsewhere"], "split": ["test"]}).to_csv(card.path.parent / "split.csv", index=False)
    assert len(held_out_cases(data, ham7, card)[0]) == 14                  # another dataset's split: all of it


# ---------------------------------------------------------------------- creation with a model
def test_create_study_freezes_cases_and_the_models_output(tmp_path, ham7, tiny_predictor):
    data = write_dataset(tmp_path / "data", per_class=3)
    table = load_table(data, ham7)
    store = StudyStore(tmp_path / "s.db")
    thr = Thresholds({c: 0.2 for c in ham7.classes}, {"high-risk": 0.4, "dangerous": 0.3}, "teaching profile")
    spec = StudySpec("Course A", str(data), "malignancy", 2, "tier", 45, False, "both", seed=1)
    seen = []
    sid = create_study(store, spec, table, ham7, tiny_predictor, thr, "all", callback=lambda d, n: seen.append((d, n)))
    assert seen[-1] == (4, 4)
    study = Study.load(store, sid)
    assert study.choices == (BENIGN, MALIGNANT) and study.thresholds == thr and study.spec == spec
    assert study.model["name"] == tiny_predictor.card.name and same_model(study.model, tiny_predictor.card)
    cases = store.cases(sid)
    assert list(cases["phase"]) == ["unassisted"] * 2 + ["assisted"] * 2
    assert len(set(cases["image_id"])) == 4
    rows = table.set_index("image_id")
    for r in cases.itertuples():
        # clinical data hidden from readers -> hidden from the model too
        expect = tiny_predictor.predict(load_image(rows.loc[r.image_id, "path"]), Clinical(), thr)
        assert r.model_probs == pytest.approx(expect.probs, abs=1e-5)
        assert r.model_tier == expect.tier and r.model_answer == model_answer(expect, "malignancy", ham7)
        assert r.truth == truth_of(r.label, "malignancy", ham7)
    # a second study with the clinical data shown gives it to the model
    sid2 = create_study(store, StudySpec("Course B", str(data), "diagnosis", 2, "class", None, True, "assisted"),
                        table, ham7, tiny_predictor)
    r = store.cases(sid2).iloc[0]
    expect = tiny_predictor.predict(load_image(r["image_path"]), clinical_of(rows.loc[r["image_id"]]))
    assert r["model_probs"] == pytest.approx(expect.probs, abs=1e-5)
    with pytest.raises(StudyError, match="needs the model"):
        create_study(store, StudySpec("C", str(data), mode="assisted", n_cases=2), table, ham7, None)
    other = tiny_card(ham7).with_(temperature=2.0)
    assert not same_model(study.model, other)


# ---------------------------------------------------------------------- scoring on a designed study
LABELS = ["mel", "mel", "nv", "nv", "bcc", "bkl"]
P_MEL = [0.80, 0.30, 0.05, 0.50, 0.05, 0.20]
P_TOP = [None, ("nv", 0.60), ("nv", 0.90), ("nv", 0.40), ("bcc", 0.70), ("bkl", 0.60)]


def _probs(i, classes):
    """P(mel) and the top class as designed; the rest shared equally."""
    p = dict.fromkeys(classes, 0.0)
    p["mel"] = P_MEL[i]
    if P_TOP[i]:
        p[P_TOP[i][0]] = P_TOP[i][1]
    rest = [c for c in classes if c != "mel" and (not P_TOP[i] or c != P_TOP[i][0])]
    share = (1.0 - sum(p.values())) / len(rest)
    return {c: (share if c in rest else v) for c, v in p.items()}


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    """Six cases per part (labels LABELS), three readers; B's last unassisted answer is late (read-only)."""
    ham7 = load_taxonomy("ham7")
    store = StudyStore(tmp_path_factory.mktemp("designed") / "s.db")
    rows = []
    for phase in ("unassisted", "assisted"):
        for i, lb in enumerate(LABELS):
            p = _probs(i, ham7.classes)
            rows.append({"phase": phase, "position": i, "image_id": f"{phase[0]}{i}", "image_path": "/none",
                         "label": lb, "truth": lb, "model_probs": p, "model_differential": [[lb, p[lb]]],
                         "model_tier": "low-risk", "model_answer": max(p, key=p.get)})
    thr = Thresholds({c: 0.3 for c in ham7.classes}, {"high-risk": 0.3, "dangerous": 0.3}, "card")
    sid = store.create_study({"name": "designed", "data_dir": "/none", "question": "diagnosis", "balance": "class",
                              "mode": "both", "n_cases": 6, "time_limit_s": 30.0, "show_clinical": False, "seed": 0,
                              "taxonomy": ham7.to_dict(), "model": {"name": "m"},
                              "thresholds": {"classes": thr.classes, "tiers": thr.tiers, "name": thr.name}},
                             list(ham7.classes), pd.DataFrame(rows))
    study = Study.load(store, sid)
    cases = store.cases(sid)
    answers = {  # reader: (level, unassisted answers, assisted answers or None)
        "A": ("dermatologist", ["mel", "nv", "nv", "nv", "bcc", "bkl"], ["mel", "mel", "nv", "nv", "bcc", "bkl"]),
        "B": ("student", ["mel", "mel", "mel", "nv", "bkl", "nv"], ["mel", "mel", "nv", "nv", "bcc", "nv"]),
        "C": ("dermatologist", ["nv", "mel", "nv", "mel", "bcc", "bkl"], None),
    }
    for name, (level, unassisted, assisted) in answers.items():
        me = store.reader(sid, name, level)
        for phase, given in (("unassisted", unassisted), ("assisted", assisted)):
            for i, a in enumerate(given or []):
                cid = int(cases[(cases["phase"] == phase) & (cases["position"] == i)]["id"].iloc[0])
                store.mark_shown(me["id"], cid, now=1000.0)
                late = name == "B" and phase == "unassisted" and i == 5
                store.record_answer(me["id"], cid, a, now=1000.0 + (40.0 if late else 10.0))
    return store, study, cases, answers


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_accuracy_and_levels(designed):
    store, study, cases, given = designed
    readers = R.reader_table(store.answers(study.id)).set_index(["reader", "phase"])
    # A: 5/6 then 6/6; B: 3/6 (the late 'nv' on bkl is wrong anyway, and counts as wrong) then 5/6; C: 4/6
    assert readers.loc[("A", "unassisted"), "accuracy"] == pytest.approx(5 / 6)
    assert readers.loc[("A", "assisted"), "accuracy"] == pytest.approx(1.0)
    assert readers.loc[("B", "unassisted"), "accuracy"] == pytest.approx(3 / 6)
    assert readers.loc[("B", "unassisted"), "n_timed_out"] == 1
    assert readers.loc[("C", "unassisted"), "accuracy"] == pytest.approx(4 / 6)
    assert ("C", "assisted") not in readers.index
    for (name, phase), r in readers.iterrows():                        # balanced accuracy as sklearn has it
        level, un, asst = given[name]
        pred = list(un if phase == "unassisted" else asst)
        if name == "B" and phase == "unassisted":
            pred[5] = "timed out"
        assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(LABELS, pred))
        assert r["mean_seconds"] == pytest.approx(10.0 if not (name == "B" and phase == "unassisted") else 15.0)
    levels = R.level_table(R.reader_table(store.answers(study.id))).set_index(["level", "phase"])
    assert levels.loc[("dermatologist", "unassisted"), "n_readers"] == 2
    assert levels.loc[("dermatologist", "unassisted"), "accuracy_mean"] == pytest.approx((5 / 6 + 4 / 6) / 2)
    assert levels.loc[("student", "assisted"), "accuracy_mean"] == pytest.approx(5 / 6)


def test_per_class_sensitivity_specificity_and_confusion(designed):
    store, study, cases, given = designed
    answers = store.answers(study.id)
    table = R.class_table(answers, study)
    for (name, phase), g in table.groupby(["reader", "phase"]):
        level, un, asst = given[name]
        pred = list(un if phase == "unassisted" else asst)
        truth = list(LABELS)
        if name == "B" and phase == "unassisted":                     # the late answer is left out
            pred, truth = pred[:5], truth[:5]
        for r in g.itertuples():
            t, p = np.array(truth) == r.choice, np.array(pred) == r.choice
            sens = skm.recall_score(t, p, zero_division=np.nan) if t.any() else np.nan
            spec = skm.recall_score(~t, ~p) if (~t).any() else np.nan
            assert (math.isnan(r.sensitivity) and math.isnan(sens)) or r.sensitivity == pytest.approx(sens)
            assert r.specificity == pytest.approx(spec)
    sub = answers[(answers["reader"] == "B") & (answers["phase"] == "unassisted")]
    cm = R.confusion(sub, study)
    idx = list(study.choices)
    assert cm.sum() == 5 and cm[idx.index("nv"), idx.index("mel")] == 1 and cm[idx.index("bcc"), idx.index("bkl")] == 1
    per_level = R.level_class_table(table)
    derm_mel = per_level[(per_level["level"] == "dermatologist") & (per_level["phase"] == "unassisted")
                         & (per_level["choice"] == "mel")].iloc[0]
    assert derm_mel["n_readers"] == 2 and derm_mel["sensitivity"] == pytest.approx(0.5)   # A 1/2, C 1/2


def test_reader_points_on_the_models_roc(designed):
    store, study, cases, _ = designed
    answers = store.answers(study.id)
    assert R.targets(study)[:2] == ["tier:dangerous", "tier:high-risk"] and "mel" in R.targets(study)
    pts = R.reader_points(answers, study, "tier:dangerous")
    pts = pts[pts["phase"] == "unassisted"].set_index("reader")
    # dangerous = melanoma, 2 positives. A: 1 of 2 found, no false alarm. B: both found, 1 false alarm among the 3
    # negatives answered in time. C: 1 of 2, 1 false alarm among 4.
    assert (pts.loc["A", "sensitivity"], pts.loc["A", "fpr"]) == (0.5, 0.0)
    assert (pts.loc["B", "sensitivity"], pts.loc["B", "fpr"]) == (1.0, pytest.approx(1 / 3))
    assert (pts.loc["C", "sensitivity"], pts.loc["C", "fpr"]) == (0.5, 0.25)
    avg = R.level_points(pts.reset_index()).set_index("level")
    assert avg.loc["dermatologist", "sensitivity"] == 0.5 and avg.loc["dermatologist", "fpr"] == 0.125
    # malignant (high-risk or worse: mel, mel, bcc): A finds mel #1 and bcc; a diagnosis implies its tier
    mal = R.reader_points(answers, study, "tier:high-risk").set_index(["reader", "phase"])
    assert mal.loc[("A", "unassisted"), "sensitivity"] == pytest.approx(2 / 3)
    assert mal.loc[("A", "unassisted"), "specificity"] == 1.0
    with pytest.raises(ValueError):
        R.reader_points(answers, study, "no-such-target")

    part = cases[cases["phase"] == "unassisted"]
    ev = R.eval_set(part, study)
    pos = np.array(LABELS) == "mel"
    assert ev.auc["mel"][0] == pytest.approx(skm.roc_auc_score(pos, P_MEL))
    thr = Thresholds({c: 0.3 for c in study.taxonomy.classes}, {"high-risk": 0.99, "dangerous": 0.4})
    mp = R.model_point(ev, thr, "tier:dangerous")      # P(mel) >= 0.4: mel #1 and nv #2 flagged
    assert mp["sensitivity"] == 0.5 and mp["fpr"] == 0.25
    fig = reader_roc_figure(ev, "tier:dangerous", "t", pts.reset_index(), R.level_points(pts.reset_index()), mp,
                            "model at x")
    by_name = {t.name: t for t in fig.data if t.name}
    assert any(n.startswith("model ROC: AUC") for n in by_name)
    assert list(by_name["dermatologist (2 readers)"].text) == ["A", "C"]
    assert list(by_name["dermatologist (2 readers)"].x) == [0.0, 0.25]
    assert list(by_name["dermatologist average"].y) == [0.5] and list(by_name["student (1 reader)"].y) == [1.0]
    assert list(by_name["model at x"].x) == [0.25]


def test_model_answers_at_the_active_thresholds(designed):
    store, study, cases, _ = designed
    frozen = R.model_as_reader(cases, study)
    assert list(frozen["answer"]) == list(cases["model_answer"]) and (frozen["reader"] == R.MODEL_READER).all()
    mel_first = Thresholds({c: 0.95 for c in study.taxonomy.classes} | {"mel": 0.25},
                           {"high-risk": 0.3, "dangerous": 0.3})
    active = R.model_as_reader(cases, study, mel_first)
    for r, p in zip(active.itertuples(), cases["model_probs"]):
        assert r.answer == triage(np.array([p[c] for c in study.taxonomy.classes]), study.taxonomy,
                                  mel_first).differential[0][0]
    assert active["answer"].iloc[1] == "mel" and frozen["answer"].iloc[1] == "nv"   # case 2 changes its mind
    table = R.reader_table(active).set_index("phase")
    assert table.loc["unassisted", "accuracy"] == pytest.approx(np.mean(active["answer"][:6] == np.array(LABELS)))

    vs = R.mcnemar_vs_model(store.answers(study.id), frozen).set_index(["reader", "phase"])
    # frozen model = argmax: right on mel #1, nv #1, bcc, bkl (4/6). A (5/6) is right on nv #2 where the model
    # is not, and never wrong where it is right.
    a = vs.loc[("A", "unassisted")]
    assert (a["reader_only"], a["model_only"]) == (1, 0) and a["mcnemar_p"] == 1.0
    assert a["model_accuracy"] == pytest.approx(4 / 6)


def test_assisted_vs_unassisted_is_paired_over_readers(designed):
    store, study, _, _ = designed
    per, test = R.assistance_comparison(R.reader_table(store.answers(study.id)))
    # A 5/6 -> 6/6, B 3/6 -> 5/6; C read one part only and is left out
    assert list(per["reader"]) == ["A", "B"] and test["n_readers"] == 2
    assert list(per["difference"]) == pytest.approx([1 / 6, 2 / 6])
    assert test["mean_difference"] == pytest.approx(0.25)
    assert test["wilcoxon_p"] == pytest.approx(0.5)                   # exact: 2 of the 4 sign patterns as extreme
    # paired t: t = 3 on 1 degree of freedom (Cauchy): p = 1 - 2/pi * atan(3)
    assert test["ttest_p"] == pytest.approx(1 - 2 / math.pi * math.atan(3))
    assert "Wilcoxon" in test["test"] and "McNemar does not apply" in test["test"]


def test_answers_export(designed):
    store, study, _, _ = designed
    out = R.answers_export(store.answers(study.id), study)
    assert len(out) == 6 + 6 + 6 + 6 + 6
    late = out[(out["reader"] == "B") & (out["phase"] == "unassisted") & (out["position"] == 6)].iloc[0]
    assert late["timed_out"] and not late["correct"] and late["seconds"] == 40.0
    assert late["shown_at"].startswith("1970-01-01T00:16:40")
    assert set(out.columns) >= {"reader", "level", "image_id", "answer", "correct_answer", "model_answer"}


def test_results_page_filters(designed):
    store, study, cases, _ = designed
    answers = store.answers(study.id)
    readers = R.reader_table(answers)
    assert R.answered_phases(answers, study) == ["unassisted", "assisted"]
    assert R.answered_phases(answers[answers["phase"] == "assisted"], study) == ["assisted"]
    assert R.answered_phases(answers.iloc[:0], study) == []
    # whose answers: everyone, a level (usual order), a reader
    assert R.reader_choices(readers) == ["all readers", "level: student", "level: dermatologist", "A", "B", "C"]
    assert R.reader_choices(readers.iloc[:0]) == ["all readers"]
    un = R.answers_for(answers, "all readers", "unassisted")
    assert len(un) == 18 and set(un["phase"]) == {"unassisted"}
    derm = R.answers_for(answers, "level: dermatologist", "assisted")
    assert set(derm["reader"]) == {"A"} and len(derm) == 6                 # C read one part only
    assert len(R.answers_for(answers, "level: dermatologist")) == 18
    b = R.answers_for(answers, "B", "unassisted")
    assert set(b["reader"]) == {"B"} and len(b) == 6
    assert R.confusion(b, study).sum() == 5                                # the late answer stays out
    with pytest.raises(ValueError):
        R.answers_for(answers, "Zoe")
    # one reader's own summary; the model's rows under the readers'
    mine = R.reader_table(answers, reader_id=int(answers.loc[answers["reader"] == "C", "reader_id"].iloc[0]))
    assert list(mine["reader"]) == ["C"] and mine["accuracy"].iloc[0] == pytest.approx(4 / 6)
    model = R.model_as_reader(cases, study)
    both = R.with_model(readers, model)
    assert len(both) == len(readers) + 2 and list(both["reader"].iloc[-2:]) == [R.MODEL_READER] * 2
    assert list(both["phase"].iloc[-2:]) == ["part 1 cases", "part 2 cases"]   # the model is never "assisted"
    assert R.with_model(readers, model.iloc[:0]).equals(readers)
    # ROC points and the model's curve of one part
    pts = R.reader_points(answers, study, "tier:dangerous", "assisted")
    assert set(pts["phase"]) == {"assisted"} and set(pts["reader"]) == {"A", "B"}
    assert len(R.reader_points(answers, study, "tier:dangerous")) == 5
    assert len(R.eval_set(cases, study, "unassisted")) == 6 and len(R.eval_set(cases, study)) == 12


def test_study_list_and_export_names(designed):
    store, study, _, _ = designed
    shown = R.studies_table(store.studies())
    assert list(shown.columns) == ["id", "name", "created", "question", "mode", "cases", "readers", "answers"]
    row = shown.set_index("id").loc[study.id]
    assert row["name"] == "designed" and row["readers"] == 3 and len(row["created"]) == len("2024-01-01 10:00")
    assert R.export_file_name(study, "answers") == "designed-answers.csv"
    from dataclasses import replace
    odd = replace(study, spec=replace(study.spec, name="GP day, März #2"))
    assert R.export_file_name(odd, "per-class") == "gp-day-m-rz-2-per-class.csv"
    nameless = replace(study, spec=replace(study.spec, name="???"))
    assert R.export_file_name(nameless, "levels") == f"study{study.id}-levels.csv"


# ---------------------------------------------------------------------- the model's points and the figures (issue 17)
def test_the_models_point_and_its_answers_for_the_question(designed):
    """The star is the model's triage flag at the thresholds (a point on its curve); its answers
    to the question, scored like a reader's, are the same point for a tier or benign/malignant
    question and the top diagnosis's for a diagnosis question."""
    from dataclasses import replace
    _, study, cases, _ = designed
    ev = R.eval_set(cases, study, "unassisted")
    thr = Thresholds({c: 0.3 for c in study.taxonomy.classes}, {"high-risk": 0.99, "dangerous": 0.1}, "low")
    mp = R.model_point(ev, thr, "tier:dangerous")     # P(mel) >= 0.1: both mel and 2 of the 4 others
    assert (mp["sensitivity"], mp["fpr"], mp["threshold"], mp["flagged"]) == (1.0, 0.5, 0.1, pytest.approx(4 / 6))
    # the top diagnosis (classes at 0.3): mel, nv, nv, mel, bcc, bkl -> one mel found, one false alarm
    ap = R.model_answer_point(R.model_as_reader(cases, study, thr), study, "tier:dangerous", "unassisted")
    assert (ap["sensitivity"], ap["fpr"]) == (0.5, 0.25)
    assert R.model_answer_point(R.model_as_reader(cases.iloc[:0], study, thr), study, "tier:dangerous") is None
    for question, choices_ in (("malignancy", (BENIGN, MALIGNANT)), ("tier", tuple(study.taxonomy.tier_names))):
        other = replace(study, spec=replace(study.spec, question=question), choices=choices_)
        for target in R.targets(other):
            same = R.model_answer_point(R.model_as_reader(cases, other, thr), other, target, "unassisted")
            star = R.model_point(ev, thr, target)
            assert (same["sensitivity"], same["fpr"]) == (star["sensitivity"], star["fpr"]), (question, target)
    # every case flagged: the star sits at (1, 1), and the note says why; no positives: no star
    everything = Thresholds(thr.classes, {"high-risk": 0.001, "dangerous": 0.001}, "all")
    corner = R.model_point(ev, everything, "tier:dangerous")
    assert (corner["sensitivity"], corner["fpr"], corner["flagged"]) == (1.0, 1.0, 1.0)
    note = R.model_point_note(study, "tier:dangerous", corner, "all")
    assert "(1, 1)" in note and "flags every case" in note and "0.001" in note and "top diagnosis" in note
    assert "(1, 1)" not in R.model_point_note(study, "tier:dangerous", mp, "low")
    none_pos = R.model_point(ev, thr, "vasc")
    assert "no positives" in R.model_point_note(study, "vasc", none_pos, "low")


def test_reader_roc_draws_edge_markers_whole_and_wraps_its_title(designed):
    from derm_core.evaluate.figures import READER_ROC_RANGE, wrap_title
    store, study, cases, _ = designed
    answers = store.answers(study.id)
    ev = R.eval_set(cases, study, "unassisted")
    pts = R.reader_points(answers, study, "tier:dangerous", "unassisted")
    pts.loc[0, ["sensitivity", "fpr"]] = 0.0            # a reader who called nothing positive: at (0, 0)
    thr = Thresholds({c: 0.3 for c in study.taxonomy.classes}, {"high-risk": 0.99, "dangerous": 0.1}, "low")
    mp, ap = R.model_point(ev, thr, "tier:dangerous"), {"sensitivity": 0.5, "fpr": 0.25}
    title = "malignant (high-risk, dangerous) vs benign · unassisted part · 3 readers"
    narrow = reader_roc_figure(ev, "tier:dangerous", title, pts, R.level_points(pts), mp, "model at low",
                               width=330, answers_pt=ap, answers_label="model's top diagnosis")
    lo, hi = narrow.layout.xaxis.range
    assert tuple(narrow.layout.yaxis.range) == (lo, hi) == tuple(READER_ROC_RANGE) and lo < -0.01 and hi > 1.01
    markers = [t for t in narrow.data if t.mode == "markers"]
    assert markers and all(t.cliponaxis is False for t in markers)
    names = [t.name for t in narrow.data]
    assert "model at low" in names and "model's top diagnosis" in names
    # the title: wrapped at its separators to the figure's width, the top margin grown to hold it
    lines = narrow.layout.title.text.split("<br>")
    words = [w for w in " ".join(lines).split() if w != "·"]
    assert len(lines) >= 2 and words == [w for w in title.split() if w != "·"]
    assert all(len(line) * 0.56 * 14 <= 330 for line in lines)
    wide = reader_roc_figure(ev, "tier:dangerous", title, pts, R.level_points(pts), mp, "model at low", width=900,
                             answers_pt=dict(mp))       # the answers where the star is: not drawn twice
    assert "<br>" not in wide.layout.title.text and wide.layout.margin.t < narrow.layout.margin.t
    assert "model's answers" not in [t.name for t in wide.data]
    assert wrap_title("a · b", 500) == ["a · b"] and len(wrap_title("x" * 30 + " " + "y" * 30, 250)) == 2


@pytest.mark.parametrize("labels", [[BENIGN, MALIGNANT], ["low-risk", "high-risk", "dangerous"],
                                    ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]])
def test_reader_confusion_matrix_has_square_readable_cells(labels):
    from derm_core.evaluate.figures import confusion_figure
    n = len(labels)
    cm = np.arange(n * n).reshape(n, n)
    fig = confusion_figure(cm, labels, title="level: general practitioner, unassisted part",
                           axis_names=("correct", "answered"), cell_px=48, width=564)
    L = fig.layout
    plot_w, plot_h = L.width - L.margin.l - L.margin.r, L.height - L.margin.t - L.margin.b
    assert plot_w == plot_h >= 100 and L.width <= 564                  # square, a usable height, fits
    assert plot_w / n >= 7 * max(map(len, labels))                     # an x label fits under its cell
    assert L.margin.l >= 7 * max(map(len, labels)) + 20                # the y labels and title fit on the left
    assert L.xaxis.automargin is False and L.yaxis.automargin is False
    assert all(len(line) * 0.56 * 14 <= L.width for line in L.title.text.split("<br>"))
    narrow = confusion_figure(cm, labels, cell_px=48, width=240)
    assert narrow.layout.width <= max(240, narrow.layout.margin.l + 110)
    # without cell_px (the Model lab): the stretching figure, unchanged
    lab = confusion_figure(cm, labels).layout
    assert lab.height == 80 + 38 * n and lab.width is None


def test_mrmc_needs_the_same_cases_in_both_parts(designed):
    """The app's parts use different case sets: no ORH, and the page says why in words."""
    store, study, _, _ = designed
    answers = store.answers(study.id)
    res, why = R.assistance_mrmc(answers)
    assert res is None and why == R.MRMC_NEEDS_SAME_CASES and "different case set" in why
    res, why = R.assistance_mrmc(answers[answers["reader"] == "A"])
    assert res is None and "at least two readers" in why
    assert R.assistance_mrmc(answers.iloc[:0])[0] is None


def test_mrmc_on_accuracy_when_the_cases_are_crossed(designed):
    """Answers where both parts show the same images (as a crossed study would): ORH on accuracy,
    timed out counting wrong; a missing answer is named."""
    store, study, _, _ = designed
    answers = store.answers(study.id)
    crossed = answers[answers["reader"].isin(["A", "B"])].copy()
    crossed["image_id"] = crossed["image_id"].str[1:]                 # 'u3' and 'a3' become the same case '3'
    res, why = R.assistance_mrmc(crossed)
    assert why == "" and res.fom == "accuracy" and res.readers == ("A", "B") and res.n_cases == 6
    assert res.reader_foms[:, 0] == pytest.approx([5 / 6, 3 / 6]) and res.reader_foms[:, 1] == pytest.approx([1, 5 / 6])
    assert res.effect == pytest.approx(0.25) and "readers' accuracy rose by 25.0 percentage points" in res.summary()
    row = R.mrmc_export(res)
    assert len(row) == 1 and row.loc[0, "effect"] == pytest.approx(0.25) and row.loc[0, "n_cases"] == 6
    res, why = R.assistance_mrmc(crossed.iloc[1:])
    assert res is None and "not fully crossed" in why and "'A'" in why
