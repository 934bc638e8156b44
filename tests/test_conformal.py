"""Conformal prediction sets: checked against crepes (test-only reference), coverage, storage."""
from __future__ import annotations

import json

import numpy as np
import pytest
from crepes import ConformalClassifier

from derm_core.model import conformal as C

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _fake(n, seed=0, rare=(3, 6)):
    """Labels with imbalanced classes and noisy, informative probabilities (a Dirichlet-ish model)."""
    rng = np.random.default_rng(seed)
    w = np.array([3, 5, 11, 1, 11, 67, 2], float)
    y = rng.choice(7, n, p=w / w.sum())
    logits = rng.normal(0, 1.0, (n, 7))
    logits[np.arange(n), y] += rng.normal(1.6, 1.0, n)
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_sets_equal_crepes_mondrian_classifier(level):
    y_cal, p_cal = _fake(800, seed=1)
    y_te, p_te = _fake(500, seed=2)
    cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
    ours = cal.sets(p_te, level)
    ours_p = cal.p_values(p_te)
    # crepes: Mondrian (class-conditional) conformal classifier, the categories being the labels;
    # every candidate class k of a test photo is scored in category k
    a_cal = 1.0 - p_cal[np.arange(len(y_cal)), y_cal]
    cc = ConformalClassifier().fit(a_cal, bins=y_cal)
    for k in range(7):
        bins = np.full(len(p_te), k)
        ref_p = cc.predict_p(1.0 - p_te[:, k], bins=bins, smoothing=False)
        ref_set = cc.predict_set(1.0 - p_te[:, k], bins=bins, confidence=level, smoothing=False)
        np.testing.assert_allclose(ours_p[:, k], np.ravel(ref_p), rtol=0, atol=1e-12)
        # crepes compares p >= 1 - confidence in floating point, where 1 - 0.95 = 0.05000000000000004
        # leaves out a p-value of exactly 1/20; mathematically (and here) it is in the set
        tie = np.isclose(np.ravel(ref_p), 1.0 - level, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(ours[~tie, k], np.ravel(ref_set).astype(bool)[~tie])
        assert ours[tie, k].all()
    assert 1.0 < ours.sum(1).mean() < 7.0   # neither trivial nor empty


def test_coverage_holds_per_class_on_exchangeable_data():
    y_cal, p_cal = _fake(4000, seed=3)
    y_te, p_te = _fake(4000, seed=4)
    cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
    r = C.evaluate(cal, y_te, p_te, 0.9)
    assert r["coverage"] >= 0.88
    for c, v in r["per_class"].items():
        if v["n"] >= 100:
            assert v["coverage"] >= 0.85, (c, v)
    assert sum(r["set_size_counts"]) == len(y_te)
    assert r["mean_set_size"] == pytest.approx(np.dot(np.arange(8), r["set_size_counts"]) / len(y_te))
    # higher level -> sets never shrink
    small, big = cal.sets(p_te, 0.8), cal.sets(p_te, 0.95)
    assert not (small & ~big).any()
    curve = C.coverage_curve(cal, y_te, p_te, [0.5, 0.7, 0.9])
    assert curve["coverage"] == sorted(curve["coverage"]) and curve["coverage"][-1] == pytest.approx(r["coverage"])


def test_rare_class_is_always_in_the_set_when_too_few_to_calibrate():
    y = np.array([0] * 50 + [1] * 5)
    p = np.tile([0.9, 0.1], (55, 1))
    cal = C.Calibration.fit(y, p, ("a", "b"))
    # 5 calibration photos: the smallest p-value is 1/6 > 0.1, so "b" is in every 90% set
    assert cal.sets(np.array([[0.999, 0.001]]), 0.9)[0, 1]
    assert cal.prediction_set({"a": 0.999, "b": 0.001}, 0.9) == ["a", "b"]
    # a class with no calibration photo at all is always in the set too
    cal0 = C.Calibration.fit(np.zeros(20, int), np.tile([0.9, 0.1], (20, 1)), ("a", "b"))
    assert cal0.n == {"a": 20, "b": 0} and cal0.sets(np.array([[1.0, 0.0]]), 0.99)[0, 1]


def test_prediction_set_order_text_and_empty_sets():
    y_cal, p_cal = _fake(600, seed=5)
    cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
    row = p_cal[0]
    s = cal.prediction_set(row, 0.9)
    probs = dict(zip(CLASSES, row))
    assert [probs[c] for c in s] == sorted((probs[c] for c in s), reverse=True)
    text = C.describe(s, 0.9, {c: c.upper() for c in CLASSES})
    assert "90% of the time" in text and "on photos like the validation set" in text.lower()
    assert all(c.upper() in text for c in s)
    assert "No diagnosis" in C.describe([], 0.9)
    with pytest.raises(ValueError):
        cal.sets(p_cal, 1.0)
    # a uniform photo at a low level: every class too implausible for its own calibration -> empty set
    assert cal.prediction_set(np.full(7, 1 / 7), 0.5) == []


def test_storage_round_trip_and_refusal(tmp_path, ham7, tiny_predictor):
    from derm_core.model.checkpoint import read_card, save_model

    path = save_model(tiny_predictor.model, tiny_predictor.card, tmp_path / "m" / "model")
    card = read_card(path)
    y, p = _fake(300, seed=6)
    assert C.load_calibration(card) is None
    cal = C.Calibration.fit(y, p, card.classes, {"weights_sha256": card.weights_sha256(),
                                                 "temperature": card.temperature})
    C.calibration_path(card).write_text(json.dumps(cal.to_dict()))
    back = C.load_calibration(card)
    np.testing.assert_array_equal(back.sets(p, 0.9), cal.sets(p, 0.9))
    # another temperature or other weights: refused with the reason
    card = card.with_(temperature=2.0)
    with pytest.raises(C.ConformalError, match="temperature"):
        C.load_calibration(card)
    card = card.with_(temperature=1.0)
    bad = cal.to_dict()
    bad["source"]["weights_sha256"] = "0" * 64
    with pytest.raises(C.ConformalError, match="other model weights"):
        C.load_calibration(card, bad)
    with pytest.raises(C.ConformalError):
        C.Calibration.from_dict({"format": "something else"})


def test_fit_for_model_on_its_validation_split(tmp_path, synthetic_data, tiny_predictor, monkeypatch):
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import make_splits
    from derm_core.model.checkpoint import read_card, save_model

    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    path = save_model(tiny_predictor.model, tiny_predictor.card, tmp_path / "m" / "model")
    card = read_card(path)
    table = load_table(synthetic_data, card.taxonomy)
    split = make_splits(table, seed=0).to_numpy()
    cal = C.fit_for_model(card, table, split)
    assert sum(cal.n.values()) == int((split == "val").sum())
    assert C.calibration_path(card).is_file()
    loaded = C.load_calibration(card)
    assert loaded.n == cal.n and loaded.source["split"] == "validation"
    rep = C.report_block(table["y"].to_numpy(), np.full((len(table), 7), 1 / 7), loaded, 0.9)
    assert set(rep) >= {"level", "coverage", "mean_set_size", "per_class"}
    assert set(rep["per_class"]) == set(card.classes) and all(set(v) >= {"coverage", "n"} for v in rep["per_class"].values())
