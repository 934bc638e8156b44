"""Issue 12 on the triage page (AppTest, tiny model): prediction set with its sentence, map checks,
similar cases from the model's training data, and the numbers in the case report."""
import io

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import CLASS_COLOURS, ROOT, lesion_image, page_text, tiny_card, write_dataset
from derm_core.data.dataset import load_table
from derm_core.data.splits import make_splits, save_splits
from derm_core.model import conformal as C
from derm_core.model.checkpoint import read_card, save_model
from derm_core.model.networks import create_model


@pytest.fixture
def setup(tmp_path, ham7, monkeypatch):
    """A tiny model with a split file over a synthetic dataset, calibrated on its validation split."""
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    path = save_model(model, tiny_card(ham7), tmp_path / "model" / "model")
    data = write_dataset(tmp_path / "data", per_class=6, size=(200, 150))
    card = read_card(path)
    table = load_table(data, card.taxonomy)
    split = make_splits(table, seed=0)
    save_splits(table, split, card.split_file)
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(path))
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DERMTRIAGE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    return path, data, card, table, split.to_numpy()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["lime_samples"] = 50
    return at


def _upload(at):
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["mel"], (200, 150))), "image/png"))
    return at.run()


def test_prediction_set_map_checks_and_similar_cases(setup):
    path, data, card, table, split = setup
    at = _upload(_app().run())
    assert not at.exception, at.exception
    text = page_text(at)
    assert "No prediction set: this model has no conformal calibration" in text
    assert "Map check (Grad-CAM" in text and "Map check (LIME" in text
    assert "Set the dataset folder" in text

    cal = C.fit_for_model(card, table, split)
    at = _app()
    at.session_state["data_dir_value"] = str(data)
    _upload(at.run())
    assert not at.exception, at.exception
    text = page_text(at)
    assert "on photos like the validation set, the true diagnosis is in this set 90% of the time" in text.lower() or \
        "No diagnosis is plausible" in text
    # the set shown is the calibration's set for the page's own probabilities
    at.select_slider(key="conformal_level").set_value(0.99).run()
    assert "99% of the time" in page_text(at) or "No diagnosis" in page_text(at)
    assert cal.n == C.load_calibration(card).n
    # similar cases: not indexed yet, then built on request and shown as thumbnails with diagnoses
    n_index = int(((split == "train") | (split == "val")).sum())
    assert f"Index {n_index} images" in [b.label for b in at.button]
    at.button(key="similar_build").click().run()
    assert not at.exception, at.exception
    imgs = [e for e in at.get("image") if any("similarity" in str(getattr(i, "caption", "")) for i in e.proto.imgs)]
    assert imgs, "similar-case thumbnails"
    captions = [i.caption for i in imgs[0].proto.imgs]
    assert len(captions) == 6 and all("similarity" in c for c in captions)
    assert any(name in captions[0] for name in card.taxonomy.display_names.values())


def test_a_stale_calibration_is_refused_with_the_reason(setup):
    path, data, card, table, split = setup
    C.fit_for_model(card, table, split)
    d = C.load_calibration(card).to_dict()
    d["source"]["temperature"] = 3.0
    C.calibration_path(card).write_text(__import__("json").dumps(d))
    at = _upload(_app().run())
    assert not at.exception, at.exception
    assert "made at temperature 3.0" in page_text(at)
