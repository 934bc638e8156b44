"""The triage page, run headless with Streamlit's AppTest on a tiny untrained model."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import CLASS_COLOURS, ROOT, lesion_image, page_text, tiny_card, write_dataset
from derm_core.model.checkpoint import save_model
from derm_core.model.networks import create_model


@pytest.fixture
def tiny_model(tmp_path, ham7, monkeypatch):
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    path = save_model(model, tiny_card(ham7), tmp_path / "model" / "model")
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(path))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    return path


def _png(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["lime_samples"] = 50  # keep LIME quick in tests
    return at


def test_upload_gives_differential_tier_explanations_and_report(tiny_model):
    at = _app().run()
    assert not at.exception
    assert "Upload a photo" in page_text(at) and "not a medical device" in page_text(at)
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["mel"], (200, 150))), "image/png"))
    at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Risk tier:" in text
    assert any(tier in text for tier in ("low-risk", "high-risk", "dangerous"))
    assert "Biopsy site at x=" in text
    assert "no clinical data given" in text
    assert at.get("download_button")  # the case report


def test_clinical_data_is_used_and_reported(tiny_model):
    at = _app().run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["bcc"], (200, 150))), "image/png"))
    at.run()
    at.number_input(key="age").set_value(75)
    at.selectbox(key="sex").set_value("male")
    at.selectbox(key="site").set_value("face")
    at.run()
    assert not at.exception
    assert "clinical data used: age, sex, site" in page_text(at)
    assert [m.value for m in at.markdown if m.value.startswith("- **")]  # the differential is listed


def _corpus():
    big = Image.new("RGB", (1, 1))
    truncated = _png(lesion_image(CLASS_COLOURS["nv"], (200, 150)), "JPEG")[:400]
    return {
        "notes.jpg": b"this is not an image at all",
        "empty.png": b"",
        "truncated.jpg": truncated,
        "tiny.png": _png(big),
    }


@pytest.mark.parametrize("name", list(_corpus()))
def test_bad_uploads_get_a_clear_message(tiny_model, name):
    at = _app().run()
    at.file_uploader[0].set_value((name, _corpus()[name], "image/png"))
    at.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "cannot be used" in errors, page_text(at)


def test_unusual_but_valid_images_work(tiny_model):
    rgb = lesion_image(CLASS_COLOURS["df"], (200, 150))
    sixteen = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    for raw in (_png(rgb.convert("L")), _png(rgb.convert("CMYK"), "JPEG"), _png(sixteen), _png(rgb.convert("RGBA"))):
        at = _app().run()
        at.file_uploader[0].set_value(("x.png", raw, "image/png"))
        at.run()
        assert not at.exception
        assert "Risk tier:" in page_text(at)


def test_example_case_from_dataset_folder(tiny_model, tmp_path):
    data = write_dataset(tmp_path / "data", per_class=2, size=(200, 150))
    at = _app()
    at.run()
    at.radio(key="source").set_value("Example case from a dataset").run()
    assert "set the dataset folder" in page_text(at)
    at.text_input(key="data_dir").set_value(str(data)).run()          # the sidebar setting, as a user types it
    at.radio(key="source").set_value("Upload a photo").run()          # the widget is not drawn on this view ...
    at.radio(key="source").set_value("Example case from a dataset").run()
    assert at.text_input(key="data_dir").value == str(data)           # ... and the setting is kept
    assert not at.exception, at.exception
    assert "Risk tier:" in page_text(at)
    at.checkbox(key="reveal").check().run()
    assert "Recorded diagnosis" in page_text(at)


def test_case_link_opens_example(tiny_model, tmp_path):
    data = write_dataset(tmp_path / "data", per_class=2, size=(200, 150))
    at = _app()
    at.session_state["data_dir_value"] = str(data)
    at.query_params["case"] = "mel_001"
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="example").value == "mel_001"
    assert "Risk tier:" in page_text(at)


def test_broken_model_falls_back_with_message(tiny_model, monkeypatch, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    at = _app()
    at.session_state["model_path"] = str(bad)
    at.run()
    assert "was refused" in " ".join(e.value for e in at.error)
