"""Issue 20's reader-study options: the same cases in both parts, planted wrong advice (and what
it measures), 1-5 malignancy ratings (reader ROC curves, AUC, MRMC on AUC), the store's schema
step 2 migrating an existing file, and simulated readers."""
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import write_dataset
from derm_core.cli import main
from derm_core.data.dataset import load_table
from derm_core.errors import StudyIntegrityError
from derm_core.study import results as R
from derm_core.study.cases import (
    MALIGNANT,
    Study,
    StudyError,
    StudySpec,
    advice,
    create_study,
    draw_cases,
    plant_advice,
)
from derm_core.study.simulate import ReaderModel, simulate_readers
from derm_core.study.store import MIGRATIONS, StudyStore
from derm_core.triage.rules import Thresholds, triage


def _table(n_per_class: int = 6) -> pd.DataFrame:
    rows = [{"image_id": f"{c}_{i:03d}", "label": c, "group": f"L_{c}_{i}", "path": f"/x/{c}_{i}.jpg"}
            for c in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc") for i in range(n_per_class)]
    return pd.DataFrame(rows)


def test_spec_options_are_validated():
    StudySpec("s", "/d", mode="both", design="same", planted_share=0.2, ask_confidence=True)
    for bad in (dict(design="same"), dict(design="crossed", mode="both"), dict(planted_share=0.2),
                dict(planted_share=0.6, mode="assisted"), dict(planted_share=-0.1, mode="both")):
        with pytest.raises(StudyError):
            StudySpec(**{"name": "s", "data_dir": "/d", **bad})


def test_same_design_shows_the_same_lesions_in_both_parts_in_another_order(ham7):
    spec = StudySpec("s", "/d", n_cases=14, mode="both", design="same", seed=3)
    cases = draw_cases(_table(), spec, ham7)
    un, ai = cases[cases["phase"] == "unassisted"], cases[cases["phase"] == "assisted"]
    assert len(un) == len(ai) == 14 and sorted(un["image_id"]) == sorted(ai["image_id"])
    assert list(un["image_id"]) != list(ai["image_id"]) and list(ai["position"]) == list(range(14))
    assert un["label"].value_counts().eq(2).all()                      # still balanced per class
    # 'different' draws as before: no lesion in both parts
    diff = draw_cases(_table(), StudySpec("s", "/d", n_cases=14, mode="both", seed=3), ham7)
    assert not set(diff.loc[diff["phase"] == "unassisted", "group"]) & set(diff.loc[diff["phase"] == "assisted",
                                                                                      "group"])


@pytest.mark.parametrize("question", ["diagnosis", "tier", "malignancy"])
@pytest.mark.parametrize("label", ["mel", "bcc", "nv", "df"])
def test_planted_advice_is_a_plausible_wrong_class_with_its_own_tier(ham7, question, label):
    rng = np.random.default_rng(abs(hash((question, label))) % 2**32)
    thr = Thresholds({c: 0.3 for c in ham7.classes}, {"high-risk": 0.1, "dangerous": 0.05})
    for _ in range(20):
        p = rng.dirichlet(np.ones(7) * 0.5)
        probs = dict(zip(ham7.classes, map(float, p)))
        adv = plant_advice(probs, label, question, ham7, thr)
        c = adv["class"]
        names = ham7.tier_names
        assert ham7.class_tier[c] != ham7.class_tier[label]                  # wrong class, in another tier
        if question == "malignancy":
            assert (names.index(ham7.class_tier[c]) >= 1) != (names.index(ham7.class_tier[label]) >= 1)
        # the most plausible such class by the model's own probabilities
        others = [k for k in ham7.classes if ham7.class_tier[k] != ham7.class_tier[label]
                  and (question != "malignancy" or (names.index(ham7.class_tier[k]) >= 1)
                       != (names.index(ham7.class_tier[label]) >= 1))]
        assert probs[c] == max(probs[k] for k in others)
        # what the page shows follows from the shown probabilities by the triage rules themselves
        shown = np.array([adv["probs"][k] for k in ham7.classes])
        assert shown.sum() == pytest.approx(1.0) and (shown >= 0).all()
        res = triage(shown, ham7, thr)
        assert res.differential[0][0] == c and res.tier == adv["tier"] == ham7.class_tier[c]
        assert [list(d) for d in res.differential] == adv["differential"]
        truth = {"diagnosis": label, "tier": ham7.class_tier[label],
                 "malignancy": MALIGNANT if names.index(ham7.class_tier[label]) >= 1 else "benign"}[question]
        assert adv["answer"] != truth                                        # wrong for the question asked


def test_planted_cases_are_assisted_cases_the_model_got_right(tmp_path, ham7, tiny_predictor):
    data = write_dataset(tmp_path / "data", per_class=6)
    table = load_table(data, ham7)
    store = StudyStore(tmp_path / "s.db")
    spec = StudySpec("P", str(data), "malignancy", 10, "tier", None, False, "both", 0, "same", 0.3, True)
    sid = create_study(store, spec, table, ham7, tiny_predictor)
    cases = store.cases(sid)
    planted = cases[cases["planted"].notna()]
    right = cases[(cases["phase"] == "assisted") & (cases["model_answer"] == cases["truth"])]
    assert len(planted) == min(3, len(right)) and len(planted) >= 1
    assert set(planted["phase"]) == {"assisted"} and set(planted["id"]) <= set(right["id"])
    for r in planted.to_dict("records"):
        assert advice(r) is r["planted"] and r["planted"]["answer"] != r["truth"]
        assert r["model_probs"] and r["model_answer"] == r["truth"]       # the model's own output is kept
    honest = cases[cases["planted"].isna() & (cases["phase"] == "assisted")].iloc[0].to_dict()
    assert advice(honest)["tier"] == honest["model_tier"]
    study = Study.load(store, sid)
    assert study.spec == spec and "planted wrong advice on 30%" in study.describe()
    assert "planted" not in study.describe(readers=True)                # readers are not told
    again = create_study(store, StudySpec("P2", str(data), "malignancy", 10, "tier", None, False, "both", 0, "same",
                                          0.3, True), table, ham7, tiny_predictor)
    assert list(store.cases(again)["planted"].notna()) == list(cases["planted"].notna())   # seeded


def test_ratings_are_required_exactly_when_asked(tmp_path, ham7, tiny_predictor):
    data = write_dataset(tmp_path / "data", per_class=3)
    table = load_table(data, ham7)
    store = StudyStore(tmp_path / "s.db")
    rated = create_study(store, StudySpec("R", str(data), "malignancy", 2, "data", ask_confidence=True), table, ham7)
    plain = create_study(store, StudySpec("N", str(data), "malignancy", 2, "data"), table, ham7)
    for sid, ok, bad in ((rated, 4, None), (plain, None, 4)):
        me = store.reader(sid, "Ann", "resident")
        cid = int(store.cases(sid)["id"].iloc[0])
        store.mark_shown(me["id"], cid, now=10.0)
        with pytest.raises(StudyIntegrityError, match="confidence rating"):
            store.record_answer(me["id"], cid, "benign", now=12.0, confidence=bad)
        assert store.record_answer(me["id"], cid, "benign", now=12.0, confidence=ok)["confidence"] == ok
    with pytest.raises(StudyIntegrityError):                               # 1-5 only
        me = store.reader(rated, "Bo", "student")
        cid = int(store.cases(rated)["id"].iloc[1])
        store.mark_shown(me["id"], cid)
        store.record_answer(me["id"], cid, "benign", confidence=6)


def test_a_version_1_file_is_migrated_with_its_answers(tmp_path, ham7):
    """A study database made before schema step 2 keeps every row and gains the new columns."""
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)                       # schema version 1 and its rows, as an old DermTriage wrote them
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute("PRAGMA user_version = 1")
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("""INSERT INTO study (id, name, created_at, data_dir, question, balance, mode, n_cases, show_clinical,
                   seed, taxonomy, model) VALUES (1, 'old', 1.0, '/d', 'malignancy', 'data', 'both', 1, 0, 0, ?, '{}')""",
                (json.dumps(ham7.to_dict()),))
    con.executemany("INSERT INTO choice VALUES (1, ?, ?)", [("benign", 0), ("malignant", 1)])
    con.execute("""INSERT INTO study_case (id, study_id, phase, position, image_id, image_path, label, truth)
                   VALUES (1, 1, 'unassisted', 0, 'a', '/a.jpg', 'nv', 'benign')""")
    con.execute("""INSERT INTO study_case (id, study_id, phase, position, image_id, image_path, label, truth,
                   model_probs, model_answer) VALUES (2, 1, 'assisted', 0, 'b', '/b.jpg', 'mel', 'malignant', '{}',
                   'benign')""")
    con.execute("INSERT INTO reader VALUES (1, 1, 'Ann', 'resident', 1.0)")
    con.execute("INSERT INTO shown VALUES (1, 1, 1, 5.0)")
    con.execute("INSERT INTO answer (study_id, reader_id, case_id, phase, answer, shown_at, answered_at, seconds, "
                "timed_out) VALUES (1, 1, 1, 'unassisted', 'benign', 5.0, 9.0, 4.0, 0)")
    con.commit()
    con.close()
    store = StudyStore(path)                                              # migrates on open
    assert store.schema_version() == len(MIGRATIONS) == 2
    study = Study.load(store, 1)
    assert study.spec.design == "different" and study.spec.planted_share == 0 and not study.spec.ask_confidence
    answers = store.answers(1)
    assert len(answers) == 1 and answers.loc[0, "answer"] == "benign" and pd.isna(answers.loc[0, "confidence"])
    assert not answers["planted"].any() and list(store.cases(1)["image_id"]) == ["a", "b"]
    # the rebuilt case table keeps its references and rules: an answer to an unknown case is refused,
    # a case may now appear once per part, and the case-phase trigger still holds
    with pytest.raises(StudyIntegrityError):
        store.record_answer(1, 99, "benign")
    con = sqlite3.connect(path)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("""INSERT INTO study_case (study_id, phase, position, image_id, image_path, label, truth, model_probs,
                   model_answer) VALUES (1, 'assisted', 1, 'a', '/a.jpg', 'nv', 'benign', '{}', 'benign')""")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("""INSERT INTO study_case (study_id, phase, position, image_id, image_path, label, truth)
                       VALUES (1, 'unassisted', 1, 'a', '/a.jpg', 'nv', 'benign')""")   # twice in one part
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("""INSERT INTO study_case (study_id, phase, position, image_id, image_path, label, truth, planted)
                       VALUES (1, 'unassisted', 2, 'c', '/c.jpg', 'nv', 'benign', '{}')""")   # planted unassisted
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO shown VALUES (1, 1, 77, 1.0)")                             # no case 77
    con.close()


# ---------------------------------------------------------------------- what the results say
def _crossed_answers(rows):
    """Answers of a same-design malignancy study from (reader, level, image, label, phase, answer,
    confidence, planted answer or None) tuples."""
    df = pd.DataFrame(rows, columns=["reader", "level", "image_id", "label", "phase", "answer", "confidence",
                                     "planted_answer"])
    df["truth"] = np.where(df["label"].isin(["mel", "bcc", "akiec"]), "malignant", "benign")
    df["reader_id"] = df["reader"].map({r: i for i, r in enumerate(dict.fromkeys(df["reader"]))})
    df["case_id"] = df["image_id"].map(hash) + df["phase"].map({"unassisted": 0, "assisted": 1})
    df["timed_out"] = False
    df["planted"] = df["planted_answer"].notna()
    df["position"] = 0
    return df


@pytest.fixture
def study_same(tmp_path, ham7):
    store = StudyStore(tmp_path / "s.db")
    sid = store.create_study({"name": "x", "data_dir": "/d", "question": "malignancy", "balance": "data",
                              "mode": "both", "n_cases": 4, "time_limit_s": None, "show_clinical": False, "seed": 0,
                              "taxonomy": ham7.to_dict(), "model": {"name": "m"}, "thresholds": None,
                              "design": "same", "planted_share": 0.25, "ask_confidence": True},
                             ["benign", "malignant"], pd.DataFrame(columns=["phase"]))
    return Study.load(store, sid)


def test_over_reliance_on_the_same_cases(study_same):
    labels = {"c1": "mel", "c2": "nv", "c3": "bcc", "c4": "nv"}
    rows = []
    # planted: c1 (advice benign) and c2 (advice malignant). A follows both; B follows none and is right alone.
    for reader, level, un_ans, ai_ans in (
            ("A", "student", dict(c1="malignant", c2="benign", c3="malignant", c4="malignant"),
             dict(c1="benign", c2="malignant", c3="malignant", c4="benign")),
            ("B", "dermatologist", dict(c1="malignant", c2="benign", c3="benign", c4="benign"),
             dict(c1="malignant", c2="benign", c3="malignant", c4="benign"))):
        for img, lb in labels.items():
            plant = {"c1": "benign", "c2": "malignant"}.get(img)
            rows.append((reader, level, img, lb, "unassisted", un_ans[img], 3, None))
            rows.append((reader, level, img, lb, "assisted", ai_ans[img], 3, plant))
    answers = _crossed_answers(rows)
    table, summary = R.over_reliance(answers, study_same)
    t = table.set_index("reader")
    assert (t.loc["A", "n_planted"], t.loc["A", "followed"], t.loc["A", "accuracy_planted"]) == (2, 1.0, 0.0)
    assert t.loc["A", "accuracy_unassisted"] == 1.0 and t.loc["A", "difference"] == -1.0 and t.loc["A", "switched"] == 1.0
    assert t.loc["A", "accuracy_honest_advice"] == 1.0                     # c3, c4 assisted: both right
    assert (t.loc["B", "followed"], t.loc["B", "accuracy_planted"], t.loc["B", "switched"]) == (0.0, 1.0, 0.0)
    assert summary["followed"] == 0.5 and summary["difference"] == -0.5 and summary["n_planted_cases"] == 2
    text = R.over_reliance_summary(summary, study_same)
    assert "took the wrong advice 50% of the time" in text and "on the same cases" in text and "-50.0" in text
    # honest(): planted cases leave both parts, so the rest stays crossed
    assert set(R.honest(answers)["image_id"]) == {"c3", "c4"}


def test_over_reliance_standardises_comparable_cases_in_a_different_design(study_same):
    import dataclasses
    study = dataclasses.replace(study_same, spec=dataclasses.replace(study_same.spec, design="different"))
    rows = [("A", "student", "p1", "mel", "assisted", "benign", 2, "benign"),       # planted, truth malignant: followed
            ("A", "student", "p2", "nv", "assisted", "benign", 2, "malignant"),     # planted, truth benign: right
            # unassisted: malignant cases 1/2 right, benign cases 3/3 right -> weighted (1/2 + 1)/2 = 0.75
            ("A", "student", "u1", "mel", "unassisted", "malignant", 4, None),
            ("A", "student", "u2", "bcc", "unassisted", "benign", 2, None),
            ("A", "student", "u3", "nv", "unassisted", "benign", 1, None),
            ("A", "student", "u4", "nv", "unassisted", "benign", 1, None),
            ("A", "student", "u5", "df", "unassisted", "benign", 1, None)]
    table, summary = R.over_reliance(_crossed_answers(rows), study)
    r = table.iloc[0]
    assert r["accuracy_planted"] == 0.5 and r["followed"] == 0.5
    assert r["accuracy_unassisted"] == pytest.approx(0.75) and np.isnan(r["switched"])
    assert "comparable cases" in R.over_reliance_summary(summary, study)


def test_rating_rocs_and_mrmc_on_the_ratings_auc(study_same):
    rng = np.random.default_rng(0)
    labels = ["mel", "nv", "bcc", "nv", "bkl", "akiec", "nv", "df", "mel", "nv"] * 2
    rows = []
    for reader, sep in (("A", 1.0), ("B", 1.5), ("C", 0.5)):
        for i, lb in enumerate(labels):
            m = lb in ("mel", "bcc", "akiec")
            for phase, boost in (("unassisted", 0.0), ("assisted", 1.0)):
                rating = int(np.clip(np.round(3 + (sep + boost) * (m - 0.5) * 2 + rng.normal()), 1, 5))
                rows.append((reader, "resident", f"i{i}", lb, phase, "malignant" if rating >= 3 else "benign",
                             rating, None))
    answers = _crossed_answers(rows)
    rocs = R.rating_rocs(answers, study_same)
    assert len(rocs) == 6
    for r in rocs.itertuples():
        g = answers[(answers["reader"] == r.reader) & (answers["phase"] == r.phase)]
        y = g["label"].isin(["mel", "bcc", "akiec"])
        assert r.auc == pytest.approx(roc_auc_score(y, g["confidence"])) and r.n_positive == y.sum()
        assert r.fpr[0] == 0 and r.tpr[-1] == 1 and len(r.fpr) == len(r.tpr) <= 6
    res, why = R.assistance_mrmc(answers, study_same)
    assert why == "" and res.fom == "auc" and res.n_cases == 20
    by_reader = rocs.set_index(["reader", "phase"])["auc"]
    assert res.reader_foms[:, 1] == pytest.approx([by_reader[(r, "assisted")] for r in res.readers])
    assert R.assistance_mrmc(answers)[0].fom == "accuracy"                 # without the study: accuracy, as before
    out = R.answers_export(answers.assign(label=answers["label"], seconds=1.0, shown_at=1.0, answered_at=2.0,
                                          model_answer="benign"), study_same)
    assert {"confidence", "planted_advice", "planted_answer", "followed_planted"} <= set(out.columns)


def test_debriefing_lists_the_planted_cases_with_the_readers_answers(tmp_path, ham7, tiny_predictor):
    data = write_dataset(tmp_path / "data", per_class=6)
    store = StudyStore(tmp_path / "s.db")
    sid = create_study(store, StudySpec("D", str(data), "malignancy", 10, "tier", None, False, "assisted", 0,
                                        planted_share=0.3), load_table(data, ham7), ham7, tiny_predictor)
    study, cases = Study.load(store, sid), store.cases(sid)
    me = store.reader(sid, "Ann", "student")
    planted = cases[cases["planted"].notna()]
    first = planted.iloc[0]
    store.mark_shown(me["id"], int(first["id"]), now=1.0)
    store.record_answer(me["id"], int(first["id"]), first["planted"]["answer"], now=3.0)
    d = R.debriefing(store.answers(sid), cases, me["id"], study)
    assert len(d) == len(planted) and d["followed"].sum() == 1
    row = d.iloc[0]
    assert row["image_path"] == first["image_path"] and row["correct_answer"] == study.label(first["truth"])
    assert first["planted"]["tier"] in row["advice"] and (d["your_answer"] == "not answered").sum() == len(d) - 1


def test_simulated_readers_show_the_effects_they_were_given(tmp_path, ham7, tiny_predictor):
    """Readers who follow the advice often lose accuracy on planted cases; the store holds a full,
    crossed study the MRMC analysis reads."""
    data = write_dataset(tmp_path / "data", per_class=10)
    store = StudyStore(tmp_path / "s.db")
    sid = create_study(store, StudySpec("Sim", str(data), "malignancy", 24, "tier", 30, False, "both", 0, "same",
                                        0.25, True), load_table(data, ham7), ham7, tiny_predictor)
    study = Study.load(store, sid)
    followers = ReaderModel(skill=dict.fromkeys(("student", "dermatologist"), 0.9),
                            follow=dict.fromkeys(("student", "dermatologist"), 0.8))
    simulate_readers(store, study, 3, levels=("student", "dermatologist"), seed=1, model=followers)
    answers = store.answers(sid)
    assert len(answers) == 6 * 48 and answers["confidence"].between(1, 5).all() and not answers["timed_out"].any()
    table, summary = R.over_reliance(answers, study)
    assert summary["followed"] > 0.5 and summary["difference"] < -0.3
    res, why = R.assistance_mrmc(answers, study)
    assert why == "" and res.fom == "auc" and len(res.readers) == 6


def test_study_demo_command(tmp_path, ham7, tiny_predictor, capsys):
    from derm_core.model.checkpoint import save_model
    card = save_model(tiny_predictor.model, tiny_predictor.card, tmp_path / "m" / "model")
    data = write_dataset(tmp_path / "data", per_class=8)
    db = tmp_path / "demo.db"
    assert main(["study-demo", "--data", str(data), "--model", str(card), "--db", str(db), "--cases", "14",
                 "--question", "malignancy", "--readers-per-level", "2", "--planted", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "8 simulated readers" in out and "MRMC:" in out and "over-reliance:" in out
    assert "ratings AUC, mean over readers: unassisted 0." in out
    store = StudyStore(db)
    assert len(store.answers(int(store.studies()["id"].iloc[0]))) == 8 * 28
