"""Widgets and cached resources shared by the pages (layout only; logic lives in derm_core)."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from derm_core.checkpoint import DEFAULT_MODEL, ModelError, read_card
from derm_core.data import ENV_DATA
from derm_core.predictor import Predictor
from derm_core.report import DISCLAIMER


def disclaimer() -> None:
    st.warning(DISCLAIMER, icon="⚠️")


@st.cache_resource(show_spinner="Loading model ...")
def _load_predictor(card_path: str) -> Predictor:
    """One model per card, shared by all sessions (prediction is stateless; CAM takes its lock)."""
    return Predictor.from_path(card_path)


def get_predictor(card_path: str | None = None) -> Predictor:
    """The chosen model, falling back to the shipped default (with a message) if it cannot be used."""
    path = str(card_path or DEFAULT_MODEL)
    try:
        return _load_predictor(path)
    except (ModelError, OSError) as e:
        if path == str(DEFAULT_MODEL):
            st.error(f"The shipped model cannot be loaded: {e}")
            st.stop()
        st.error(f"Model {path} was refused: {e}. Using the shipped default model instead.")
        st.session_state.pop("model_path", None)
        return _load_predictor(str(DEFAULT_MODEL))


def data_dir_setting() -> Path | None:
    """The dataset folder for example cases: app setting, else $DERMTRIAGE_DATA."""
    default = st.session_state.get("data_dir") or os.environ.get(ENV_DATA, "")
    value = st.sidebar.text_input("Dataset folder", value=default, key="data_dir_input",
                                  help=f"HAM10000 or generic layout; default from ${ENV_DATA}")
    st.session_state["data_dir"] = value
    return Path(value).expanduser() if value else None


def model_caption(pred: Predictor, thresholds_name: str) -> None:
    card = pred.card
    st.caption(f"Model **{card.name}** ({card.arch}, version {card.version}, "
               f"{'uses' if card.use_metadata else 'ignores'} clinical data) · thresholds: **{thresholds_name}**")
