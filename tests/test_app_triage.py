"""The triage page, run headless with Streamlit's AppTest on a tiny untrained model."""
import io
import re
from dataclasses import replace

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
    assert not re.search(r"\*\* — (Low risk|High risk|Dangerous):", text), "the banner says the tier once"
    assert "Biopsy site at x=" in text
    assert "no clinical data given" in text
    assert at.get("download_button")  # the case report
    assert re.search(r"Skin tone around the lesion:\*\* (very light|light|intermediate|tan|brown|dark) \(ITA -?\d+°\)",
                     text), "the skin-tone estimate is shown beside the tier"
    assert "training photos" in text or "no skin-tone counts" in text


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


# ----------------------------------------------------------------------------- issue 17
@pytest.mark.parametrize("tiers, tier", [({"high-risk": 1.0, "dangerous": 0.0}, "dangerous"),
                                         ({"high-risk": 0.0, "dangerous": 1.0}, "high-risk"),
                                         ({"high-risk": 1.0, "dangerous": 1.0}, "low-risk")])
def test_the_tier_says_why_under_its_banner(tiny_model, ham7, tiers, tier):
    from derm_core.triage.rules import Thresholds, describe_tier_rule
    card = tiny_card(ham7)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    save_model(model, card.with_(thresholds=Thresholds(dict(card.thresholds.classes), tiers, "test")),
               tiny_model.with_suffix(""))          # the page's model, with these tier thresholds
    at = _app().run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["mel"], (200, 150))), "image/png"))
    at.run()
    assert not at.exception, at.exception
    md = [m.value for m in at.markdown]
    i = next(k for k, m in enumerate(md) if m.startswith("**Why this tier:**"))
    reason = md[i].removeprefix("**Why this tier:** ")
    assert f"**Risk tier: {tier}**" in " ".join(e.value for e in [*at.success, *at.warning, *at.error])
    assert reason.endswith(f": {tier}") or f": {tier} (" in reason
    assert ("No tier threshold reached" in reason) == (tier == "low-risk")
    assert describe_tier_rule(ham7, tiers) in page_text(at)          # the tier chart's caption: what the bars are


@pytest.fixture
def indexed_setup(tmp_path, ham7, monkeypatch):
    """A tiny model with a split file over a tiny synthetic dataset (so it has training images to index)."""
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import make_splits, save_splits
    from derm_core.model.checkpoint import read_card
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    path = save_model(model, tiny_card(ham7), tmp_path / "model" / "model")
    data = write_dataset(tmp_path / "data", per_class=3, size=(80, 60))
    card = read_card(path)
    table = load_table(data, card.taxonomy)
    split = make_splits(table, seed=0)
    save_splits(table, split, card.split_file)
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(path))
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    return card, data, int(split.isin(["train", "val"]).sum())


def _thumbnails(at) -> list[str]:
    return [i.caption for e in at.get("image") for i in e.proto.imgs if "similarity" in str(i.caption)]


def test_similar_cases_appear_in_the_same_session_right_after_indexing(indexed_setup):
    card, data, n = indexed_setup
    at = _app().run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["mel"], (200, 150))), "image/png"))
    at.run()
    assert not at.exception, at.exception
    assert "Set the dataset folder in the sidebar" in page_text(at)
    at.text_input(key="data_dir").set_value(str(data)).run()     # the field is in the sidebar in upload mode too
    assert not at.exception, at.exception
    assert "not indexed yet" in page_text(at) and f"Index {n} images" in [b.label for b in at.button]
    at.button(key="similar_build").click().run()
    assert not at.exception, at.exception
    assert len(_thumbnails(at)) == 6
    assert "not indexed yet" not in page_text(at) and "similar_build" not in [b.key for b in at.button]
    at.slider(key="similar_k").set_value(4).run()                 # any later run: still there, no Index button
    assert len(_thumbnails(at)) == 4 and "not indexed yet" not in page_text(at)
    again = _app()                                                # a new session too
    again.session_state["data_dir_value"] = str(data)
    again.run()
    again.file_uploader[0].set_value(("l.png", _png(lesion_image(CLASS_COLOURS["nv"], (200, 150))), "image/png"))
    again.run()
    assert len(_thumbnails(again)) == 6


def test_an_index_built_by_another_session_shows_on_the_next_run(indexed_setup):
    from derm_core.explain import similar
    card, data, n = indexed_setup
    at = _app()
    at.session_state["data_dir_value"] = str(data)
    at.run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["mel"], (200, 150))), "image/png"))
    at.run()
    assert "not indexed yet" in page_text(at)            # this answer is now cached for the model and folder
    build = similar.start_index_build(card, data, n)     # another tab clicks "Index"
    assert build.wait(120) and build.error is None and build.done == build.total == n
    assert similar.start_index_build(card, data, n) is not build          # a finished build can be redone
    similar.index_build(card, data).wait(120)
    at.run()
    assert not at.exception, at.exception
    assert len(_thumbnails(at)) == 6 and "not indexed yet" not in page_text(at)


def _biased_model(tmp_path, ham7, monkeypatch, bias: dict[str, float], male: str | None = None,
                  thresholds: dict[str, float] | None = None) -> list[str]:
    """A tiny model that ignores the photo: its class scores are ``bias``, plus 10 for ``male``'s
    class when the patient is male, with class ``thresholds`` changed from the tiny card's 30%.
    Set as the page's model; returns the class order."""
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    classes, n = list(ham7.classes), model.head[1].in_features - model.meta[2].out_features
    with torch.no_grad():
        for layer in (model.meta[0], model.meta[2], model.head[1]):
            layer.weight.zero_()
            layer.bias.zero_()
        model.meta[0].weight[0, 2] = 1.0        # metadata unit 0: "sex male" (encode: [age, missing, male, ...])
        model.meta[2].weight[0, 0] = 1.0
        if male:
            model.head[1].weight[classes.index(male), n] = 10.0
        for c, b in bias.items():
            model.head[1].bias[classes.index(c)] = b
    card = tiny_card(ham7)
    card = card.with_(thresholds=replace(card.thresholds, classes={**card.thresholds.classes, **(thresholds or {})}))
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(save_model(model, card, tmp_path / "model" / "model")))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    return classes


def _captions(at) -> list[str]:
    return [i.caption for e in at.get("image") for i in e.proto.imgs]


def test_explain_class_follows_a_new_top_class_but_keeps_a_users_choice(tmp_path, ham7, monkeypatch):
    """Top class bkl without clinical data, mel for a male patient: giving the sex moves the
    Grad-CAM's class to mel (it kept bkl while LIME followed mel); a class the user picks stays
    picked while the top class does not change."""
    classes = _biased_model(tmp_path, ham7, monkeypatch, {"bkl": 5.0}, male="mel")
    at = _app().run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["nv"], (200, 150))), "image/png"))
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cam_class").value == classes.index("bkl")
    at.selectbox(key="cam_class").set_value(classes.index("nv")).run()        # the user's own choice ...
    at.number_input(key="age").set_value(40).run()                             # ... survives a change of age
    assert at.selectbox(key="cam_class").value == classes.index("nv")
    at.selectbox(key="sex").set_value("male").run()                            # a new top class: explained
    assert not at.exception, at.exception
    assert at.selectbox(key="cam_class").value == classes.index("mel")
    assert any(c.startswith("Grad-CAM for Melanoma") for c in _captions(at)), _captions(at)
    assert any(c.startswith("Green supports, red opposes Melanoma") for c in _captions(at)), _captions(at)


def test_lime_and_the_biopsy_site_explain_the_most_urgent_class_of_the_differential(tmp_path, ham7, monkeypatch):
    """Nevus 58% and melanoma 39% (both over their 30% thresholds): Grad-CAM starts on the nevus,
    LIME and the biopsy site explain the melanoma, and the page says so."""
    _biased_model(tmp_path, ham7, monkeypatch, {"nv": 5.0, "mel": 4.6})
    at = _app().run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["nv"], (200, 150))), "image/png"))
    at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "LIME explains **Melanoma**, the most urgent class in the differential" in text
    assert any(c.startswith("Grad-CAM for Melanocytic nevus") for c in _captions(at)), _captions(at)
    assert any(c.startswith("Green supports, red opposes Melanoma") for c in _captions(at)), _captions(at)


def test_a_most_likely_class_outside_the_differential_says_why(tmp_path, ham7, monkeypatch):
    """Nevus 58% under its own 71% threshold, melanoma 39% over 30%: the differential is melanoma
    and the most-likely line says why the nevus is not in it."""
    _biased_model(tmp_path, ham7, monkeypatch, {"nv": 5.0, "mel": 4.6}, thresholds={"nv": 0.714})
    at = _app().run()
    at.file_uploader[0].set_value(("lesion.png", _png(lesion_image(CLASS_COLOURS["nv"], (200, 150))), "image/png"))
    at.run()
    assert not at.exception, at.exception
    assert [m.value for m in at.markdown if m.value.startswith("- **")] == ["- **Melanoma** (mel): 39.3%"]
    assert ("Most likely diagnosis: **Melanocytic nevus** (under its own threshold of 71.4%, so not in the "
            "differential)") in page_text(at)
