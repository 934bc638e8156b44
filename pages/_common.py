"""Widgets and cached resources shared by the pages (layout only; logic lives in derm_core)."""
from __future__ import annotations

import os
import streamlit as st

import pandas as pd

from derm_core.checkpoint import DEFAULT_MODEL, ENV_MODEL, ModelError, read_card
from derm_core.data import ENV_DATA, DataError, load_table
from derm_core.predictor import Predictor
from derm_core.report import DISCLAIMER
from derm_core.splits import load_splits
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
    """The dataset folder for example cases and evaluation: app setting, else $DERMTRIAGE_DATA."""
    if "data_dir" not in st.session_state:
        st.session_state["data_dir"] = os.environ.get(ENV_DATA, "")
    return st.sidebar.text_input("Dataset folder", key="data_dir",
                                 help=f"HAM10000 or generic layout (images + labels.csv); default from ${ENV_DATA}")


@st.cache_data(show_spinner="Reading the dataset ...")
def _cases(data_dir: str, card_path: str, classes: tuple[str, ...]) -> pd.DataFrame:
    card = read_card(card_path)
    table = load_table(data_dir, card.taxonomy)
    split_file = card.path.parent / card.data.get("training", {}).get("split_file", "split.csv")
    if split_file.is_file():
        try:
            test = (load_splits(table, split_file) == "test").to_numpy()
            if test.any():
                table = table[test]
        except ValueError:
            pass  # another dataset than the model's: offer all of it
    return table.reset_index(drop=True)


def example_cases(pred: Predictor) -> pd.DataFrame:
    """Cases of the configured dataset folder (the model's test split when it applies)."""
    data_dir = data_dir_setting()
    if not data_dir:
        raise DataError(f"set the dataset folder in the sidebar (or ${ENV_DATA})")
    return _cases(data_dir, str(pred.card.path), pred.taxonomy.classes)


def active_thresholds(pred: Predictor) -> Thresholds:
    """The operating thresholds in use: the model card's own (profiles come from the Model lab)."""
    return pred.card.thresholds


def model_caption(pred: Predictor, thresholds_name: str) -> None:
    card = pred.card
    st.caption(f"Model **{card.name}** ({card.arch}, version {card.version}, "
               f"{'uses' if card.use_metadata else 'ignores'} clinical data) · thresholds: **{thresholds_name}**")
