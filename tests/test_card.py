"""The typed model card: JSON round trip, migration, field-named errors, one identity, one writer."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_card
from derm_core.model import ood
from derm_core.model.card import FORMAT_VERSION, ModelCard, migrate
from derm_core.model.checkpoint import ModelError, read_card, save_model, write_card
from derm_core.model.networks import create_model
from derm_core.settings import SHIPPED_MODEL


def test_shipped_card_round_trips_unchanged():
    card = read_card()
    assert card.format_version == FORMAT_VERSION
    raw = json.loads(SHIPPED_MODEL.read_text())
    assert card.to_json() == raw                                   # nothing lost, nothing added
    assert ModelCard.from_json(card.to_json(), card.path) == card
    assert card.tta and card.input_size == (150, 200) and card.balanced_rule is not None
    assert card.out_of_scope.score == ood.SCORE and card.training.command.startswith("python -m derm_core train")


def test_fields_this_version_does_not_know_are_kept(ham7):
    d = tiny_card(ham7).to_json()
    d["license"] = "CC BY 4.0"
    d["preprocessing"]["crop_pct"] = 0.9
    card = ModelCard.from_json(d)
    assert card.extra == {"license": "CC BY 4.0"} and card.preprocessing.extra == {"crop_pct": 0.9}
    assert card.with_(temperature=2.0).to_json() == {**d, "temperature": 2.0}
    card.to_json()["preprocessing"]["crop_pct"] = 0.1                # a copy: the card is not changed
    assert card.preprocessing.extra == {"crop_pct": 0.9}


def test_a_version_1_card_is_migrated(ham7):
    v1 = {k: v for k, v in tiny_card(ham7).to_json().items() if k != "format_version"}
    v1["preprocessing"].pop("tta")
    v1["thresholds"].pop("name")
    v1["classes"] = list(ham7.classes)                              # version 1 repeated the class list
    card = ModelCard.from_json({**v1, "format_version": 1})
    assert card.format_version == FORMAT_VERSION and card.tta is False and card.thresholds.name == "model default"
    assert "classes" not in card.to_json() and card.to_json()["format_version"] == FORMAT_VERSION
    assert ModelCard.from_json(v1) == card                          # no version at all: version 1
    assert v1["classes"] and "tta" not in v1["preprocessing"]      # the input is not changed
    with pytest.raises(ModelError, match="format version 99"):
        migrate({**v1, "format_version": 99})
    with pytest.raises(ModelError, match="'format_version'"):
        migrate({**v1, "format_version": "two"})


@pytest.mark.parametrize("field, value, named", [
    ("temperature", "warm", "temperature"),
    ("use_metadata", "yes", "use_metadata"),
    ("thresholds", {"classes": {}, "tiers": {}}, "thresholds"),
    ("decision_rules", {"balanced": {"tau": 1}}, "decision_rules.balanced"),
    ("metrics", [1, 2], "metrics"),
    ("recalibrations", {"a": 1}, "recalibrations"),
])
def test_errors_name_the_file_and_the_field(ham7, tmp_path, field, value, named):
    path = tmp_path / "model.json"
    with pytest.raises(ModelError) as e:
        ModelCard.from_json({**tiny_card(ham7).to_json(), field: value}, path)
    assert str(path) in str(e.value) and named in str(e.value)


def test_the_one_writer_and_changes_make_new_cards(ham7, tmp_path):
    model = create_model("tiny_test", 7, True, pretrained="none")
    path = save_model(model, tiny_card(ham7).with_(name="tiny", version="v1"), tmp_path / "m" / "model")
    card = read_card(path)
    assert card.weights_path == path.with_suffix(".safetensors") and card.name == "tiny"
    warmer = card.with_(temperature=2.0)
    assert card.temperature == 1.0 and warmer.temperature == 2.0      # frozen: a change is a new card
    with pytest.raises(AttributeError):
        card.temperature = 3.0
    write_card(warmer)
    assert read_card(path).temperature == 2.0
    with pytest.raises(ModelError, match="no file"):
        write_card(tiny_card(ham7))


def test_one_identity_for_profiles_studies_and_caches(ham7, tmp_path):
    model = create_model("tiny_test", 7, True, pretrained="none")
    card = read_card(save_model(model, tiny_card(ham7), tmp_path / "m" / "model"))
    ident = card.identity()
    assert ident.weights_sha256 == card.weights_sha256() and len(ident.weights_sha256) == 64
    assert ident.to_dict()["temperature"] == 1.0 and ident.to_dict()["taxonomy"] == "ham7"
    warmer = card.with_(temperature=2.0).identity()
    assert warmer.network_key == ident.network_key            # recalibrating keeps cached logits valid ...
    assert warmer.key != ident.key                            # ... but not calibrated results
    assert tiny_card(ham7).identity().weights_sha256 is None  # a card without files still has an identity
