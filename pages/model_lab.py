"""Model lab: train or fine-tune a model, evaluate it, tune its thresholds, publish a profile.

Widgets only: training runs in a background process (derm_core.fit.jobs), predictions are
computed once per (model, data) and cached (derm_core.evaluate.embedding), and every number a
slider changes is re-binned from them (derm_core.evaluate.operating).
"""
from __future__ import annotations

import getpass
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from derm_core.data.dataset import DataError, load_table
from derm_core.data.splits import load_splits, split_rows
from derm_core.data.taxonomy import Taxonomy
from derm_core.errors import DermTriageError
from derm_core.evaluate import embedding as E
from derm_core.evaluate import lab_views as L
from derm_core.evaluate import operating as O
from derm_core.evaluate.figures import (
    confusion_figure,
    embedding_figure,
    reliability_figure,
    roc_figure,
    sens_spec_figure,
    target_colours,
    training_figure,
)
from derm_core.explain.skin_tone import TONE_NAMES, UNKNOWN, table_itas, tone_group
from derm_core.fit import config as TC
from derm_core.fit import jobs
from derm_core.fit.ensemble import MemberPlan
from derm_core.fit.train import with_teacher_split
from derm_core.model.checkpoint import ModelError, read_card
from derm_core.model.networks import get_arch
from derm_core.settings import ENV_MODEL, ENV_PROFILES, ENV_RUNS, SHIPPED_MODEL, settings
from derm_core.triage import profiles as P
from derm_core.triage.rules import Thresholds
from pages._common import (
    ACTIVE_PROFILE,
    column_width,
    data_dir_setting,
    disclaimer,
    thumbnail,
    two_columns,
    words_table,
)

SECTIONS = ["Train", "Runs", "Evaluate & tune"]
ALL = "all images"
STEP = 0.001

st.title(":material/science: Model lab")
disclaimer()
st.caption(f"Runs are kept in `{jobs.runs_root()}` (set `${ENV_RUNS}`), threshold profiles in "
           f"`{P.profiles_dir()}` (`${ENV_PROFILES}`).")
default_data = data_dir_setting()
section = st.radio("Section", SECTIONS, horizontal=True, key="lab_section", label_visibility="collapsed")


fmt_s = L.duration   # m:ss or h:mm:ss
pct = L.pct         # 12.3% or "—"


def pct_or_undefined(v) -> str:
    """A share for a sentence: 12.3%, or "not defined" (a dash reads as punctuation there)."""
    return "not defined" if pct(v) == "—" else pct(v)


def model_options() -> dict[str, str]:
    """Card path -> label: the shipped model, $DERMTRIAGE_MODEL, the triage page's choice, finished runs."""
    opts: dict[str, str] = {}
    candidates = [(SHIPPED_MODEL, "shipped default model"), (settings().model, f"${ENV_MODEL}"),
                  (st.session_state.get("model_path"), "triage page's model")]
    for r in jobs.list_runs():
        if (r.path / "model.json").is_file():
            candidates.append((r.path / "model.json", f"run {r.name}"))
    for path, label in candidates:
        if not path:
            continue
        try:
            card = read_card(path)
        except (ModelError, OSError):
            continue
        opts.setdefault(str(card.path), f"{label}: {card.name} ({card.architecture}, {card.version})")
    return opts


# ============================================================================ Train
def monitor(run: Path) -> None:
    """Live view of one run's job; re-runs itself every 2 s while the job is active."""
    first = jobs.status(run)

    @st.fragment(run_every=2.0 if first.active else None)
    def view() -> None:
        s = jobs.status(run)
        st.subheader(f"Run {run.name}")
        st.progress(s.fraction, text=f"{s.describe()} · {s.fraction:.0%}")
        c = st.columns(4)
        c[0].metric("Elapsed", fmt_s(s.elapsed_s))
        c[1].metric("Remaining", fmt_s(s.eta_s) if s.active else "—")
        c[2].metric("Epoch", s.epoch_text, help="The epoch in progress while training, else the last finished one.")
        c[3].metric("Training loss", s.loss_text, help="Training loss: the last batches' while an epoch runs, else the last "
                    "finished epoch's.")
        if s.history:
            st.plotly_chart(training_figure(s.history), key=f"curves-{run.name}")
        if s.active:
            b = st.columns([1, 1, 4])
            if b[0].button("Stop", key="lab_stop", help="Stops after the current batch and keeps a resumable checkpoint."):
                jobs.stop(run)
                st.rerun(scope="fragment")
            if b[1].button("Force stop", key="lab_kill", help="Ends the process now; the last finished epoch stays resumable."):
                jobs.kill(run)
                st.rerun()
        elif s.state == "done":
            st.success(f"Finished: model card `{s.model}`. Evaluate it in **Evaluate & tune**.")
        elif s.state in ("stopped", "failed"):
            (st.error if s.state == "failed" else st.info)(
                f"Training {s.state}" + (f": {s.error}" if s.error else "") +
                (". A checkpoint is kept: **Resume** continues from it." if s.resumable else "."))
            if s.log_tail:
                with st.expander("Log (last lines)"):
                    st.code(s.log_tail[-3000:], language=None)
            if s.request and st.button("Resume", key="lab_resume"):
                try:
                    jobs.resume(run)
                except jobs.JobError as e:
                    st.error(str(e))
                st.rerun()
        if first.active and not s.active:
            st.rerun()   # finished or stopped: refresh the whole page (run list, no more polling)

    view()


def setting_number(col, label: str, name: str, key: str, **kw):
    """A number input for a training setting: its limits and default from TrainConfig."""
    lo, hi = TC.bounds(name)
    return col.number_input(label, lo, hi, TC.default(name), key=key, **kw)


def setting_select(col, label: str, name: str, key: str, **kw):
    """A selectbox over a training setting's choices, at its default (from TrainConfig)."""
    options = list(TC.choices(name))
    return col.selectbox(label, options, index=options.index(TC.default(name)), key=key, **kw)


NEW_MODEL = "a new model"
NO_TEACHER = "no teacher"
MAX_MEMBERS = 10          # ensemble members the form offers


def train_section() -> None:
    active = jobs.active_runs()
    if active and st.session_state.get("lab_run") not in [str(r.path) for r in active]:
        st.session_state["lab_run"] = str(active[0].path)   # a reload or another tab re-attaches
    st.subheader("Train or fine-tune a model")
    a, b = st.columns(2)
    # the sidebar's dataset folder, followed when it changes; a folder typed here is kept (own key:
    # Streamlit drops a widget's state while another section is shown)
    if st.session_state.get("lab_train_for") != default_data:
        st.session_state["lab_train_for"] = st.session_state["lab_train_value"] = default_data
    st.session_state["lab_train_data"] = st.session_state.get("lab_train_value", default_data)
    data = a.text_input("Dataset folder", key="lab_train_data", placeholder="the sidebar's dataset folder",
                        on_change=lambda: st.session_state.update(lab_train_value=st.session_state["lab_train_data"]),
                        help="Starts at the sidebar's dataset folder. HAM10000 layout (metadata.csv + images/) or "
                             "generic layout (labels.csv + images/).")
    data = data.strip() or default_data
    name = b.text_input("Run name", key="lab_run_name", placeholder="automatic: architecture and time")
    arch = setting_select(a, "Architecture", "arch", "lab_arch",
                          format_func=lambda n: f"{n}" + (f" — {get_arch(n).paper}" if get_arch(n).paper else ""))
    models = model_options()
    start_from = b.selectbox("Start from", [NEW_MODEL, *models], key="lab_init",
                             format_func=lambda k: k if k == NEW_MODEL else f"fine-tune {models[k]}",
                             help="A new model starts from the weights chosen in More options (ImageNet, or none). "
                                  "Fine-tuning needs the same architecture as the model it starts from.")
    c = st.columns(5)
    epochs = setting_number(c[0], "Epochs", "epochs", "lab_epochs")
    lr = setting_number(c[1], "Learning rate", "lr", "lab_lr", format="%.5f", step=1e-4)
    h0, w0 = get_arch(arch).input_size
    side = TC.bounds("image_size")
    h = c[2].number_input("Image height", *side, None, key="lab_h", placeholder=f"default {h0}")
    w = c[3].number_input("Image width", *side, None, key="lab_w", placeholder=f"default {w0}")
    batch = setting_number(c[4], "Batch size", "batch_size", "lab_batch", placeholder="CPU 32, GPU 128",
                           help="Empty: the device's default. The learning rate is for batch 32 and is scaled by "
                                "the square root of batch / 32.")
    metadata = st.checkbox("Fuse clinical data (age, sex, body site)", TC.default("metadata"), key="lab_meta")
    with st.expander("More options"):
        d = st.columns(4)
        taxonomy = d[0].text_input("Taxonomy", TC.default("taxonomy"), key="lab_tax",
                                   help="ham7, han12 or a taxonomy JSON file")
        limit = d[1].number_input("Image limit", 0, TC.bounds("limit")[1], TC.default("limit") or 0,
                                  key="lab_limit", help="Use only the first N images (smoke runs); 0: all.")
        device = d[2].selectbox("Device", ["auto", *TC.DEVICES], key="lab_device", help="auto: the GPU when present")
        monitor_on = setting_select(d[3], "Best epoch by", "monitor", "lab_monitor")
        e = st.columns(4)
        patience = setting_number(e[0], "Patience (epochs)", "patience", "lab_patience",
                                  help="Early stopping: training ends after this many epochs without a better "
                                       "validation score.")
        pretrained = setting_select(e[1], "Pretrained", "pretrained", "lab_pretrained",
                                    help="ImageNet weights. offline: from an installed package; none: random start; "
                                         "hub: download")
        tta = e[3].checkbox("Flip TTA", TC.default("tta"), key="lab_tta",
                            help="Test-time augmentation: average the predictions of the photo and its mirror images.")
        n_members = e[2].number_input(
            "Members", 1, MAX_MEMBERS, 1, key="lab_members",
            help="Ensemble members. 1: one model. 2 or more: that many models of this architecture (seeds 0, 1, "
                 "...) trained one after another on one split, then averaged into one ensemble with one calibration. "
                 "Each member takes as long as one model.")
        f = st.columns([2, 1, 1])   # a teacher's label is as long as Start from's
        teacher = f[0].selectbox("Distil from", [NO_TEACHER, *models], key="lab_teacher",
                                 format_func=lambda k: k if k == NO_TEACHER else models[k],
                                 help="Train on this model's probabilities as well as the labels (distillation): "
                                      "a single model that learns from an ensemble. It trains on the teacher's split.")
        distill_weight = setting_number(f[1], "Teacher weight", "distill_weight", "lab_distill_weight", step=0.1,
                                        help="With a teacher: the share of the loss that matches its probabilities; "
                                             "the labels get the rest.")
    go = st.button("Start training", type="primary", key="lab_start", disabled=bool(active))
    if go and not data:
        st.error("Cannot start training: choose the dataset folder in the sidebar (or type one above).")
    elif go:
        cfg = TC.TrainConfig(data=data, arch=arch, epochs=int(epochs), lr=float(lr), metadata=metadata,
                             image_size=(int(h or h0), int(w or w0)) if (h or w) else None,
                             batch_size=int(batch) if batch else None,
                             taxonomy=taxonomy, limit=int(limit) or None, patience=int(patience),
                             pretrained=pretrained, tta=tta,
                             device=None if device == "auto" else device, monitor=monitor_on,
                             init_from=None if start_from == NEW_MODEL else start_from,
                             teacher=None if teacher == NO_TEACHER else teacher,
                             distill_weight=float(distill_weight))
        try:
            from derm_core.data.taxonomy import load_taxonomy
            cfg = with_teacher_split(cfg)
            n = len(load_table(cfg.data, load_taxonomy(cfg.taxonomy), check_files=False))
            run = jobs.new_run_dir(name or f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}")
            plan = [MemberPlan(arch, cfg.seed + i) for i in range(int(n_members))] if n_members > 1 else None
            jobs.start(run, cfg, members=plan)
            st.session_state["lab_run"] = str(run)
            st.toast(f"Training {f'an ensemble of {len(plan)} members' if plan else 'started'} on {n} images in {run}")
        except (DataError, FileNotFoundError, ValueError, jobs.JobError) as err:
            st.error(f"Cannot start training: {err}")
        else:
            st.rerun()   # draw the page again with the job running (button disabled, monitor live)
    if active:
        st.info(f"A training job is running ({', '.join(r.name for r in active)}); start another when it ends or "
                "stop it.")
    if st.session_state.get("lab_run"):
        st.divider()
        monitor(Path(st.session_state["lab_run"]))


# ============================================================================ Runs
def runs_section() -> None:
    runs = jobs.list_runs()
    if not runs:
        st.info(f"No runs yet in {jobs.runs_root()}: start one in **Train**.")
        return
    three = st.column_config.NumberColumn(format="%.3f")     # one number of digits for every score
    st.dataframe(L.runs_table(runs), hide_index=True, key="lab_runs_table",
                 column_config={c: three for c in ("val balanced acc.", "val macro AUC", "test balanced acc.",
                                                   "test macro AUC")})
    names = [r.name for r in runs]
    pick = st.selectbox("Run", names, key="lab_run_pick")
    r = runs[names.index(pick)]
    if r.status.active or r.status.state in ("stopped", "failed"):
        monitor(r.path)
    elif r.status.history:
        st.plotly_chart(training_figure(r.status.history), key="lab_run_curves")
    if r.card:
        card = L.card_summary(r.card)
        st.markdown(f"**Model card** `{r.path / 'model.json'}`")
        st.json(card, expanded=1)
        def evaluate_this(path=str(r.path / "model.json")):
            st.session_state["lab_model"] = st.session_state["lab_model_value"] = path
            st.session_state["lab_section"] = "Evaluate & tune"
        st.button("Evaluate this model", key="lab_eval_this", on_click=evaluate_this)


# ============================================================================ Evaluate & tune
@st.cache_data(show_spinner="Reading the dataset ...", max_entries=8)
def dataset(folder: str, taxonomy: dict, card_path: str, split: str) -> pd.DataFrame:
    table = load_table(folder, Taxonomy.from_dict(taxonomy))
    if split != ALL:
        card = read_card(card_path)
        sf = card.split_file
        table = split_rows(table, sf, split)
        if table.empty:
            raise DataError(f"the {split} split of {folder} is empty")
    return table


def available_splits(card, folder: str) -> list[str]:
    sf = card.split_file
    if not sf.is_file():
        return [ALL]
    try:
        load_splits(dataset(folder, card.taxonomy.to_dict(), str(card.path), ALL), sf)
    except (ValueError, DataError, OSError):
        return [ALL]
    return ["val", "test", "train", ALL]


@st.cache_resource(show_spinner="Loading cached predictions ...", max_entries=4)
def eval_set(card_path: str, model_key: str, folder: str, split: str) -> dict | None:
    """Cached predictions of (model, data) as an EvalSet, or None when not evaluated yet
    (``model_key``: the card's ``identity().key``, so new weights or a recalibration count)."""
    card = read_card(card_path)
    table = dataset(folder, card.taxonomy.to_dict(), card_path, split)
    pred = E.load_cached_predictions(card, table)
    if pred is None:
        return None
    key = E.data_key(table)
    toned = table.assign(skin_tone=skin_tones(folder, card_path, split))
    ev = O.EvalSet.from_table(card.taxonomy, toned, pred["logits"], card.temperature).warm()
    return {"ev": ev, "emb": pred["embeddings"], "table": table, "key": key}


@st.cache_data(show_spinner="Estimating the skin tone around each lesion ...", max_entries=8)
def skin_tones(folder: str, card_path: str, split: str) -> list[str]:
    """Each photo's skin-tone category (ITA of the skin around its lesion mask), for the subgroup table."""
    card = read_card(card_path)
    table = dataset(folder, card.taxonomy.to_dict(), card_path, split)
    return [tone_group(v) for v in table_itas(table)]


@st.cache_resource(show_spinner=False, max_entries=8)
def tsne_layout(card_path: str, model_key: str, folder: str, split: str, dims: int, compute: bool):
    card = read_card(card_path)
    res = eval_set(card_path, model_key, folder, split)
    if compute:
        return E.cached_tsne(card, res["table"], res["emb"], dims)
    return E.load_cached_tsne(card, res["table"], dims)


def thr_keys(card) -> tuple[dict[str, str], dict[str, str]]:
    return ({c: f"lab_thr_c_{c}" for c in card.classes}, {t: f"lab_thr_t_{t}" for t in card.taxonomy.tier_names[1:]})


def set_thresholds(card, thr: Thresholds) -> None:
    ck, tk = thr_keys(card)
    for c, k in ck.items():
        st.session_state[k] = L.unit_interval(thr.classes[c])
    for t, k in tk.items():
        st.session_state[k] = L.unit_interval(thr.tiers[t])
    st.session_state["lab_thr_values"] = {"owner": str(card.path), "name": thr.name,
                                          "classes": dict(thr.classes), "tiers": dict(thr.tiers)}


def apply_preset(card, ev, kind: str, target: float) -> None:
    if kind == "model":
        set_thresholds(card, card.thresholds)
    else:
        set_thresholds(card, O.preset(ev, kind, target=target, step=STEP, fallback=card.thresholds))


def current_thresholds(card) -> Thresholds:
    ck, tk = thr_keys(card)
    thr = Thresholds({c: float(st.session_state[k]) for c, k in ck.items()},
                     {t: float(st.session_state[k]) for t, k in tk.items()})
    saved = st.session_state.get("lab_thr_values", {})
    same = saved.get("classes") == thr.classes and saved.get("tiers") == thr.tiers
    name = saved.get("name") if same and saved.get("name") else "custom (Model lab)"
    st.session_state["lab_thr_values"] = {"owner": str(card.path), "name": name, "classes": dict(thr.classes),
                                          "tiers": dict(thr.tiers)}
    return Thresholds(thr.classes, thr.tiers, name)


def tune(card, res: dict, folder: str, split: str) -> None:
    """Sliders, presets, every plot and table, the profile form: one fragment, so a slider
    move re-runs only this part (the predictions are never recomputed)."""
    ev: O.EvalSet = res["ev"]
    tax = card.taxonomy
    saved = st.session_state.get("lab_thr_values", {})
    ck, tk = thr_keys(card)
    if saved.get("owner") != str(card.path):
        set_thresholds(card, card.thresholds)
    elif any(k not in st.session_state for k in [*ck.values(), *tk.values()]):   # widgets were cleaned up
        set_thresholds(card, Thresholds(saved["classes"], saved["tiers"], saved.get("name", "")))

    st.subheader("Operating thresholds")
    # one row that wraps (each button as wide as its label), so no label is cut in a narrow window
    p = st.container(horizontal=True, vertical_alignment="bottom", key="lab_presets")
    target = p.number_input("Preset target", 0.5, 0.999, 0.95, step=0.01, key="lab_preset_target", width=130,
                            help="The sensitivity of the screening preset, the specificity of the high-specificity one.")
    p.button("Model's own", key="lab_p_model", on_click=apply_preset, args=(card, ev, "model", target),
             help="The thresholds stored with the model.")
    p.button("Youden", key="lab_p_youden", on_click=apply_preset, args=(card, ev, "youden", target),
             help="Youden-optimal: each threshold maximises sensitivity + specificity.")
    p.button(f"Screening ≥{target:.0%}", key="lab_p_screening", on_click=apply_preset,
             args=(card, ev, "screening", target),
             help="High-sensitivity screening: every tier above the lowest, and each class in one, flagged with at "
                  "least the target sensitivity.")
    p.button(f"Specificity ≥{target:.0%}", key="lab_p_specific", on_click=apply_preset,
             args=(card, ev, "specific", target), help="High-specificity: at least the target specificity.")
    tiers = list(reversed(list(tk.items())))
    cols = st.columns(2)     # the same two columns as the class sliders below
    for i, (t, k) in enumerate(tiers):
        cols[i % 2].slider(f"Tier: {t} or more urgent", 0.0, 1.0, step=STEP, key=k, format="%.3f",
                           help="Assigned when the summed probability of this tier and more urgent ones reaches it.")
    items = list(ck.items())
    for row in range(0, len(items), 2):     # a row of columns per pair: the sliders of a row start level at 1024 px
        for col, (c, k) in zip(st.columns(2), items[row:row + 2]):
            name = tax.display_names[c]
            col.slider(f"{c} — {name.split(' (')[0]}", 0.0, 1.0, step=STEP, key=k, format="%.3f",
                       help=f"{name}: in the differential when its probability reaches this threshold.")
    thr = current_thresholds(card)
    table = O.operating_table(ev, thr)
    st.caption(f"Thresholds: **{thr.name}** · {len(ev)} images ({split} of `{folder}`)")

    # ------------------------------------------------ prevalence
    targets = ev.target_names()
    a, b = st.columns([2, 1])
    tgt = a.selectbox("Condition", targets, key="lab_target", format_func=ev.target_label,
                      help="The condition the prevalence, the summary and the subgroup table refer to.")
    prev_data = ev.prevalence(tgt)
    prev = b.number_input("Prevalence (%)", *L.PREVALENCE_RANGE, L.prevalence_percent(prev_data), step=0.5,
                          key=f"lab_prev_{tgt}", help="Of the condition in the population the tool will be used on.")
    op = O.operating_point(ev, thr, tgt, prevalence=prev / 100)
    m = st.columns(4)
    m[0].metric("Sensitivity", pct(op["sensitivity"]))
    m[1].metric("Specificity", pct(op["specificity"]))
    m[2].metric(f"PPV at {prev:g}%", pct(op["ppv"]))
    m[3].metric(f"NPV at {prev:g}%", pct(op["npv"]))
    st.caption(f"{ev.target_label(tgt)} at these thresholds: sensitivity {pct(op['sensitivity'])}, specificity "
               f"{pct(op['specificity'])}, PPV {pct_or_undefined(op['ppv'])} and NPV {pct_or_undefined(op['npv'])} at a "
               f"prevalence of {prev:g}% "
               f"(this data: {prev_data:.1%}).")

    # ------------------------------------------------ plots
    st.subheader("ROC")
    r1, r2, w = two_columns("lab-roc")     # side by side only where each has room for the plot and its legend
    r1.plotly_chart(roc_figure(ev, table, [t for t in targets if t.startswith(O.TIER_PREFIX)], w), width="content",
                    key="lab_roc_tiers")
    r2.plotly_chart(roc_figure(ev, table, list(ev.classes), w), width="content", key="lab_roc_classes")
    st.subheader("Sensitivity and specificity against the threshold")
    panels = 3 if column_width("lab-sens-spec", 1000) >= 900 else 2     # each panel at least about 300 px wide
    st.plotly_chart(sens_spec_figure(ev, table, targets, cols=panels), key="lab_sens_spec")

    st.subheader("Per class and per tier at the current thresholds")
    auc = [f"{lo:.3f}–{hi:.3f}" if lo == lo and hi == hi else "" for lo, hi in zip(table["auc_low"], table["auc_high"])]
    show = table.assign(auc=L.with_interval(table["auc"], auc)).rename(
        columns={"label": "class / tier", "n": "positives", "auc": "AUC (95% CI)", "youden": "Youden threshold"})
    words_table(show[["class / tier", "positives", "threshold", "sensitivity", "specificity", "ppv", "npv", "f1"]],
                L.UNDEFINED_FOOTNOTE.format(what="class or tier"))
    st.caption("Counts at the current thresholds (tp: flagged with the condition, fp: flagged without it, fn: missed, "
               "tn: correctly cleared), then the threshold-free AUC with its interval and the threshold that "
               "maximises sensitivity + specificity:")
    words_table(show[["class / tier", "tp", "fp", "fn", "tn", "AUC (95% CI)", "Youden threshold"]])

    st.subheader("Risk tiers assigned at the current thresholds")
    c1, c2 = st.columns([3, 2])
    c1.plotly_chart(confusion_figure(O.tier_confusion(ev, thr), tax.tier_names, st.session_state.get("lab_cm_norm", True),
                                     "", ("true tier", "assigned tier")), key="lab_cm_tiers")
    c2.caption("Rows: the true tier of each image (from its recorded diagnosis); columns: the tier the model assigns "
               "at the tier thresholds above. Cells left of the diagonal are under-triaged (given a less urgent tier "
               "than the true one).")

    st.subheader("Subgroups")
    sub = O.subgroup_table(ev, thr, tgt)
    if sub.empty:
        st.info("This data has no sex, age or body-site information.")
    else:
        st.caption(f"First the threshold-free figures per group, then {ev.target_label(tgt)} at the current "
                   "thresholds, with Wilson 95% intervals for the sensitivity and specificity. Small groups give "
                   "unstable numbers: read them with their sizes. Skin tone: the individual typology angle (ITA) of the skin around each "
                   "lesion, very light (> 55°) to dark (< -30°); a dermoscope's light shifts it, so it estimates "
                   "the photographed tone, not a Fitzpatrick type.")
        free = sub[["grouping", "group", "n", "accuracy", "balanced_accuracy", "macro_auc"]]
        words_table(free)
        at = sub.assign(sensitivity=L.with_interval(sub["sensitivity"], sub["sensitivity_95ci"]),
                        specificity=L.with_interval(sub["specificity"], sub["specificity_95ci"]))
        at = at.rename(columns={"sensitivity": "sensitivity (95% CI)", "specificity": "specificity (95% CI)"})
        words_table(at[["grouping", "group", "n_positive", "sensitivity (95% CI)", "specificity (95% CI)", "ppv", "npv",
                        "f1"]], L.UNDEFINED_FOOTNOTE.format(what="group"))

    embedding_view(card, res, folder, split, thr)
    save_profile_form(card, ev, thr, folder, split, res["key"])


def embedding_view(card, res: dict, folder: str, split: str, thr: Thresholds) -> None:
    ev: O.EvalSet = res["ev"]
    st.subheader("t-SNE of the embeddings")
    a, b = st.columns([1, 3])
    dims = a.radio("Dimensions", [2, 3], horizontal=True, key="lab_tsne_dims", format_func=lambda d: f"{d}D")
    colour = b.radio("Colour by", L.COLOUR_BY, horizontal=True, key="lab_tsne_colour")
    key = card.identity().key
    xy = tsne_layout(str(card.path), key, folder, split, dims, False)
    if xy is None:
        if not st.button(f"Compute the {dims}D t-SNE of {len(ev)} embeddings", key="lab_tsne_go"):
            return
        with st.spinner("Laying out the embeddings (t-SNE) ..."):
            tsne_layout.clear()
            xy = tsne_layout(str(card.path), key, folder, split, dims, True)
    view = L.embedding_colours(ev, thr, colour, target_colours(ev))
    fig = embedding_figure(xy, view.categories, view.hover, view.colours)
    if dims == 2:
        event = st.plotly_chart(fig, key="lab_tsne", on_select="rerun", selection_mode=("points", "box", "lasso"))
        rows = L.selected_rows(event.selection.points if event else [])
        if rows:
            table = res["table"]
            st.image([thumbnail(table["path"].iloc[i], 110) for i in rows], width=110,
                     caption=[f"{table['image_id'].iloc[i]} ({table['label'].iloc[i]})" for i in rows])
        else:
            st.caption("Hover for image ids; select points (click, box or lasso) to see their images.")
    else:
        st.plotly_chart(fig, key="lab_tsne3d")


def save_profile_form(card, ev: O.EvalSet, thr: Thresholds, folder: str, split: str, data_key: str) -> None:
    st.subheader("Publish a threshold profile")
    if split in ("test", "train"):
        st.warning(f"These thresholds are being tuned on the **{split}** split; tune on validation data and "
                   "confirm on the test split.")
    with st.form("lab_save_profile"):
        a, b = st.columns(2)
        name = a.text_input("Profile name", key="lab_profile_name", placeholder="e.g. screening clinic A")
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001
            user = ""
        author = b.text_input("Saved by", user, key="lab_profile_author")
        note = st.text_area("Note", key="lab_profile_note", height=68)
        go = st.form_submit_button("Save profile", type="primary")
    if go:
        try:
            from derm_core.model import (
                conformal as C,  # issue 12: the prediction sets' calibration travels with the profile
            )
            try:
                cal = C.load_calibration(card)
            except C.ConformalError:
                cal = None
            prof = P.save_profile(name, thr, card, author=author, note=note,
                                  extra={"conformal": cal.to_dict()} if cal is not None else None,
                                  validation={"data": folder, "split": split, "n_images": len(ev), "data_key": data_key},
                                  metrics=O.summary(ev, thr))
            st.session_state["lab_saved_profile"] = str(prof.path)
        except P.ProfileError as e:
            st.error(f"Not saved: {e}")
    saved = st.session_state.get("lab_saved_profile")
    if saved:
        try:
            prof = P.load_profile(saved, card)
        except P.ProfileError:
            return
        st.success(f"Saved profile **{prof.id}** (`{prof.path.name}`).")
        if st.button("Use this model and profile on the Triage page", key="lab_use_profile"):
            st.session_state["model_path"] = str(card.path)
            st.session_state[ACTIVE_PROFILE] = str(prof.path)
            st.toast(f"The Triage page now uses {card.name} with profile {prof.id}.")
        st.page_link("pages/triage.py", label="Go to the Triage page", icon=":material/search:")


def evaluate_section() -> None:
    models = model_options()
    if not models:
        st.info("No model to evaluate: the shipped model is missing and no run has finished.")
        return
    # the choice kept under its own key too: Streamlit drops a widget's state while another section is shown
    if st.session_state.get("lab_model_value") not in models:
        st.session_state["lab_model_value"] = next(iter(models))
    st.session_state["lab_model"] = st.session_state["lab_model_value"]
    path = st.selectbox("Model", list(models), key="lab_model", format_func=models.get,
                        on_change=lambda: st.session_state.update(lab_model_value=st.session_state["lab_model"]))
    card = read_card(path)
    trained_on = card.trained_on
    own = trained_on if trained_on and Path(trained_on).is_dir() else ""
    # the sidebar's dataset folder first, else the model's own training folder; re-chosen when either changes
    # (kept under its own key too: Streamlit drops a widget's state while another section is shown)
    if st.session_state.get("lab_eval_for") != (path, default_data):
        st.session_state["lab_eval_for"] = (path, default_data)
        st.session_state["lab_eval_value"] = default_data or own
    st.session_state["lab_eval_data"] = st.session_state.get("lab_eval_value", default_data or own)
    a, b = st.columns([3, 2])
    folder = a.text_input("Evaluation data folder", key="lab_eval_data",
                          on_change=lambda: st.session_state.update(lab_eval_value=st.session_state["lab_eval_data"]),
                          help="The model's own dataset folder offers its validation and test splits.")
    if not folder:
        st.info("Set the evaluation data folder.")
        return
    try:
        splits = available_splits(card, folder)
    except (DataError, FileNotFoundError, ValueError) as e:
        st.error(f"Cannot read the data: {e}")
        return
    split = b.radio("Images", splits, horizontal=True, key="lab_eval_split",
                    help="Tune thresholds on the validation split; confirm on the test split.")
    origin = ("the sidebar's dataset folder" if folder == default_data else "the model's training folder"
              if folder == own else "a folder typed here")
    st.info(f"Showing **{split}** of `{folder}` ({origin}).", icon=":material/folder_open:")
    try:
        res = eval_set(str(card.path), card.identity().key, folder, split)
    except (DataError, FileNotFoundError, ValueError) as e:
        st.error(f"Cannot read the data: {e}")
        return
    if res is None:
        n = len(dataset(folder, card.taxonomy.to_dict(), str(card.path), split))
        st.info(f"{card.name} has not been evaluated on these {n} images yet; the predictions are computed once and "
                "cached.")
        if st.button(f"Evaluate {n} images", type="primary", key="lab_evaluate"):
            bar = st.progress(0.0, text="Predicting ...")
            try:
                E.predictions(card, dataset(folder, card.taxonomy.to_dict(), str(card.path), split),
                              callback=lambda d, t: bar.progress(d / t, text=f"Predicting {d}/{t} images ..."))
            except (DermTriageError, OSError, RuntimeError) as e:    # a bad $DERMTRIAGE_DEVICE too
                st.error(f"Evaluation failed: {e}")
                return
            eval_set.clear()
            st.rerun()
        return
    ev = res["ev"]
    h = ev.headline
    m = [*st.columns(3), *st.columns(3)]    # two rows: six labels do not fit one row at 1024 px
    m[0].metric("Images", h["n_images"])
    m[1].metric("Accuracy", pct(h["accuracy"]))
    m[2].metric("Balanced accuracy", pct(h["balanced_accuracy"]))
    m[3].metric("Top-3 accuracy", pct(h["top3_accuracy"]))
    m[4].metric("Macro AUC", f"{h['macro_auc']:.3f}")
    m[5].metric("ECE", f"{h['ece']:.3f}")
    iv = ev.intervals(card.balanced_rule)
    ci = lambda k, fmt: "–".join(fmt(v) for v in iv[k]) if iv.get(k) else "n/a"  # noqa: E731
    st.caption(f"Most likely diagnosis rule (argmax). {iv['level']:.0%} intervals, {iv['method']}: accuracy "
               f"{ci('accuracy', pct)}, balanced accuracy {ci('balanced_accuracy', pct)}, macro AUC "
               f"{ci('macro_auc', lambda v: f'{v:.3f}')}.")
    if card.balanced_rule is not None and "balanced_rule" in iv:
        br = card.balanced_rule.report(ev.y, ev.probs, ev.classes)
        st.caption(f"Balanced rule (prior-corrected, tau {br['tau']:.2f} chosen on validation): accuracy "
                   f"{pct(br['accuracy'])}, balanced accuracy {pct(br['balanced_accuracy'])} "
                   f"({'–'.join(pct(v) for v in iv['balanced_rule']['balanced_accuracy'])}).")
    threshold_free(ev)
    conformal_view(card, ev, folder, split)
    st.fragment(tune)(card, res, folder, split)


def conformal_view(card, ev: O.EvalSet, folder: str, split: str) -> None:
    """Issue 12: coverage of the conformal prediction sets against the level, and their sizes."""
    from derm_core.evaluate.figures import coverage_figure, set_size_figure
    from derm_core.model import conformal as C
    with st.expander("Prediction sets (conformal, calibrated on the validation split)", expanded=False):
        try:
            cal = C.load_calibration(card)
        except C.ConformalError as e:
            cal = None
            st.warning(f"The stored calibration cannot be used: {e}")
        if cal is None:
            st.info("This model has no conformal calibration yet.")
            if st.button("Calibrate the prediction sets on the validation split", key="lab_conformal_fit"):
                with st.spinner("Predicting the validation split (cached) ..."):
                    try:
                        table = dataset(folder, card.taxonomy.to_dict(), str(card.path), ALL)
                        C.fit_for_model(card, table, load_splits(table, card.split_file).to_numpy())
                    except (ValueError, DataError, OSError) as e:
                        st.error(f"Not calibrated: {e}")
                        return
                st.rerun()
            return
        if split in ("val", ALL):
            st.warning("These images include the calibration (validation) photos: coverage here is optimistic. "
                       "Check it on the test split.")
        level = st.select_slider("Level", C.PAGE_LEVELS, value=C.DEFAULT_LEVEL, key="lab_conformal_level",
                                 format_func=lambda v: f"{v:.0%}")
        r = C.evaluate(cal, ev.y, ev.probs, level)
        m = st.columns(3)
        m[0].metric("Coverage", f"{r['coverage']:.1%}", help=f"target {level:.0%}")
        m[1].metric("Mean set size", f"{r['mean_set_size']:.2f}")
        m[2].metric("Empty sets", f"{r['empty_sets']:.1%}")
        c1, c2 = st.columns(2)
        c1.plotly_chart(coverage_figure(C.coverage_curve(cal, ev.y, ev.probs), target_colours(ev)),
                        key="lab_conformal_coverage")
        c2.plotly_chart(set_size_figure(r["set_size_counts"], level), key="lab_conformal_sizes")
        coverage = st.column_config.NumberColumn(format="%.1f%%")   # one decimal, as the metric above

        def in_percent(rows: list[dict]) -> pd.DataFrame:
            return pd.DataFrame(rows).assign(coverage=lambda d: d["coverage"] * 100)

        st.dataframe(in_percent(C.per_class_rows(r)), hide_index=True, key="lab_conformal_classes",
                     column_config={"coverage": coverage})
        if "skin_tone" in ev.groups:
            st.markdown(f"**Coverage by skin tone** at {level:.0%} (ITA of the skin around each lesion)")
            st.dataframe(in_percent(C.per_group_rows(cal, ev.y, ev.probs, ev.groups["skin_tone"],
                                                     (*TONE_NAMES, UNKNOWN), level)),
                         hide_index=True, key="lab_conformal_tones",
                         column_config={"group": "skin tone", "coverage": coverage,
                                        "mean set size": st.column_config.NumberColumn(format="%.2f")})
            st.caption("The guarantee holds on average over photos like the validation set; a tone with few photos "
                       "can fall below it by chance or because the model knows it less.")
        if cal.pooled:
            st.caption(f"{', '.join(cal.pooled)}: fewer than {cal.min_class_n} calibration photos, so scored against "
                       "all classes' photos; their coverage is the average guarantee, not their own.")


def threshold_free(ev: O.EvalSet) -> None:
    """The views that no threshold changes (drawn outside the slider fragment)."""
    with st.expander("Confusion matrix and calibration (threshold-free)", expanded=True):
        norm = st.toggle("Row-normalised", True, key="lab_cm_norm")
        c1, c2, _ = two_columns("lab-threshold-free")
        c1.plotly_chart(confusion_figure(ev.confusion, list(ev.classes), norm, "classes (most probable class)"),
                        key="lab_cm_classes")
        cal = ev.calibration
        c2.plotly_chart(reliability_figure(cal), key="lab_reliability")
        worse = cal["after"]["ece"] > cal["before"]["ece"]
        c2.caption(f"Reliability diagram: ECE {cal['before']['ece']:.3f} before and {cal['after']['ece']:.3f} after "
                   f"temperature scaling (T = {cal['after']['temperature']:.2f})." +
                   (" The model's temperature makes these images *worse* calibrated: it was fitted on other images "
                    "(the validation split), or the model is barely trained. Read its probabilities with care."
                    if worse else ""))


if section == "Train":
    train_section()
elif section == "Runs":
    runs_section()
else:
    evaluate_section()
