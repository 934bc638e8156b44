"""The shipped default model: loadable without pickle, documented, and reproducible."""
import json

import pytest

from derm_core.cli import main
from derm_core.model.checkpoint import load_model
from derm_core.settings import SHIPPED_MODEL


def test_default_model_loads_and_card_is_complete():
    model, card = load_model()  # no path: the shipped default
    assert card.path == SHIPPED_MODEL
    d = card.to_json()
    assert d["arch"] == "tf_efficientnet_lite0" and len(card.classes) == 7
    assert d["training"]["command"].startswith("python -m derm_core train")
    assert d["training"]["wall_time_s"] > 0
    assert "CC BY-NC-SA" in d["training"]["data"]["license"]
    assert (card.path.parent / d["training"]["split_file"]).is_file()
    test = d["metrics"]["test"]
    assert test["n_images"] > 1000
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        assert 0 < test[key] <= 1
    assert d["out_of_scope"]["report"]["auroc_feature"] > 0.5


def test_evaluate_reproduces_the_card(ham_dir, tmp_path):
    """`evaluate --split test` gives the numbers the card reports."""
    _, card = load_model()
    out = tmp_path / "report.json"
    assert main(["evaluate", "--data", str(ham_dir), "--split", "test", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    want = card.metrics["test"]
    assert rep["n_images"] == want["n_images"]
    for key in ("accuracy", "balanced_accuracy", "macro_auc", "ece"):
        assert rep[key] == pytest.approx(want[key], abs=2e-3), key
    assert rep["per_class"]["mel"]["auc"] == pytest.approx(want["per_class"]["mel"]["auc"], abs=2e-3)
