"""The Model lab page, headless with AppTest: evaluate a tiny model on a tiny synthetic set, tune,
publish a profile and see the Triage page use it; train from the page and re-attach."""
import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest import ROOT, page_text, tiny_card, write_dataset
from derm_core.fit import jobs
from derm_core.model.checkpoint import read_card, save_model
from derm_core.model.networks import create_model
from derm_core.triage import profiles as P


def _save_tiny(path, ham7, seed=0):
    torch.manual_seed(seed)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    return save_model(model, tiny_card(ham7).with_(name=path.parent.name, version=f"v{seed}"), path)


@pytest.fixture
def lab(tmp_path, ham7, monkeypatch):
    card_path = _save_tiny(tmp_path / "tiny" / "model", ham7)
    data = write_dataset(tmp_path / "data", per_class=5)
    for env, sub in (("DERMTRIAGE_RUNS", "runs"), ("DERMTRIAGE_PROFILES", "profiles"), ("DERMTRIAGE_CACHE", "cache")):
        monkeypatch.setenv(env, str(tmp_path / sub))
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(card_path))
    monkeypatch.setenv("DERMTRIAGE_DATA", str(data))
    monkeypatch.setenv("DERMTRIAGE_JOB_NICE", "19")
    monkeypatch.setenv("DERMTRIAGE_DEVICE", "cpu")
    return {"card": card_path, "data": data, "tmp": tmp_path}


def _lab() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/model_lab.py")
    return at.run()


def test_evaluate_tune_publish_and_triage_uses_the_profile(lab):
    at = _lab()
    assert not at.exception, at.exception
    at.radio(key="lab_section").set_value("Evaluate & tune").run()
    at.selectbox(key="lab_model").set_value(str(lab["card"])).run()
    assert "has not been evaluated on these 35 images" in page_text(at)
    at.button(key="lab_evaluate").click().run()
    assert not at.exception, at.exception
    assert [m.value for m in at.metric if m.label == "Images"] == ["35"]
    assert len(at.get("plotly_chart")) >= 6            # ROC x2, sens/spec, confusion x2, reliability
    assert "Thresholds: **model default**" in page_text(at)

    # a slider re-bins: the sensitivity/specificity summary follows it
    at.selectbox(key="lab_target").set_value("mel").run()
    at.slider(key="lab_thr_c_mel").set_value(0.0).run()
    assert [m.value for m in at.metric if m.label == "Sensitivity"] == ["100.0%"]
    assert "custom (Model lab)" in page_text(at)
    at.slider(key="lab_thr_c_mel").set_value(1.0).run()
    assert [m.value for m in at.metric if m.label == "Sensitivity"] == ["0.0%"]
    at.number_input(key="lab_prev_mel").set_value(2.0).run()
    assert "PPV at 2%" in [m.label for m in at.metric]

    # a preset fills every slider
    at.button(key="lab_p_screening").click().run()
    assert not at.exception, at.exception
    assert "Thresholds: **screening (sensitivity >= 95%)**" in page_text(at)
    assert [m.value for m in at.metric if m.label == "Sensitivity"] != ["0.0%"]

    # t-SNE of the embeddings, computed on request and cached
    n_charts = len(at.get("plotly_chart"))
    at.button(key="lab_tsne_go").click().run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == n_charts + 1
    at.radio(key="lab_tsne_colour").set_value("risk tier").run()
    at.radio(key="lab_tsne_dims").set_value(3).run()
    at.button(key="lab_tsne_go").click().run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == n_charts + 1

    # publish, then use it on the Triage page
    at.text_input(key="lab_profile_name").set_value("clinic A")     # inside a form: sent with its submit
    next(b for b in at.button if b.label == "Save profile").click().run()
    assert not at.exception, at.exception
    assert "Saved profile **clinic A v1**" in page_text(at)
    saved = P.list_profiles()
    assert len(saved) == 1 and saved[0].data["validation"]["n_images"] == 35
    assert saved[0].data["metrics"]["tiers"]["dangerous"]["sensitivity"] >= 0.95
    at.button(key="lab_use_profile").click().run()
    at.switch_page("pages/triage.py").run()
    assert not at.exception, at.exception
    assert "thresholds: **profile clinic A v1**" in page_text(at)
    assert at.selectbox(key="_profile_picker").value == str(saved[0].path)
    # back to the model default from the sidebar
    at.selectbox(key="_profile_picker").set_value("model default").run()
    assert "thresholds: **model default**" in page_text(at)

    # a new session (re-opening the page) finds the cached predictions: no second evaluation
    again = _lab()
    again.radio(key="lab_section").set_value("Evaluate & tune").run()
    again.selectbox(key="lab_model").set_value(str(lab["card"])).run()
    assert "lab_evaluate" not in [b.key for b in again.button]
    assert [m.value for m in again.metric if m.label == "Images"] == ["35"]


def test_mismatched_profile_is_refused_on_the_triage_page(lab, ham7):
    other = read_card(_save_tiny(lab["tmp"] / "other" / "model", ham7, seed=1))
    prof = P.save_profile("for the other model", other.thresholds, other)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["active_profile"] = str(prof.path)
    at.run()
    assert not at.exception, at.exception
    errors = "\n".join(e.value for e in at.error)
    assert "Threshold profile refused" in errors and "made for model other" in errors
    assert "thresholds: **model default**" in page_text(at)


def test_train_from_the_page_watch_reattach_and_list(lab):
    at = _lab()
    at.text_input(key="lab_train_data").set_value(str(lab["data"]))
    at.text_input(key="lab_run_name").set_value("tiny run")
    at.selectbox(key="lab_arch").set_value("tiny_test")
    at.number_input(key="lab_epochs").set_value(2)
    at.number_input(key="lab_batch").set_value(16)
    at.selectbox(key="lab_pretrained").set_value("none")
    at.checkbox(key="lab_tta").uncheck()
    at.button(key="lab_start").click().run()
    assert not at.exception, at.exception
    run = lab["tmp"] / "runs" / "tiny-run"
    assert (run / "job.json").is_file()
    assert at.session_state["lab_run"] == str(run)
    assert at.get("progress") and "Run tiny-run" in [s.value for s in at.subheader]
    assert at.button(key="lab_start").disabled          # one job at a time

    # another tab (a new session) re-attaches to the same job instead of starting one
    tab2 = _lab()
    assert tab2.session_state["lab_run"] == str(run)
    assert "Run tiny-run" in [s.value for s in tab2.subheader]

    st = jobs.wait(run, timeout=900)
    assert st.state == "done", (st.error, st.log_tail)
    at.run()
    assert "Finished: model card" in page_text(at)
    shown = {m.label: m.value for m in at.metric}                  # issue 17: every line tells the same story
    assert at.get("progress")[0].proto.text == f"finished: epoch {st.epochs}/{st.epochs} · 100%"
    assert shown["Epoch"] == f"{st.epochs}/{st.epochs}" and shown["Training loss"] == f"{st.history[-1]['train_loss']:.3f}"
    assert not at.button(key="lab_start").disabled
    at.radio(key="lab_section").set_value("Runs").run()
    assert not at.exception, at.exception
    assert at.dataframe and "tiny-run" in at.dataframe[0].value["run"].tolist()
    assert at.get("json")                                # the model card

    # evaluate the new model on its own validation split
    at.button(key="lab_eval_this").click().run()
    assert not at.exception, at.exception
    assert at.radio(key="lab_section").value == "Evaluate & tune"
    assert at.selectbox(key="lab_model").value == str(run / "model.json")
    assert at.radio(key="lab_eval_split").options == ["val", "test", "train", "all images"]
    assert at.radio(key="lab_eval_split").value == "val"
    at.button(key="lab_evaluate").click().run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart") and at.slider(key="lab_thr_t_dangerous")


def test_evaluation_folder_follows_the_sidebar_and_the_page_names_folder_and_split(lab, tmp_path):
    other = write_dataset(tmp_path / "other", per_class=2)
    at = _lab()
    at.radio(key="lab_section").set_value("Evaluate & tune").run()
    at.selectbox(key="lab_model").set_value(str(lab["card"])).run()
    assert at.text_input(key="lab_eval_data").value == str(lab["data"])       # the sidebar's folder, from $DERMTRIAGE_DATA
    shown = [i.value for i in at.info if i.value.startswith("Showing")]
    assert shown and f"of `{lab['data']}` (the sidebar's dataset folder)" in shown[0]
    split = at.radio(key="lab_eval_split").value
    assert shown[0].startswith(f"Showing **{split}**")
    at.sidebar.text_input(key="data_dir").set_value(str(other)).run()           # a new sidebar folder is followed
    assert at.text_input(key="lab_eval_data").value == str(other)
    assert any(f"of `{other}` (the sidebar's dataset folder)" in i.value for i in at.info)
    at.text_input(key="lab_eval_data").set_value(str(lab["data"])).run()         # a folder typed here is named so
    assert any(f"of `{lab['data']}` (a folder typed here)" in i.value for i in at.info)
    at.radio(key="lab_section").set_value("Runs").run()                         # kept across sections (issue 17)
    at.radio(key="lab_section").set_value("Evaluate & tune").run()
    assert at.text_input(key="lab_eval_data").value == str(lab["data"])


def test_the_training_form_starts_at_trainconfigs_defaults(lab):
    from derm_core.fit import config as TC
    cfg = TC.TrainConfig()
    at = _lab()
    assert not at.exception, at.exception
    for key, name in (("lab_epochs", "epochs"), ("lab_lr", "lr"), ("lab_batch", "batch_size"),
                      ("lab_patience", "patience")):
        box = at.number_input(key=key)
        assert box.value == getattr(cfg, name) and (box.min, box.max) == TC.bounds(name), key
    for key, name in (("lab_arch", "arch"), ("lab_monitor", "monitor"), ("lab_pretrained", "pretrained")):
        box = at.selectbox(key=key)
        options = tuple(o.split(" — ")[0] for o in box.options)         # the architectures' labels name a paper
        assert box.value == getattr(cfg, name) and options == TC.choices(name), key
    assert at.checkbox(key="lab_meta").value == cfg.metadata and at.checkbox(key="lab_tta").value == cfg.tta
    assert at.text_input(key="lab_tax").value == cfg.taxonomy and at.number_input(key="lab_limit").value == 0
    assert at.selectbox(key="lab_teacher").value == "no teacher" and at.number_input(key="lab_distill_weight").value == \
        cfg.distill_weight


def test_a_student_trains_on_its_teachers_split(lab, ham7):
    """Distillation from the page: the job learns from the chosen model, on that model's split; a
    model without a split file beside it is refused before any job starts."""
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import make_splits, save_splits
    at = _lab()
    at.selectbox(key="lab_teacher").set_value(str(lab["card"]))
    at.button(key="lab_start").click().run()
    assert "Cannot start training" in page_text(at) and "no split file beside it" in page_text(at)
    assert not jobs.list_runs()

    table = load_table(lab["data"], ham7)
    save_splits(table, make_splits(table, seed=5), lab["card"].parent / "split.csv")
    at.text_input(key="lab_run_name").set_value("student")
    at.selectbox(key="lab_arch").set_value("tiny_test")
    at.number_input(key="lab_epochs").set_value(1)
    at.number_input(key="lab_batch").set_value(16)
    at.selectbox(key="lab_pretrained").set_value("none")
    at.number_input(key="lab_distill_weight").set_value(0.8)
    at.button(key="lab_start").click().run()
    assert not at.exception, at.exception
    st = jobs.wait(lab["tmp"] / "runs" / "student", timeout=900)
    assert st.state == "done", (st.error, st.log_tail)
    card = read_card(lab["tmp"] / "runs" / "student" / "model.json")
    assert card.training.config["teacher"] == str(lab["card"]) and card.training.config["distill_weight"] == 0.8
    assert card.split_file.read_text() == (lab["card"].parent / "split.csv").read_text()


# ---------------------------------------------------------------------- issue 17
def test_train_uses_the_sidebar_folder_and_says_so_when_there_is_none(lab, tmp_path):
    other = write_dataset(tmp_path / "other", per_class=2)
    at = _lab()
    assert not at.exception, at.exception
    assert at.text_input(key="lab_train_data").value == str(lab["data"])      # the sidebar's, from $DERMTRIAGE_DATA
    at.sidebar.text_input(key="data_dir").set_value(str(other)).run()
    assert at.text_input(key="lab_train_data").value == str(other)             # followed when the sidebar changes
    at.radio(key="lab_section").set_value("Runs").run()                       # kept across sections
    at.radio(key="lab_section").set_value("Train").run()
    assert at.text_input(key="lab_train_data").value == str(other)
    at.sidebar.text_input(key="data_dir").set_value("").run()
    at.button(key="lab_start").click().run()
    assert not at.exception, at.exception
    errors = "\n".join(e.value for e in at.error)
    assert "choose the dataset folder in the sidebar" in errors
    assert "--data" not in page_text(at) and "DERMTRIAGE_DATA" not in errors   # no command-line wording
    assert not jobs.list_runs()


def test_a_finished_run_reads_the_same_in_every_line(lab):
    import time

    from test_jobs import HISTORY, _finished_run
    t0 = time.time() - 60
    run = _finished_run(jobs.runs_root() / "done-run", t0, t0 + 12.0, 9.0)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/model_lab.py")
    at.session_state["lab_run"] = str(run)
    at.run()
    assert not at.exception, at.exception
    bar = at.get("progress")[0].proto.text
    metrics = {m.label: m.value for m in at.metric}
    assert bar == "finished: epoch 2/2 · 100%"
    assert metrics["Epoch"] == "2/2" and metrics["Training loss"] == f"{HISTORY[-1]['train_loss']:.3f}"
    assert metrics["Elapsed"] == "0:12"                       # the job's start to its end, not the trainer's 0:09


def test_evaluation_views_have_distinct_roc_titles_and_no_none_cells(lab):
    import json
    at = _lab()
    at.radio(key="lab_section").set_value("Evaluate & tune").run()
    at.selectbox(key="lab_model").set_value(str(lab["card"])).run()
    at.button(key="lab_evaluate").click().run()
    assert not at.exception, at.exception
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    rocs = [t for t in titles if t.startswith("ROC")]
    assert len(rocs) == 2 and len(set(rocs)) == 2, titles
    grid = next(json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")
                if "threshold" in json.dumps(json.loads(c.proto.spec)["layout"].get("xaxis", {})))
    assert grid["xaxis"]["title"]["text"] == "threshold"
    subs = [d.value for d in at.table if "grouping" in d.value.columns]
    assert len(subs) == 2                                  # threshold-free, then at the current thresholds
    for sub in subs:
        text = sub.astype(str).to_string()
        assert not sub.isna().any().any() and "None" not in text and "_" not in text and "nan" not in text
    sub, at_thr = subs
    tones = sub[sub["grouping"] == "skin tone"]           # the skin-tone audit: every photo in one tone group
    assert len(tones) and tones["n"].astype(int).sum() == sub[sub["grouping"] == "sex"]["n"].astype(int).sum()
    assert {"sensitivity (95% CI)", "specificity (95% CI)", "PPV"} <= set(at_thr.columns)
    ages = list(sub[sub["grouping"] == "age band"]["group"])
    assert ages == sorted(ages, key=lambda g: ["<30", "30-49", "50-69", "70+", "unknown"].index(g))
    if (sub == "–").any().any():
        assert any(c.value.startswith("–: not defined") for c in at.caption)
