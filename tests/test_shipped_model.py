"""The shipped default model: loadable without pickle, documented, and reproducible."""
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
    assert d["out_of_scope"]["report"]["auroc"] > 0.9
