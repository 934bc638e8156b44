"""The tier explains itself (issue 17): one line with the score and threshold that decided it, made in
one place (rules.explain_tier) and shown the same in the result, ``predict --json`` and its text output.
Every tier is covered, and the boundary: a score exactly at its threshold reaches it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import CLASS_COLOURS, lesion_image, tiny_card
from derm_core.cli import main
from derm_core.model.checkpoint import save_model
from derm_core.model.networks import create_model
from derm_core.triage.rules import (
    Thresholds,
    assign_tiers,
    describe_tier_rule,
    explain_tier,
    tier_at_or_above,
    triage,
)

CLASS_THR = 0.1


def _probs(tax, **p) -> np.ndarray:
    """Class probabilities: the named classes as given, the rest on ``nv`` (low-risk)."""
    out = np.array([p.get(c, 0.0) for c in tax.classes])
    out[tax.classes.index("nv")] += 1.0 - out.sum()
    return out


@pytest.fixture
def thr(ham7):
    # binary fractions, so sums of probabilities land exactly on them
    return Thresholds({c: CLASS_THR for c in ham7.classes}, {"high-risk": 0.25, "dangerous": 0.125}, "test")


def test_each_tier_says_which_score_and_threshold_decided_it(ham7, thr):
    dangerous = triage(_probs(ham7, mel=0.5), ham7, thr)
    assert dangerous.tier == "dangerous"
    assert dangerous.tier_reason == "P(dangerous) 50.0% ≥ threshold 12.5%: dangerous"
    high = triage(_probs(ham7, mel=0.0625, bcc=0.25), ham7, thr)
    assert high.tier == "high-risk"
    assert high.tier_reason == ("P(high-risk or worse) 31.2% ≥ threshold 25.0%: high-risk "
                                "(P(dangerous) 6.2% < threshold 12.5%)")
    low = triage(_probs(ham7, mel=0.0625, akiec=0.0625), ham7, thr)
    assert low.tier == "low-risk"
    assert low.tier_reason == ("No tier threshold reached (P(dangerous) 6.2% < threshold 12.5%; "
                               "P(high-risk or worse) 12.5% < threshold 25.0%): low-risk")


def test_a_score_exactly_at_its_threshold_reaches_it(ham7, thr):
    at_dangerous = triage(_probs(ham7, mel=0.125), ham7, thr)
    assert at_dangerous.tier == "dangerous"
    assert at_dangerous.tier_reason == "P(dangerous) 12.5% ≥ threshold 12.5%: dangerous"
    at_high = triage(_probs(ham7, mel=0.0625, bcc=0.1875), ham7, thr)        # 0.0625 + 0.1875 = 0.25 exactly
    assert at_high.tier == "high-risk"
    assert at_high.tier_reason.startswith("P(high-risk or worse) 25.0% ≥ threshold 25.0%: high-risk")


def test_values_that_round_alike_are_printed_apart(ham7):
    thr = Thresholds({c: CLASS_THR for c in ham7.classes}, {"high-risk": 0.9, "dangerous": 0.05}, "test")
    reason = explain_tier(_probs(ham7, mel=0.04996), ham7, thr.tiers)
    assert "P(dangerous) 4.996% < threshold 5.000%" in reason and reason.endswith(": low-risk")


def test_the_reason_always_names_the_tier_assign_tiers_gives(ham7):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(len(ham7.classes), 0.3), size=300)
    for tiers in ({"high-risk": 0.08, "dangerous": 0.05}, {"high-risk": 0.5, "dangerous": 0.3}):
        expected = assign_tiers(probs, ham7, tiers)
        at = tier_at_or_above(probs, ham7)
        for p, k, a in zip(probs, expected, at):
            reason = explain_tier(p, ham7, tiers)
            assert reason.endswith(f": {ham7.tier_names[k]}") or f": {ham7.tier_names[k]} (" in reason, reason
            assert f"{a[k]:.1%}" in reason or k == 0
            assert explain_tier(dict(zip(ham7.classes, p)), ham7, tiers) == reason   # a dict by class, the same
    caption = describe_tier_rule(ham7, {"high-risk": 0.079, "dangerous": 0.043})
    assert "P(dangerous) ≥ 4.3%: dangerous" in caption and "P(high-risk or worse) ≥ 7.9%: high-risk" in caption


def test_result_dict_has_the_reason_and_a_withheld_result_none(ham7, thr):
    result = triage(_probs(ham7, mel=0.5), ham7, thr)
    assert result.to_dict()["tier_reason"] == result.tier_reason
    withheld = result.withhold("it is a cat")
    assert withheld.tier_reason == "" and withheld.to_dict()["tier_reason"] is None


# ------------------------------------------------------------------------------ predict --json
@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    from derm_core.data.taxonomy import load_taxonomy
    root = tmp_path_factory.mktemp("tier_reason")
    ham7 = load_taxonomy("ham7")
    torch.manual_seed(0)
    model = create_model("tiny_test", 7, use_metadata=True, pretrained="none")
    img = root / "x.png"
    lesion_image(CLASS_COLOURS["mel"], (200, 150)).save(img)
    return root, ham7, model, img


def _predict(capsys, img, card_path, *extra) -> dict | str:
    assert main(["predict", str(img), "--model", str(card_path), "--crop", "none", *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in extra else out


def test_predict_json_gives_the_reason_for_each_tier_and_at_the_boundary(cli_model, capsys):
    root, ham7, model, img = cli_model
    card = tiny_card(ham7)
    first = _predict(capsys, img, save_model(model, card, root / "base" / "model"), "--json")
    at = tier_at_or_above(np.array([first["probabilities"][c] for c in ham7.classes]), ham7)[0]
    cases = {   # tier thresholds -> the tier they must give
        "dangerous": {"high-risk": 1.0, "dangerous": float(at[2])},           # exactly at the threshold
        "high-risk": {"high-risk": float(at[1]), "dangerous": 1.0},           # exactly at the threshold
        "low-risk": {"high-risk": 1.0, "dangerous": 1.0},
        "high-risk, just above": {"high-risk": float(np.nextafter(at[1], 0)), "dangerous": 1.0},
        "low-risk, just below": {"high-risk": float(np.nextafter(at[1], 1)), "dangerous": 1.0},
    }
    for name, tiers in cases.items():
        tier = name.split(",")[0]
        c = card.with_(thresholds=Thresholds(dict(card.thresholds.classes), tiers, name))
        path = save_model(model, c, root / name.replace(" ", "_").replace(",", "") / "model")
        out = _predict(capsys, img, path, "--json")
        assert out["risk_tier"] == tier, (name, out["risk_tier"], at)
        assert out["tier_reason"] == explain_tier(out["probabilities"], ham7, tiers)
        assert out["tier_reason"].endswith(f": {tier}") or f": {tier} (" in out["tier_reason"]
        if tier == "low-risk":
            assert out["tier_reason"].startswith("No tier threshold reached")
        else:
            assert "≥ threshold" in out["tier_reason"]
        text = _predict(capsys, img, path)
        assert f"risk tier: {tier}" in text and f"because {out['tier_reason']}" in text
