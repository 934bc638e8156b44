import json

import pytest
import torch

from conftest import tiny_card
from derm_core.data.taxonomy import load_taxonomy
from derm_core.model.card import FORMAT_VERSION
from derm_core.model.checkpoint import ModelError, load_model, read_card, save_model
from derm_core.model.networks import create_model


@pytest.fixture
def saved(tmp_path, ham7):
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none").eval()
    return model, save_model(model, tiny_card(ham7), tmp_path / "m" / "model")


def test_round_trip_is_exact(saved):
    model, path = saved
    loaded, card = load_model(path)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert card.classes == load_taxonomy("ham7").classes and card.use_metadata
    assert load_model(path.parent)[1].path == path  # a run folder works too
    assert load_model(path.with_suffix(".safetensors"))[1].path == path


def test_weights_file_is_not_a_pickle(saved):
    _, path = saved
    head = path.with_suffix(".safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION


def test_truncated_weights_refused(saved):
    _, path = saved
    w = path.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_model(path)


def test_wrong_class_count_refused(saved, ham7):
    _, path = saved
    card = json.loads(path.read_text())
    han = load_taxonomy("han12")
    card["taxonomy"] = han.to_dict()
    card["thresholds"]["classes"] = {c: 0.5 for c in han.classes}
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="12 classes"):
        load_model(path)


def test_wrong_metadata_flag_refused(saved):
    _, path = saved
    card = json.loads(path.read_text())
    card["use_metadata"] = False
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="unexpected"):
        load_model(path)


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ("[]", "not a JSON object"),
                                           ('{"arch": "tiny_test"}', "lacks")])
def test_bad_cards_refused(saved, text, message):
    _, path = saved
    path.write_text(text)
    with pytest.raises(ModelError, match=message):
        read_card(path)


def test_thresholds_for_wrong_classes_refused(saved):
    _, path = saved
    card = json.loads(path.read_text())
    del card["thresholds"]["classes"]["mel"]
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="thresholds are for classes"):
        read_card(path)


def test_missing_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        read_card(tmp_path / "nope.json")
