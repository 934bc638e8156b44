"""Widgets and cached resources shared by the pages (layout only; logic lives in derm_core)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components
from PIL import Image

from derm_core.data.dataset import DataError
from derm_core.data.images import ImageError, data_uri, load_image
from derm_core.data.splits import held_out_cases
from derm_core.errors import DermTriageError
from derm_core.model.checkpoint import model_stamp, read_card
from derm_core.model.device import device_or_cpu
from derm_core.model.inference import fast_path_or_auto
from derm_core.model.predictor import Predictor
from derm_core.settings import ENV_DATA, SHIPPED_MODEL, settings
from derm_core.triage.report import DISCLAIMER
from derm_core.triage.rules import Thresholds


def thumbnail(path, width: int) -> str:
    """A dataset photo for ``st.image`` at ``width`` px (sent at twice that, for sharp screens):
    a data URI (:func:`derm_core.data.images.data_uri`); a grey tile when it cannot be read, so the
    captions beside it still line up."""
    try:
        img = load_image(path)
    except (ImageError, OSError):
        img = Image.new("RGB", (4, 3), (189, 189, 189))
    return data_uri(img, 2 * width, "JPEG")


def disclaimer() -> None:
    st.warning(DISCLAIMER, icon=":material/warning:")


# ------------------------------------------------------------------ crop widget scaled to its column
_column_width = components.declare_component("column_width", path=str(Path(__file__).parent / "_column_width"))
DEFAULT_COLUMN_PX = 320     # until the browser has reported the column's width: fits a 1024-px-wide window
CROP_STROKE = 2             # the crop box's line width (screen pixels)


def column_width(key: str, default: int = DEFAULT_COLUMN_PX) -> int:
    """The width in CSS pixels of the column this is called in, as the browser lays it out
    (a zero-height component reports it, and again on a resize); ``default`` before that."""
    value = _column_width(key=key, default=None)
    return int(value) if isinstance(value, (int, float)) and value >= 50 else default


COLUMN_GAP_PX = 16   # Streamlit's gap between columns (1rem)


def two_columns(key: str, min_width: int = 800):
    """Two side-by-side columns where the space is at least ``min_width`` CSS px wide, else two
    stacked containers (a figure then keeps room for its plot and legend in a narrow window);
    with the width each one offers, a little under the real one so a figure of that width fits."""
    total = column_width(key, 1000)
    if total >= min_width:
        return (*st.columns(2), (total - COLUMN_GAP_PX) // 2 - 4)
    return st.container(), st.container(), total - 4


@st.cache_data(max_entries=16, show_spinner=False)
def _shown_jpeg(digest: str, shown: tuple[int, int], _photo) -> str:
    """The photo scaled for the screen, as a JPEG data URL (pixels only: no EXIF)."""
    from derm_core.explain.lesion import DisplayScale
    return DisplayScale(_photo.size, shown).jpeg_data_url(_photo)


def crop_widget(photo, digest: str, box: tuple[int, int, int, int], key: str, colour: str = "#1565c0"):
    """The whole photo scaled to the column with a movable crop box starting at ``box``
    (original pixels); returns the box in original pixels and the :class:`DisplayScale` used.

    Calls streamlit-cropper's component directly: its Python wrapper scales photos to a fixed
    700x700 px (wider than most columns, so the photo was cut off) and truncates the mapping;
    here the photo is scaled to the column's real width and the box is mapped back by
    :class:`derm_core.explain.lesion.DisplayScale`. The frame's outer edge is the box.
    """
    from streamlit_cropper import _component_func as cropper

    from derm_core.explain.lesion import DisplayScale
    width = column_width(f"{key}-column")
    box = st.session_state.get(f"{key}-box", box)     # kept when the column's width (and so the widget) changes
    # small photos are scaled up to the column too, so the box and its corners are easy to grab
    scale = DisplayScale.fit(photo.size, width, max_height=max(DEFAULT_COLUMN_PX, width), enlarge=True)
    rect = scale.box_to_shown(box)
    w, h = scale.shown
    value = cropper(canvasWidth=w, canvasHeight=h, realtimeUpdate=True, strokeWidth=CROP_STROKE,
                    rectLeft=rect["left"], rectTop=rect["top"], rectWidth=max(1, rect["width"] - CROP_STROKE),
                    rectHeight=max(1, rect["height"] - CROP_STROKE), boxColor=colour,
                    imageData=_shown_jpeg(digest, scale.shown, photo), lockAspect=False, key=f"{key}-{w}x{h}",
                    default=None)
    if isinstance(value, dict) and isinstance(value.get("coords"), dict):
        box = scale.rect_to_original(value["coords"])
        st.session_state[f"{key}-box"] = box
    return tuple(box), scale


@st.cache_resource(show_spinner="Loading model ...", max_entries=4)
def _load_predictor(card_path: str, stamp: tuple, device: str, path: str) -> Predictor:
    """One model per card (and per version of its files: ``stamp``), device and fast path,
    shared by all sessions (prediction is stateless; CAM takes its lock)."""
    return Predictor.from_path(card_path, device, path)


def get_predictor() -> Predictor:
    """The chosen model (session setting, else $DERMTRIAGE_MODEL, else the shipped default),
    falling back to the shipped default with a message when it cannot be used; on the CPU or
    the automatic fast path, with a message, when $DERMTRIAGE_DEVICE or $DERMTRIAGE_FAST_PATH
    cannot be used."""
    device, note = device_or_cpu()
    fast, fast_note = fast_path_or_auto(device)
    for n in (note, fast_note):
        if n:
            st.warning(n)
    path = str(st.session_state.get("model_path") or settings().model)
    try:
        return _load_predictor(path, model_stamp(path), str(device), fast)
    except (DermTriageError, OSError) as e:
        if path == str(SHIPPED_MODEL):
            st.error(f"The shipped model cannot be loaded: {e}")
            st.stop()
        st.error(f"Model {path} was refused: {e}. Using the shipped default model instead.")
        st.session_state.pop("model_path", None)
        return _load_predictor(str(SHIPPED_MODEL), model_stamp(SHIPPED_MODEL), str(device), fast)


def data_dir_setting() -> str:
    """The dataset folder for example cases and evaluation: app setting, else $DERMTRIAGE_DATA.

    The value lives under its own session key and is copied into the widget on every run:
    Streamlit drops a widget's state when a run is interrupted before the widget is drawn
    (a click while the page is still loading), which would otherwise blank the setting."""
    if "data_dir_value" not in st.session_state:
        st.session_state["data_dir_value"] = str(settings().data or "")
    st.session_state["data_dir"] = st.session_state["data_dir_value"]
    st.sidebar.text_input("Dataset folder", key="data_dir",
                          on_change=lambda: st.session_state.update(data_dir_value=st.session_state["data_dir"]),
                          help=f"HAM10000 or generic layout (images + labels.csv); default from ${ENV_DATA}")
    return st.session_state["data_dir_value"]


@st.cache_data(show_spinner="Reading the dataset ...", max_entries=4)
def cached_cases(data_dir: str, card_path: str, classes: tuple[str, ...]) -> tuple[pd.DataFrame, str]:
    """:func:`derm_core.data.splits.held_out_cases`, read once per folder and model for all sessions."""
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
    from derm_core.triage.profiles import MODEL_DEFAULT, profile_choices

    current = st.session_state.get(ACTIVE_PROFILE) or MODEL_DEFAULT
    labels, unreadable = profile_choices(pred.card, current)
    for err in unreadable:   # listed as unreadable, never fatal (issue 13)
        st.sidebar.caption(f"Unreadable threshold profile: {err}")
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
    from derm_core.triage.profiles import ProfileError, load_profile

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
    st.caption(f"Model **{card.name}** ({card.architecture}, version {card.version}, "
               f"{'uses' if card.use_metadata else 'ignores'} clinical data) · thresholds: **{thresholds_name}**")


def words_table(df: pd.DataFrame, footnote: str | None = None) -> None:
    """A results table as a person reads it: headers and group names in words (no snake_case),
    numbers with three decimals aligned right, an undefined value as "–" (never "None") with the
    footnote that says why. A static table: its text wraps to the column at 1024 px, where an
    interactive one hid its right-hand columns behind a scroll bar."""
    from derm_core.evaluate.lab_views import display_table, header
    shown, _, undefined = display_table(df)
    if "grouping" in shown:
        shown["grouping"] = shown["grouping"].map(header)
    shown = shown.rename(columns=header)
    right = [c for c in shown.columns if shown[c].astype(str).str.match(r"^[-–\d.]").all()]   # numbers, "–"
    st.table(shown.style.hide(axis="index").set_properties(subset=right, **{"text-align": "right"}))
    if undefined and footnote:
        st.caption(footnote)
