"""The shipped bundle (weights/default) belongs together: one identity, a sheet equal to its reports,
a card that `evaluate` reproduces, and a README that states no figure the bundle does not."""
from __future__ import annotations

import json
import re

import pytest

from derm_core.cli import main
from derm_core.evaluate.sheet import SHEET, model_sheet
from derm_core.model import conformal, ood
from derm_core.model.checkpoint import read_card
from derm_core.settings import SHIPPED_MODEL
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def card():
    return read_card(SHIPPED_MODEL)


def test_every_artifact_belongs_to_the_weights(card):
    sha = card.identity().weights_sha256
    cal = conformal.load_calibration(card)          # raises ConformalError for other weights or temperature
    assert cal is not None and cal.source["weights_sha256"] == sha
    det, note = ood.load_detector_checked(card)
    assert det is not None and note is None and card.out_of_scope.score == ood.SCORE
    for name in ("val", "test"):
        rep = json.loads((card.path.parent / f"report_{name}.json").read_text())
        assert rep["model_identity"] == {"weights_sha256": sha, "temperature": card.temperature}, name
        assert rep["conformal"] and "error" not in rep["conformal"]
        for key in ("accuracy", "balanced_accuracy", "macro_auc", "ece"):
            assert card.metrics[name][key] == rep[key], (name, key)
    assert card.extra["release"]["command"].startswith("python -m derm_core release")


def test_the_sheet_is_generated_from_the_bundle(card):
    assert (card.path.parent / SHEET).read_text(encoding="utf-8") == model_sheet(card), \
        "weights/default/MODEL.md is stale: re-run the release command"


def test_the_gate_and_the_prediction_sets_meet_their_targets(card):
    r = card.out_of_scope.report
    assert r["lesions_flagged"] <= 0.03 and r["non_lesion_flagged"] >= 0.95
    test = json.loads((card.path.parent / "report_test.json").read_text())["conformal"]
    assert test["mean_set_size"] <= 2.0
    for c, v in test["per_class"].items():
        if v["n"] >= 30:
            assert v["coverage"] >= 0.87, c


def test_the_outline_network_belongs_to_the_bundle_and_is_used(card):
    """The lesion-outline network was trained on this bundle's split, its weights are the ones its
    card names, and the crop rule uses it by default."""
    from derm_core.explain import lesion
    from derm_core.explain.outline import CARD, Outline
    from derm_core.model.card import file_sha256
    net = Outline.load(card.path.parent / CARD)         # raises for weights its card does not describe
    assert net.card["training"]["split_sha256"] == file_sha256(card.split_file)
    assert net.card["training"]["split_file"] == card.split_file.name
    assert lesion.outline_network() is not None and lesion.outline_network().path == net.path
    for split in ("val", "test"):
        m = net.card["metrics"][split]
        assert m["n"] > 1000 and m["iou_at_least_0.6"] >= 0.9, split   # issue 16's target, on dermoscopy


def test_the_suggested_crop_reproduces_the_outline_cards_figures(card, ham_dir):
    """The crop figures in the outline card (and so in MODEL.md) are what the code gives today."""
    import numpy as np

    from derm_core.data.dataset import load_table
    from derm_core.data.splits import load_splits
    from derm_core.explain.lesion import box_agreement, outline_network
    table = load_table(ham_dir, card.taxonomy)
    test = table[(load_splits(table, card.split_file) == "test").to_numpy()]
    sample = test.iloc[np.random.default_rng(0).choice(len(test), 150, replace=False)]
    got = box_agreement(sample)
    want = outline_network().card["metrics"]["test"]["iou_at_least_0.6"]
    assert got["n"] == 150 and abs(got["iou_at_least_0.6"] - want) <= 0.06, (got, want)


def test_readme_states_no_shipped_figure_by_hand(card):
    """The README points at the sheet; the calibration figures it used to copy are not typed there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "weights/default/MODEL.md" in readme
    shipped = readme[readme.index("## The shipped model"):readme.index("\n## ", readme.index("## The shipped model") + 5)]
    assert not re.search(r"\b0\.\d{3}\b", shipped), "figures about the shipped model belong in MODEL.md"


def test_evaluate_reproduces_the_card(card, ham_dir, tmp_path):
    """`evaluate --split test` gives the numbers the card reports, and its prediction sets are usable."""
    out = tmp_path / "report.json"
    assert main(["evaluate", "--data", str(ham_dir), "--split", "test", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    want = card.metrics["test"]
    assert rep["n_images"] == want["n_images"]
    for key in ("accuracy", "balanced_accuracy", "macro_auc", "ece"):
        assert rep[key] == pytest.approx(want[key], abs=2e-3), key
    assert rep["per_class"]["mel"]["auc"] == pytest.approx(want["per_class"]["mel"]["auc"], abs=2e-3)
    assert "error" not in rep["conformal"]
