"""The Reader study page, headless with AppTest: a teacher sets up a study, two readers take it at
the same time (two AppTest sessions on one database), the results show them on the model's ROC;
a reload continues where the reader stopped, a late answer is timed out, a broken database is reported."""
import base64
import json
import sqlite3

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest import ROOT, page_text, tiny_card, write_dataset
from derm_core.data.dataset import load_table
from derm_core.model.checkpoint import save_model
from derm_core.model.networks import create_model
from derm_core.model.predictor import Predictor
from derm_core.study.cases import StudySpec, create_study
from derm_core.study.results import MRMC_NEEDS_SAME_CASES
from derm_core.study.store import StudyStore


@pytest.fixture
def env(tmp_path, ham7, monkeypatch):
    torch.manual_seed(0)
    card = save_model(create_model("tiny_test", 7, use_metadata=True, pretrained="none"), tiny_card(ham7),
                      tmp_path / "model" / "model")
    data = write_dataset(tmp_path / "data", per_class=3)
    db = tmp_path / "home" / "studies.sqlite3"
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(card))
    monkeypatch.setenv("DERMTRIAGE_DATA", str(data))
    monkeypatch.setenv("DERMTRIAGE_STUDY_DB", str(db))
    monkeypatch.setenv("DERMTRIAGE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    return {"card": card, "data": data, "db": db}


def _page(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/reader_study.py")
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _values(v) -> list:
    """A plotly JSON array: a list, or plotly's base64 typed array ``{"dtype", "bdata"}``."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _sign_in(at, name, level):
    at.radio(key="rs_section").set_value("Read").run()
    at.text_input(key="rs_reader_name").input(name)
    at.selectbox(key="rs_reader_level").set_value(level)
    at.button(key="rs_start").click().run()
    assert not at.exception, at.exception
    assert f"Reading as **{name}** ({level})" in page_text(at)


def _answer_radio(at):
    found = [r for r in at.radio if (r.key or "").startswith("rs_answer_")]
    assert len(found) == 1, page_text(at)
    return found[0], int(found[0].key.rsplit("_", 1)[1])


def _answer(at, choose):
    """Answer the case on screen with ``choose(case_id)``; returns the case id."""
    radio, case_id = _answer_radio(at)
    code = choose(case_id)
    radio.set_value(next(o for o in radio.options if o == code or o.endswith(f"({code})") or o.startswith(f"{code} (")))
    at.button(key="rs_submit").click().run()
    assert not at.exception, at.exception
    return case_id


def test_teacher_sets_up_two_readers_read_at_once_and_results_show_them_on_the_roc(env, monkeypatch):
    import streamlit
    image_widths = []                                 # every st.image width the page asks for
    real_image = streamlit.image

    def image(*args, **kw):
        image_widths.append(kw.get("width"))
        return real_image(*args, **kw)
    monkeypatch.setattr(streamlit, "image", image)
    # the browser reports a 300 px wide main area (a narrow window): the case row stacks, images fit it
    monkeypatch.setattr("pages._common.column_width", lambda key, default=320: 300)
    teacher = _page()
    assert not teacher.exception, teacher.exception
    assert "not a medical device" in page_text(teacher) and str(env["db"]) in page_text(teacher)
    teacher.text_input(key="rs_new_name").input("Ward round")
    teacher.radio(key="rs_new_mode").set_value("both").run()
    teacher.radio(key="rs_new_design").set_value("different")      # as in the GP study: two case sets
    teacher.number_input(key="rs_new_n").set_value(3)
    teacher.selectbox(key="rs_new_balance").set_value("tier")       # one case per risk tier and part
    teacher.selectbox(key="rs_new_limit").set_value(45)
    teacher.button(key="rs_create").click().run()
    assert not teacher.exception, teacher.exception
    assert "Study **Ward round** created" in page_text(teacher)
    store = StudyStore(env["db"])
    sid = int(store.studies()["id"].iloc[0])
    truth = dict(zip(store.cases(sid)["id"], store.cases(sid)["truth"]))
    assert len(truth) == 6

    ann, bob = _page(), _page()                       # two browser sessions on the same database
    _sign_in(ann, "Ann", "dermatologist")
    _sign_in(bob, "Bob", "student")
    assert "45 s left" in page_text(ann)                 # the countdown of a timed study
    # a Material icon, not an emoji (no emoji font on an offline machine: it showed as an empty box)
    assert ":material/timer: 45 s left" in page_text(ann) and "⏱" not in page_text(ann)
    seen = {"Ann": [], "Bob": []}
    for step in range(6):                             # interleaved: each answers, then the other
        seen["Ann"].append(_answer(ann, lambda cid: truth[cid]))
        seen["Bob"].append(_answer(bob, lambda cid: "nv"))
        if step == 2:                                 # after three cases: the AI-assisted part, a different set
            assert "Part 2: AI-assisted" in page_text(ann) and "DermTriage's output" in page_text(ann)
            assert "Why this tier: P(" in page_text(ann)     # the tier explains itself, as on the triage page
            assert len(ann.get("image")) == 2         # the case and its Grad-CAM
            assert image_widths and all(isinstance(w, int) and w <= 300 for w in image_widths), image_widths
    assert seen["Ann"] == seen["Bob"] and len(set(seen["Ann"])) == 6   # same frozen cases, same order
    assert "All 6 cases answered" in page_text(ann) and "accuracy **100%**" in page_text(ann)

    got = store.answers(sid)
    assert len(got) == 12 and set(got["reader"]) == {"Ann", "Bob"} and not got["timed_out"].any()

    res = _page()
    res.radio(key="rs_section").set_value("Results").run()
    assert not res.exception, res.exception
    res.radio(key="rs_res_phase").set_value("unassisted").run()
    res.selectbox(key="rs_res_target").set_value("tier:high-risk").run()   # malignant vs benign
    assert not res.exception, res.exception
    for d in res.table:                       # read as a person reads it (issue 17): no "None", no snake_case
        text = d.value.astype(str).to_string()
        assert not d.value.isna().any().any() and "None" not in text and "nan" not in text, d.value
        assert not any("_" in str(c) for c in d.value.columns), d.value
    readers = next(d.value for d in res.table if "accuracy" in d.value.columns and "reader" in d.value.columns)
    readers = readers.set_index(["reader", "phase"])
    bob_acc = sum(truth[c] == "nv" for c in seen["Bob"][:3]) / 3
    assert float(readers.loc[("Ann", "unassisted"), "accuracy"]) == 1.0
    assert float(readers.loc[("Bob", "unassisted"), "accuracy"]) == pytest.approx(bob_acc, abs=5e-4)
    assert ("DermTriage model", "part 2 cases") in readers.index     # the model reads without help
    roc = next(c for c in res.get("plotly_chart") if "1 - specificity" in c.proto.spec)
    traces = {t.get("name"): t for t in json.loads(roc.proto.spec)["data"]}
    assert _values(traces["dermatologist (1 reader)"]["text"]) == ["Ann"]
    assert _values(traces["student (1 reader)"]["text"]) == ["Bob"]
    # one low-risk, one high-risk, one dangerous case: Ann right on all, Bob ('nv') never calls malignant
    ann_pt, bob_pt = traces["dermatologist (1 reader)"], traces["student (1 reader)"]
    assert (_values(ann_pt["x"]), _values(ann_pt["y"])) == ([0.0], [1.0])
    assert (_values(bob_pt["x"]), _values(bob_pt["y"])) == ([0.0], [0.0])
    assert {"dermatologist average", "student average"} <= set(traces)
    assert any((n or "").startswith("model at") for n in traces)
    spec = json.loads(roc.proto.spec)
    assert spec["layout"]["xaxis"]["range"][0] < 0 and spec["layout"]["yaxis"]["range"][1] > 1   # edge markers whole
    assert all(t.get("cliponaxis") is False for t in spec["data"] if t.get("mode") == "markers")
    assert "black star is the model's triage" in page_text(res)
    cm = json.loads(next(c for c in res.get("plotly_chart") if "reader's answer" in c.proto.spec).proto.spec)["layout"]
    m = cm["margin"]
    plot_w, plot_h = cm["width"] - m["l"] - m["r"], cm["height"] - m["t"] - m["b"]
    assert plot_w == plot_h >= 100                    # square cells, a usable plot area (was 64 px high)
    assert "Wilcoxon" in page_text(res)
    assert "Multi-reader multi-case analysis.** " + MRMC_NEEDS_SAME_CASES in page_text(res)   # why not, in words
    buttons = res.get("download_button")
    labels = [b.proto.label for b in buttons]
    assert len(buttons) == 5 and all(len(lb) <= 17 and "CSV" not in lb for lb in labels), labels   # fit at 1024 px


def test_reload_continues_late_answer_is_timed_out(env, ham7):
    pred = Predictor.from_path(env["card"], device=torch.device("cpu"))
    store = StudyStore(env["db"])
    sid = create_study(store, StudySpec("Quiz", str(env["data"]), "malignancy", 3, "data", 30, True, "unassisted"),
                       load_table(env["data"], ham7), ham7, pred)
    first = _page()
    _sign_in(first, "Cleo", "resident")
    done = _answer(first, lambda cid: "benign")
    assert "1 of 3 cases answered" in page_text(first)

    again = _page(study=str(sid), reader="Cleo")       # a reload: the link keeps study and reader
    assert not again.exception, again.exception
    assert "Reading as **Cleo** (resident)" in page_text(again) and "1 of 3 cases answered" in page_text(again)
    _, case_id = _answer_radio(again)
    assert case_id != done
    con = sqlite3.connect(env["db"])                    # the case was first shown 100 s ago
    with con:
        con.execute("UPDATE shown SET shown_at = shown_at - 100 WHERE case_id = ?", (case_id,))
    con.close()
    again.run()
    assert "Time is up" in page_text(again)
    _answer(again, lambda cid: "malignant")
    assert "Recorded as timed out" in page_text(again)
    row = store.answers(sid).set_index("case_id").loc[case_id]
    assert row["timed_out"] and row["seconds"] >= 100

    other = _page()                                    # same name in a new session: continues, keeps the level
    _sign_in(other, "Cleo", "resident")
    assert "2 of 3 cases answered" in page_text(other)


def test_setup_errors_and_a_broken_database_are_reported(env, tmp_path, monkeypatch):
    at = _page()
    at.text_input(key="rs_new_name").input("Too big")
    at.number_input(key="rs_new_n").set_value(400)
    at.button(key="rs_create").click().run()
    assert not at.exception, at.exception
    assert "Study not created" in page_text(at) and "distinct lesions" in page_text(at)
    assert StudyStore(env["db"]).studies().empty

    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"\x00garbage" * 512)
    monkeypatch.setenv("DERMTRIAGE_STUDY_DB", str(broken))
    at = _page()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "cannot be used" in errors and str(broken) in errors and "damaged" in errors


def test_same_cases_planted_advice_and_ratings_from_set_up_to_debriefing_and_results(env):
    """Issue 20 end to end on the page: the same cases in both parts, planted wrong advice shown like any
    advice, a 1-5 rating required with each answer, the reader debriefed, and the results' MRMC on the
    ratings' AUC, reader AUCs and the over-reliance figures."""
    teacher = _page()
    teacher.text_input(key="rs_new_name").input("Trust check")
    teacher.radio(key="rs_new_question").set_value("malignancy")
    teacher.radio(key="rs_new_mode").set_value("both").run()
    assert teacher.radio(key="rs_new_design").value == "same"            # the default with both parts
    teacher.number_input(key="rs_new_n").set_value(8)
    teacher.selectbox(key="rs_new_balance").set_value("tier")
    teacher.slider(key="rs_new_planted").set_value(25)
    teacher.checkbox(key="rs_new_confidence").check()
    teacher.button(key="rs_create").click().run()
    assert not teacher.exception, teacher.exception
    store = StudyStore(env["db"])
    sid = int(store.studies()["id"].iloc[0])
    cases = store.cases(sid)
    un, ai = cases[cases["phase"] == "unassisted"], cases[cases["phase"] == "assisted"]
    assert set(un["image_id"]) == set(ai["image_id"]) and len(un) == 8       # the same cases, crossed
    planted = {int(r.id): r.planted for r in ai.itertuples() if r.planted}
    assert 1 <= len(planted) <= 2 and un["planted"].isna().all()
    assert f"{len(planted)} of the 8 AI-assisted cases carry planted wrong advice" in page_text(teacher)
    truth = dict(zip(cases["id"], cases["truth"]))

    def read(at, name, level, choose, rate):
        _sign_in(at, name, level)
        for _ in range(16):
            radio, cid = _answer_radio(at)
            if cid in planted:      # shown like any advice: its tier, and no word that it was planted
                assert f"Risk tier: **{planted[cid]['tier']}**" in page_text(at) and "planted wrong" not in page_text(at)
            radio.set_value(next(o for o in radio.options if o.startswith(choose(cid))))
            at.button(key="rs_submit").click().run()
            assert "Rate how likely the lesion is malignant." in page_text(at)       # a rating is required
            at.radio(key=f"rs_confidence_{cid}").set_value(rate(cid))
            at.button(key="rs_submit").click().run()
            assert not at.exception, at.exception
        return at

    # Ann is right alone and takes every planted advice; Bob calls everything benign
    ann = read(_page(), "Ann", "dermatologist", lambda c: planted[c]["answer"] if c in planted else truth[c],
               lambda c: 5 if (planted[c]["answer"] if c in planted else truth[c]) == "malignant" else 1)
    assert "Debriefing: planted advice" in page_text(ann)
    assert f"You took the wrong advice on **{len(planted)}** of them" in page_text(ann)
    read(_page(), "Bob", "student", lambda c: "benign", lambda c: 3)
    got = store.answers(sid)
    assert got["confidence"].notna().all() and got["planted"].sum() == 2 * len(planted)

    res = _page()
    res.radio(key="rs_section").set_value("Results").run()
    res.selectbox(key="rs_res_target").set_value("tier:high-risk").run()
    assert not res.exception, res.exception
    text = page_text(res)
    mrmc_line = next(line for line in text.splitlines() if line.startswith("**Multi-reader multi-case analysis.**"))
    assert "AUC" in mrmc_line and "x 6 cases" in mrmc_line or "AUC needs" in mrmc_line   # ORH on the ratings
    bob = sum(p["answer"] == "benign" for p in planted.values()) / len(planted)     # Bob follows where it says benign
    assert f"took the wrong advice {(1 + bob) / 2:.0%} of the time" in text
    reliance = next(d.value for d in res.table if "followed" in d.value.columns).set_index("reader")
    assert float(reliance.loc["Ann", "followed"]) == 1.0 and float(reliance.loc["Ann", "switched"]) == 1.0
    aucs = next(d.value for d in res.table if "AUC" in d.value.columns).set_index(["reader", "phase"])
    assert float(aucs.loc[("Bob", "unassisted"), "AUC"]) == 0.5                      # all 3s: no ranking
    roc = json.loads(next(c for c in res.get("plotly_chart") if "1 - specificity" in c.proto.spec).proto.spec)
    assert sum("ratings AUC" in (t.get("hovertemplate") or "") for t in roc["data"]) == 2   # a curve each
    labels = {b.proto.label for b in res.get("download_button")}
    assert {"Reader AUCs", "Over-reliance", "MRMC analysis"} <= labels
