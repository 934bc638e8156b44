"""Widgets and cached resources shared by the pages (layout only; logic lives in derm_core)."""
from __future__ import annotations

import os
import streamlit as st

import pandas as pd

from derm_core.checkpoint import DEFAULT_MODEL, ENV_MODEL, ModelError, read_card
from derm_core.data import ENV_DATA, DataError
from derm_core.predictor import Predictor
from derm_core.report import DISCLAIMER
from derm_core.splits import held_out_cases
from derm_core.triage import Thresholds


def disclaimer() -> None:
    st.warning(DISCLAIMER, icon="⚠️")


@st.cache_resource(show_spinner="Loading model ...")
def _load_predictor(card_path: str) -> Predictor:
    """One model per card, shared by all sessions (prediction is stateless; CAM takes its lock)."""
    return Predictor.from_path(card_path)


def get_predictor() -> Predictor:
    """The chosen model (session setting, else $DERMTRIAGE_MODEL, else the shipped default),
    falling back to the shipped default with a message when it cannot be used."""
    path = str(st.session_state.get("model_path") or os.environ.get(ENV_MODEL) or DEFAULT_MODEL)
    try:
        return _load_predictor(path)
    except (ModelError, OSError) as e:
        if path == str(DEFAULT_MODEL):
            st.error(f"The shipped model cannot be loaded: {e}")
            st.stop()
        st.error(f"Model {path} was refused: {e}. Using the shipped default model instead.")
        st.session_state.pop("model_path", None)
        return _load_predictor(str(DEFAULT_MODEL))


def data_dir_setting() -> str:
    """The dataset folder for example cases and evaluation: app setting, else $DERMTRIAGE_DATA.

    The value lives under its own session key and is copied into the widget on every run:
    Streamlit drops a widget's state when a run is interrupted before the widget is drawn
    (a click while the page is still loading), which would otherwise blank the setting."""
    if "data_dir_value" not in st.session_state:
        st.session_state["data_dir_value"] = os.environ.get(ENV_DATA, "")
    st.session_state["data_dir"] = st.session_state["data_dir_value"]
    st.sidebar.text_input("Dataset folder", key="data_dir",
                          on_change=lambda: st.session_state.update(data_dir_value=st.session_state["data_dir"]),
                          help=f"HAM10000 or generic layout (images + labels.csv); default from ${ENV_DATA}")
    return st.session_state["data_dir_value"]


@st.cache_data(show_spinner="Reading the dataset ...", max_entries=4)
def cached_cases(data_dir: str, card_path: str, classes: tuple[str, ...]) -> tuple[pd.DataFrame, str]:
    """:func:`derm_core.splits.held_out_cases`, read once per folder and model for all sessions."""
    card = read_card(card_path)
    return held_out_cases(data_dir, card.taxonomy, card)


def example_cases(pred: Predictor) -> pd.DataFrame:
    """Cases of the configured dataset folder (the model's test split when it applies)."""
    data_dir = data_dir_setting()
    if not data_dir:
        raise DataError(f"set the dataset folder in the sidebar (or ${ENV_DATA})")
    return cached_cases(data_dir, str(pred.card.path), pred.taxonomy.classes)[0]


ACTIVE_PROFILE = "active_profile"   # session key: path of the chosen threshold profile (absent: model default)


def profile_picker(pred: Predictor) -> str | None:
    """Sidebar choice of the threshold profile (published from the Model lab); None = the model's own.

    Profiles made for the active model are listed first; others are listed too, marked, so
    choosing one explains why it is refused instead of silently hiding it.
    """
    from derm_core.embedding import weights_sha256
    from derm_core.profiles import MODEL_DEFAULT, Profile, list_profiles

    try:
        mine = weights_sha256(pred.card) if pred.card.path else None
    except OSError:
        mine = None
    found = [p for p in list_profiles() if isinstance(p, Profile)]
    found.sort(key=lambda p: p.model.get("weights_sha256") != mine)
    labels = {MODEL_DEFAULT: f"{MODEL_DEFAULT} ({pred.card.thresholds.name})"}
    for p in found:
        other = p.model.get("weights_sha256") != mine
        labels[str(p.path)] = f"{p.id}" + (f" — for another model ({p.model.get('name')})" if other else "")
    current = st.session_state.get(ACTIVE_PROFILE) or MODEL_DEFAULT
    if current not in labels:   # e.g. a profile file removed or broken since it was chosen
        labels[current] = f"{os.path.basename(current)} (unavailable)"
    if st.session_state.get("_profile_picker") != current:
        st.session_state["_profile_picker"] = current

    def chosen():
        st.session_state[ACTIVE_PROFILE] = st.session_state["_profile_picker"]

    choice = st.sidebar.selectbox("Threshold profile", list(labels), format_func=labels.get, key="_profile_picker",
                                  on_change=chosen, help="Operating thresholds published from the Model lab.")
    return None if choice == MODEL_DEFAULT else choice


def active_thresholds(pred: Predictor) -> Thresholds:
    """The operating thresholds in use: the chosen profile's, else the model card's own.

    A profile made for other classes or another model is refused with an error, and the
    card's thresholds are used instead.
    """
    from derm_core.profiles import ProfileError, load_profile

    choice = profile_picker(pred)
    if choice is None:
        return pred.card.thresholds
    try:
        return load_profile(choice, pred.card).thresholds
    except ProfileError as e:
        st.error(f"Threshold profile refused: {e}. Using the model's own thresholds ({pred.card.thresholds.name}).")
        return pred.card.thresholds


def model_caption(pred: Predictor, thresholds_name: str) -> None:
    card = pred.card
    st.caption(f"Model **{card.name}** ({card.arch}, version {card.version}, "
               f"{'uses' if card.use_metadata else 'ignores'} clinical data) · thresholds: **{thresholds_name}**")
