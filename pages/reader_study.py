"""Reader study: a teacher sets up a study, readers take it (unassisted and/or AI-assisted),
everyone sees where they stand against each other and the model.

Widgets only: set-up and case drawing are derm_core.study.cases, storage derm_core.study.store
(SQLite, shared by every session), scoring derm_core.study.results, the ROC figure
derm_core.evaluate.figures.
"""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from derm_core.data.clinical import Clinical
from derm_core.data.dataset import DataError
from derm_core.data.images import ImageError, data_uri, load_image
from derm_core.evaluate.figures import confusion_figure, reader_roc_figure
from derm_core.explain import maps as explain
from derm_core.settings import ENV_HOME, ENV_STUDY_DB
from derm_core.study import results as R
from derm_core.study.cases import (
    BALANCES,
    CONFIDENCE_LEVELS,
    DESIGNS,
    LEVELS,
    MAX_PLANTED_SHARE,
    MODES,
    QUESTIONS,
    TIME_LIMITS,
    Study,
    StudyError,
    StudySpec,
    advice,
    create_study,
    same_model,
    seconds_left,
)
from derm_core.study.store import AlreadyAnswered, StudyStore, StudyStoreError
from derm_core.triage.rules import explain_tier
from pages._common import (
    active_thresholds,
    cached_cases,
    column_width,
    data_dir_setting,
    disclaimer,
    get_predictor,
    two_columns,
    words_table,
)

SECTIONS = ["Set up", "Read", "Results"]
UNDEFINED_NOTE = ("–: not defined here: the spread (SD) of a single reader, the model's reading time, or a rate "
                  "without the cases it needs.")
PHASE_TITLE = {"unassisted": "Part 1: unassisted", "assisted": "Part 2: AI-assisted"}
CASE_PHOTO_PX, GRADCAM_PX = 480, 300   # at most; less where the column is narrower
SIDE_BY_SIDE_PX = 760                  # case photo and model output side by side from this main-area width
CM_CELL_PX = 48                        # the confusion matrix's cells (at least)
EXPORTS = {"answers": "Answers", "readers": "Readers", "levels": "Levels", "per-class": "Per answer option",
           "model-answers": "Model's answers", "reader-auc": "Reader AUCs", "over-reliance": "Over-reliance",
           "mrmc": "MRMC analysis"}   # export kind (file name) -> button label

st.title(":material/school: Reader study")
disclaimer()
try:
    store = StudyStore()
except StudyStoreError as e:
    st.error(f"The study database cannot be used: {e}")
    st.stop()
st.caption(f"Studies are kept in `{store.path}` (set `${ENV_STUDY_DB}`, or `${ENV_HOME}` for the folder).")

params = st.query_params
if "rs_section" not in st.session_state and params.get("reader"):
    st.session_state["rs_section"] = "Read"      # a reader's reload lands back on their case
section = st.radio("Section", SECTIONS, horizontal=True, key="rs_section", label_visibility="collapsed")


def fail(e: Exception) -> None:
    st.error(f"The study database refused this: {e}" if isinstance(e, StudyStoreError) else str(e))
    st.stop()


def study_picker(key: str, studies: pd.DataFrame, readers: bool = False) -> Study:
    ids = [int(i) for i in studies["id"]]
    names = dict(zip(ids, studies["name"]))
    wanted = params.get("study")
    if key not in st.session_state and wanted and wanted.isdigit() and int(wanted) in ids:
        st.session_state[key] = int(wanted)
    sid = st.selectbox("Study", ids, format_func=lambda i: f"{names[i]} (#{i})", key=key)
    try:
        study = Study.load(store, sid)
    except StudyStoreError as e:
        fail(e)
    st.caption(study.describe(readers))
    return study


def load_studies() -> pd.DataFrame:
    try:
        return store.studies()
    except StudyStoreError as e:
        fail(e)


# ============================================================================ Set up
def setup_section() -> None:
    pred = get_predictor()
    thresholds = active_thresholds(pred)
    data_dir = data_dir_setting()
    st.subheader("New study")
    st.caption(f"Model **{pred.card.name}** ({pred.card.version}) at thresholds **{thresholds.name}**: its output "
               "for every case is computed now and frozen with the cases.")
    name = st.text_input("Study name", key="rs_new_name", placeholder="e.g. GP teaching day, March")
    c1, c2 = st.columns(2)
    question = c1.radio("Question", list(QUESTIONS), format_func=QUESTIONS.get, key="rs_new_question")
    mode = c2.radio("Mode", list(MODES), format_func=MODES.get, key="rs_new_mode")
    c1, c2, c3 = st.columns(3)
    n_cases = c1.number_input("Cases per part", min_value=1, max_value=500, value=20, step=1, key="rs_new_n")
    balance = c2.selectbox("Balance", list(BALANCES), format_func=BALANCES.get, key="rs_new_balance")
    limit = c3.selectbox("Time limit per case", TIME_LIMITS, key="rs_new_limit",
                         format_func=lambda v: "none" if v is None else f"{v} s")
    c1, c2 = st.columns(2)
    show_clinical = c1.checkbox("Show clinical data (age, sex, site)", key="rs_new_clinical",
                                help="The model also gets them only when readers see them.")
    seed = c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="rs_new_seed")
    design, planted = "different", 0
    if mode == "both":
        design = st.radio("Cases of the two parts", list(DESIGNS), format_func=DESIGNS.get, key="rs_new_design",
                          index=1, help="With the same cases, each reader is compared with themselves on each case, "
                                        "and the multi-reader multi-case analysis can be computed.")
    c1, c2 = st.columns(2)
    if mode != "unassisted":
        planted = c1.slider("Planted wrong advice", 0, int(100 * MAX_PLANTED_SHARE), 0,
                            step=5, format="%d%%", key="rs_new_planted",
                            help="The share of the AI-assisted cases on which the AI's advice is deliberately "
                                 "wrong: a "
                                 "plausible wrong class and its tier. Readers are not told which cases; each sees "
                                 "them after finishing. Results report how often readers took the wrong advice.")
    ask_confidence = c2.checkbox("Malignancy rating 1-5", key="rs_new_confidence",
                                 help="Readers also rate, with each answer, how likely the lesion is malignant (1 "
                                      "certainly benign … 5 certainly malignant). Each reader then gets an ROC curve "
                                      "and an AUC instead of a single point, and the multi-reader multi-case "
                                      "analysis uses the AUC.")
    if st.button("Create study", type="primary", key="rs_create"):
        try:
            spec = StudySpec(name, data_dir, question, int(n_cases), balance, limit, show_clinical, mode, int(seed),
                             design, planted / 100, ask_confidence)
            if not data_dir:
                raise StudyError("set the dataset folder in the sidebar first")
            table, pool = cached_cases(data_dir, str(pred.card.path), pred.taxonomy.classes)
            bar = st.progress(0.0, text="Computing the model's output for the cases ...")
            sid = create_study(store, spec, table, pred.taxonomy, pred, thresholds, pool,
                               callback=lambda d, n: bar.progress(d / n, text=f"Model output: case {d} of {n}"))
            bar.empty()
            made = store.cases(sid)
        except (StudyError, DataError, ImageError, StudyStoreError) as e:
            st.error(f"Study not created: {e}")
        else:
            st.success(f"Study **{spec.name}** created (#{sid}) from {pool}. Readers pick it in **Read**; the link "
                       f"`?study={sid}` opens it directly.")
            if spec.planted_share:
                n_planted, want = int(made["planted"].notna().sum()), round(spec.planted_share * spec.n_cases)
                st.info(f"{n_planted} of the {spec.n_cases} AI-assisted cases carry planted wrong advice"
                        + ("." if n_planted == want else f" ({want} were asked for, but the model is right on only "
                                                         f"{n_planted} of them: advice is planted only where the "
                                                         "model's own advice would be right)."))
    st.subheader("Studies")
    studies = load_studies()
    if len(studies):
        st.dataframe(R.studies_table(studies), hide_index=True, key="rs_studies")
    else:
        st.info("No study yet.")


# ============================================================================ Read
@st.cache_data(max_entries=16, show_spinner="Computing Grad-CAM ...")
def cached_cam(case_id: int, image_path: str, target: int, model_id: str, _pred, _clinical):
    image = load_image(image_path)
    return explain.cam_heatmap(_pred, image, target, "gradcam", _clinical).overlay(image)


def sign_in(study: Study) -> dict | None:
    """The reader of this session: from the session, the page link (a reload), or the form."""
    me = st.session_state.get("rs_reader")
    if me and me["study_id"] == study.id:
        return me
    wanted = params.get("reader")
    if wanted and params.get("study") == str(study.id):
        try:
            me = store.find_reader(study.id, wanted)
        except StudyStoreError as e:
            fail(e)
        if me:
            st.session_state["rs_reader"] = me
            return me
    st.subheader("Who is reading?")
    c1, c2 = st.columns(2)
    name = c1.text_input("Your name", key="rs_reader_name",
                         help="Use the same name to continue later: progress is kept for each name.")
    level = c2.selectbox("Experience level", LEVELS, key="rs_reader_level")
    if st.button("Start or continue", type="primary", key="rs_start"):
        if not name.strip():
            st.error("Enter your name.")
            return None
        try:
            me = store.reader(study.id, name, level)
        except StudyStoreError as e:
            fail(e)
        if not me["new"] and me["level"] != level:
            st.info(f"Welcome back, {me['name']}: continuing as {me['level']}, the level you first gave.")
        st.session_state["rs_reader"] = me
        st.query_params.update({"study": str(study.id), "reader": me["name"]})
        st.rerun()
    return None


def show_model_output(study: Study, case: dict, width: int) -> None:
    """The AI's advice as readers see it (planted advice looks like any other)."""
    tax = study.taxonomy
    shown = advice(case)
    st.markdown("**DermTriage's output**")
    tier = shown["tier"]
    st.markdown(f"Risk tier: **{tier}** — {tax.tiers[tier].action}")
    if study.thresholds is not None and isinstance(shown.get("probs"), dict):   # as on the triage page
        st.caption(f"Why this tier: {explain_tier(shown['probs'], tax, study.thresholds.tiers)}")
    for code, p in shown["differential"]:
        st.markdown(f"- {tax.display_names[code]} ({code}): {p:.0%}")
    pred = get_predictor()
    if not same_model(study.model, pred.card):
        st.caption(f"Grad-CAM not shown: this study froze the output of model {study.model.get('name')} "
                   f"({study.model.get('version')}), and another model is loaded.")
        return
    top = tax.index(shown["differential"][0][0])
    clinical = None
    if study.spec.show_clinical:
        clinical = Clinical.parse(case["age"], case["sex"], case["site"])
    try:
        overlay = cached_cam(int(case["id"]), case["image_path"], top, pred.card.identity().key, pred,
                             clinical)
    except (ImageError, OSError, RuntimeError) as e:
        st.caption(f"Grad-CAM unavailable: {e}")
        return
    scope = explain.cam_scope(pred.card, 0)   # cam_heatmap's default member; '' for one network
    st.image(data_uri(overlay, 2 * GRADCAM_PX, "JPEG"), width=min(GRADCAM_PX, width),
             caption=f"Grad-CAM for {tax.display_names[tax.classes[top]]}" + (f" (ensemble {scope})" if scope else ""))


def debrief(study: Study, answers: pd.DataFrame, me: dict) -> None:
    """After the last case: which advice was planted, and what the reader answered there."""
    try:
        rows = R.debriefing(answers, store.cases(study.id), me["id"], study)
    except StudyStoreError as e:
        fail(e)
    if not len(rows):
        return
    st.subheader("Debriefing: planted advice")
    followed = int(rows["followed"].sum())
    st.markdown(f"On **{len(rows)}** of the AI-assisted cases the AI's advice was **deliberately wrong**, to measure "
                f"how far readers rely on it (Tschandl et al. 2020 found that faulty advice misled readers at every "
                f"level of experience). You took the wrong advice on **{followed}** of them.")
    width = column_width("rs-debrief-width")
    per_row = max(1, min(4, width // 200))
    for start in range(0, len(rows), per_row):
        cols = st.columns(per_row)
        for col, r in zip(cols, rows.iloc[start:start + per_row].itertuples(index=False)):
            with col:
                try:
                    col.image(data_uri(load_image(r.image_path), 600, "JPEG"), width="stretch")
                except (ImageError, OSError):
                    col.caption("(image unavailable)")
                col.markdown(f"Case {r.case} · advice shown: **{r.advice}** · correct: **{r.correct_answer}** · "
                             f"yours: **{r.your_answer}**" + (" — you followed the planted advice" if r.followed else ""))


def read_section() -> None:
    studies = load_studies()
    if not len(studies):
        st.info("No study yet: a teacher creates one in **Set up**.")
        return
    study = study_picker("rs_read_study", studies, readers=True)
    me = sign_in(study)
    if me is None:
        return
    top = st.columns([4, 1])
    top[0].markdown(f"Reading as **{me['name']}** ({me['level']})")
    if top[1].button("Sign out", key="rs_sign_out"):
        st.session_state.pop("rs_reader", None)
        st.query_params.pop("reader", None)
        st.rerun()
    for msg in st.session_state.pop("rs_flash", []):
        st.info(msg)
    try:
        case = store.next_case(me["id"])
        done, total = store.progress(me["id"])
    except StudyStoreError as e:
        fail(e)
    st.progress(done / max(total, 1), text=f"{done} of {total} cases answered")
    if case is None:
        st.success(f"All {total} cases answered — thank you, {me['name']}.")
        answers = store.answers(study.id)
        mine = R.reader_table(R.honest(answers), reader_id=me["id"])     # as Results counts them
        left_out = (" (cases with planted advice are left out of both parts, as in Results)"
                    if study.spec.planted_share else "")
        for _, r in mine.iterrows():
            st.markdown(f"- {PHASE_TITLE[r['phase']] if study.spec.mode == 'both' else r['phase']}: accuracy "
                        f"**{r['accuracy']:.0%}** on {r['n_cases']} case{'s' if r['n_cases'] != 1 else ''}"
                        f"{left_out} ({r['n_timed_out']} timed out)")
        debrief(study, answers, me)
        st.caption("See where you stand in **Results**.")
        return

    phase = case["phase"]
    if study.spec.mode == "both":
        again = "the same cases again, in another order" if study.spec.design == "same" else "a different case set"
        st.subheader(PHASE_TITLE[phase] + ("" if phase == "unassisted" else f" ({again})"))
    try:
        shown_at = store.mark_shown(me["id"], int(case["id"]))
    except StudyStoreError as e:
        fail(e)
    limit = study.spec.time_limit_s
    if limit:
        left = seconds_left(shown_at, limit, time.time())

        @st.fragment(run_every=1.0 if left > 0 else None)
        def countdown() -> None:
            remaining = seconds_left(shown_at, limit, time.time())
            st.progress(remaining / limit, text=f":material/timer: {remaining:.0f} s left" if remaining > 0 else
                        ":material/timer: Time is up: your answer will be recorded as timed out.")
        countdown()

    # side by side where the main area is wide enough, else the model's output under the photo
    left_col, right_col, col_px = two_columns("rs-case-row", min_width=SIDE_BY_SIDE_PX)
    with left_col:
        try:
            image = data_uri(load_image(case["image_path"]), 2 * CASE_PHOTO_PX, "JPEG")
        except (ImageError, OSError) as e:
            st.error(f"The case image {case['image_path']} cannot be shown: {e}. Ask the teacher to restore the "
                     "dataset folder.")
            st.stop()
        st.image(image, caption=f"Case {case['position'] + 1}" + (f" of {PHASE_TITLE[phase].split(':')[0].lower()}"
                                                                      if study.spec.mode == "both" else ""), width=min(CASE_PHOTO_PX, col_px))
        if study.spec.show_clinical:
            age = "unknown" if pd.isna(case["age"]) else f"{case['age']:.0f}"
            st.markdown(f"Age **{age}** · sex **{case['sex'] or 'unknown'}** · site **{case['site'] or 'unknown'}**")
    with right_col:
        if phase == "assisted":
            show_model_output(study, case, col_px)
    answer = st.radio(f"Your answer: {QUESTIONS[study.question].lower()}", list(study.choices), index=None,
                      format_func=study.label, key=f"rs_answer_{case['id']}")
    confidence = None
    if study.spec.ask_confidence:
        confidence = st.radio("How likely is this lesion to be malignant?", list(CONFIDENCE_LEVELS), index=None,
                              format_func=CONFIDENCE_LEVELS.get, horizontal=True, key=f"rs_confidence_{case['id']}")
    if st.button("Submit answer", type="primary", key="rs_submit"):
        if answer is None or (study.spec.ask_confidence and confidence is None):
            st.warning("Choose an answer first." if answer is None else "Rate how likely the lesion is malignant.")
            return
        try:
            row = store.record_answer(me["id"], int(case["id"]), answer, confidence=confidence)
        except AlreadyAnswered:
            st.session_state["rs_flash"] = ["That case was already answered (another tab?); moving on."]
        except StudyStoreError as e:
            fail(e)
        else:
            if row["timed_out"]:
                st.session_state["rs_flash"] = [f"Recorded as timed out ({row['seconds']:.0f} s, limit {limit:g} s)."]
        st.rerun()


# ============================================================================ Results
def results_section() -> None:
    studies = load_studies()
    if not len(studies):
        st.info("No study yet.")
        return
    study = study_picker("rs_res_study", studies)
    try:
        all_answers, all_cases = store.answers(study.id), store.cases(study.id)
    except StudyStoreError as e:
        fail(e)
    # every figure but the over-reliance section is on the cases whose advice was the model's own
    answers, cases = R.honest(all_answers), R.honest(all_cases)
    thr, thr_note = study.thresholds, "frozen at creation"
    if study.model:
        pred = get_predictor()
        if same_model(study.model, pred.card):
            thr, thr_note = active_thresholds(pred), "active profile"
    model = R.model_as_reader(cases, study, thr)
    if study.model:
        st.caption(f"Model **{study.model.get('name')}** ({study.model.get('version')}) on the same cases, at "
                   f"thresholds **{thr.name}** ({thr_note}). Timed-out answers count as wrong and are left out of "
                   "sensitivity, specificity and the ROC points.")
    if not len(all_answers):
        st.info("No answers yet.")
        return
    if study.spec.planted_share:
        st.caption("Cases with planted wrong advice are left out of every figure above **Over-reliance**, which "
                   "analyses them.")
    readers = R.reader_table(answers)
    phases = R.answered_phases(answers, study)

    st.subheader("Accuracy per reader")
    table = R.with_model(readers, model)
    words_table(table.drop(columns=["reader_id"]), UNDEFINED_NOTE)
    st.subheader("Per experience level")
    levels = R.level_table(readers)
    words_table(levels, UNDEFINED_NOTE)

    st.subheader("Readers on the model's ROC curve")
    phase = st.radio("Part", phases, horizontal=True, key="rs_res_phase") if len(phases) > 1 else phases[0]
    target = st.selectbox("Positive class", R.targets(study), key="rs_res_target",   # full width: long labels
                          format_func=lambda t: R.target_label(study, t))
    points = R.reader_points(answers, study, target, phase)
    points = points.dropna(subset=["sensitivity", "specificity"])   # a point needs cases with and without the class
    rated = study.spec.ask_confidence and target == R.malignant_target(study)
    curves = R.rating_rocs(answers, study, phase) if rated else None
    ev = R.eval_set(cases, study, phase)
    mpt = R.model_point(ev, thr, target) if ev is not None and thr is not None else None
    roc_col, note_col, width = two_columns("rs-roc-row")
    fig = reader_roc_figure(ev, target, f"{R.target_label(study, target)} · {phase} part · {len(points)} reader{'s' if len(points) != 1 else ''}",
                            points, R.level_points(points), mpt, f"model at {thr.name}" if thr else "model",
                            width=width, answers_pt=R.model_answer_point(model, study, target, phase),
                            answers_label="model's top diagnosis", curves=curves)
    roc_col.plotly_chart(fig, width="content", key="rs_roc")
    orh, why = R.assistance_mrmc(answers, study) if study.spec.mode == "both" else (None, "")
    if orh:                                            # the AI's effect in words, beside the overlay
        note_col.markdown(f"**The AI's effect (multi-reader multi-case analysis):** {orh.summary()}")
    note_col.caption(("Each small dot is one reader's (1 - specificity, sensitivity) for this positive class, coloured "
                      "by experience level; diamonds are the level averages. Points above and left of the curve beat "
                      "the model. " if len(points) else
                      "No reader point yet: a reader's sensitivity and specificity need answered cases with and "
                      "without this positive class in this part. ")
                     + R.model_point_note(study, target, mpt, thr.name if thr else "—")
                     + (" Thin lines: each reader's ROC curve from their 1-5 malignancy ratings." if rated else ""))
    if study.spec.ask_confidence:
        st.markdown("**Each reader's AUC from their malignancy ratings** (malignant against benign; a rating given "
                    "after the time limit still counts)")
        aucs = R.rating_rocs(answers, study)
        words_table(aucs.drop(columns=["reader_id", "fpr", "tpr"]), UNDEFINED_NOTE)

    st.subheader("Per answer option: sensitivity and specificity")
    classes = R.class_table(answers, study)
    by_level = st.toggle("Average per experience level", key="rs_res_by_level")
    words_table(R.level_class_table(classes) if by_level else classes.drop(columns=["reader_id"]), UNDEFINED_NOTE)

    st.subheader("Confusion matrix")
    pick = st.selectbox("Readers", R.reader_choices(readers), key="rs_res_cm")
    sub = R.answers_for(answers, pick, phase)
    cm_width = column_width("rs-cm-width")
    st.plotly_chart(confusion_figure(R.confusion(sub, study), list(study.choices), axis_names=("true answer", "reader's answer"),
                                     title=f"{pick}, {phase} part", cell_px=CM_CELL_PX, width=cm_width),
                    width="content", key="rs_cm")

    if study.spec.mode == "both":
        st.subheader("AI-assisted vs unassisted")
        per, test = R.assistance_comparison(readers, same_cases=study.spec.design == "same")
        if test["n_readers"]:
            c = st.columns(4)
            c[0].metric("Readers in both parts", test["n_readers"])
            c[1].metric("Unassisted accuracy", f"{test['mean_unassisted']:.1%}")
            diff = test["mean_difference"]
            c[2].metric("Assisted accuracy", f"{test['mean_assisted']:.1%}",
                        f"{diff:+.1%}" if round(diff, 3) else None)      # no green arrow on "+0.0%"
            c[3].metric("Wilcoxon p", "—" if pd.isna(test["wilcoxon_p"]) else f"{test['wilcoxon_p']:.3f}")
            st.caption(f"Test: {test['test']}; paired t-test "
                       f"{'not computable (too few readers or no differences)' if pd.isna(test['ttest_p']) else 'p = ' + format(test['ttest_p'], '.3f')}.")
            words_table(per.drop(columns=["reader_id"]), UNDEFINED_NOTE)
            st.markdown(f"**Multi-reader multi-case analysis.** {orh.summary() if orh else why}")
            if orh:
                st.caption(f"Obuchowski-Rockette with Hillis' degrees of freedom on {R.mrmc.FOM_NAME[orh.fom]} "
                           f"({'from the malignancy ratings' if orh.fom == 'auc' else 'timed out counts wrong'}): "
                           "readers and cases both random, so the interval says what another group of readers on "
                           "other cases could find.")
        else:
            st.info("No reader has finished cases in both parts yet.")

    reliance = None
    if study.spec.planted_share:
        st.subheader("Over-reliance: planted wrong advice")
        reliance, summary = R.over_reliance(all_answers, study)
        st.markdown(R.over_reliance_summary(summary, study))
        if len(reliance):     # two tables, each fitting the column at 1024 px (the export has every column)
            words_table(reliance[["reader", "level", "n_planted", "followed"]
                                 + (["switched"] if study.spec.design == "same" else [])], UNDEFINED_NOTE)
            words_table(reliance[["reader", "accuracy_planted", "accuracy_unassisted", "difference",
                                  "accuracy_honest_advice"]], UNDEFINED_NOTE)
            st.caption("followed: share of the planted cases answered with the planted advice; accuracy unassisted: "
                       "the same reader without the AI on " + ("the same cases" if study.spec.design == "same" else
                       "their unassisted cases, weighted to the planted cases' mix of correct answers")
                       + "; switched: of the planted cases they answered right without the AI, the share where they "
                         "then took the wrong advice (same cases only). Each reader sees the planted cases after "
                         "finishing.")

    if len(model):
        st.subheader("Each reader against the model (same cases)")
        st.caption("McNemar's exact test on the cases where exactly one of the two was right.")
        words_table(R.mcnemar_vs_model(answers, model).drop(columns=["reader_id"]), UNDEFINED_NOTE)

    st.subheader("Export")
    files = {"answers": R.answers_export(all_answers, study), "readers": table, "levels": levels,
             "per-class": classes, "model-answers": R.answers_export(model, study) if len(model) else None,
             "reader-auc": (R.rating_rocs(answers, study).drop(columns=["fpr", "tpr"])
                            if study.spec.ask_confidence else None),
             "over-reliance": reliance if reliance is not None and len(reliance) else None,
             "mrmc": R.mrmc_export(orh) if orh else None}
    st.caption("Each button downloads one CSV file.")
    row = st.container(horizontal=True, wrap=True)     # buttons at their own width, onto a new row when narrow
    for kind, df in files.items():
        if df is not None:
            row.download_button(EXPORTS[kind], df.to_csv(index=False).encode(), icon=":material/download:",
                                file_name=R.export_file_name(study, kind), mime="text/csv", key=f"rs_csv_{kind}")


{"Set up": setup_section, "Read": read_section, "Results": results_section}[section]()
