"""Conformal prediction sets: p-values checked against crepes (test-only reference), nesting by probability,
per-class coverage, the page sentence, storage and refusal of old calibrations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from crepes import ConformalClassifier
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _closed(raw_sets, probs):
    """Upward closure done by hand: a class is in when any class at most as probable as it is."""
    return np.array([[any(s[j] for j in range(len(p)) if p[j] <= p[k]) for k in range(len(p))]
                     for s, p in zip(raw_sets, probs)])


def test_scores_are_the_probability_of_the_more_probable_classes():
    p = np.array([[0.5, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(C.nonconformity(p), [[0.0, 0.5, 0.5, 0.9], [0, 0, 0, 0]], atol=1e-15)
    _, q = _fake(50, seed=9)
    ref = [[sum(r[j] for j in range(7) if r[j] > r[k]) for k in range(7)] for r in q]
    np.testing.assert_allclose(C.nonconformity(q), ref, atol=1e-12)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_p_values_equal_crepes_and_sets_are_their_upward_closure(level):
    y_cal, p_cal = _fake(800, seed=1)
    y_te, p_te = _fake(500, seed=2)
    cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
    assert "df" in cal.pooled and "nv" not in cal.pooled    # both kinds of class are checked
    ours_p, ours = cal.class_p_values(p_te), cal.sets(p_te, level)
    # crepes: a Mondrian (class-conditional) conformal classifier, the categories being the labels, for
    # the classes with enough photos; a plain one on every photo for the pooled class
    a_cal = C.nonconformity(p_cal)[np.arange(len(y_cal)), y_cal]
    a_te = C.nonconformity(p_te)
    mondrian, pooled = ConformalClassifier().fit(a_cal, bins=y_cal), ConformalClassifier().fit(a_cal)
    raw = np.zeros_like(ours)
    for k, c in enumerate(CLASSES):
        kw = {} if c in cal.pooled else {"bins": np.full(len(p_te), k)}
        cc = pooled if c in cal.pooled else mondrian
        ref_p = np.ravel(cc.predict_p(a_te[:, k], smoothing=False, **kw))
        np.testing.assert_allclose(ours_p[:, k], ref_p, rtol=0, atol=1e-12)
        # crepes compares p >= 1 - confidence in floating point, where 1 - 0.95 = 0.05000000000000004
        # leaves out a p-value of exactly 1/20: mathematically it is in the set
        raw[:, k] = np.ravel(cc.predict_set(a_te[:, k], confidence=level, smoothing=False, **kw)).astype(bool) | \
            np.isclose(ref_p, 1.0 - level, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours, _closed(raw, p_te))
    assert (ours.sum(1) >= 1).all() and ours.sum(1).mean() < 7.0   # never empty, not trivial


_NESTING_CAL = C.Calibration.fit(*_fake(600, seed=7), CLASSES)


@settings(max_examples=300, deadline=None)
@given(w=st.lists(st.integers(0, 12), min_size=7, max_size=7).filter(any),
       level=st.sampled_from(C.PAGE_LEVELS), min_n=st.sampled_from([0, 30, 10_000]))
def test_sets_are_nested_by_probability(w, level, min_n):
    """Every class in the set is at least as probable as every class out of it (ties included)."""
    p = np.asarray(w, float) / sum(w)
    cal = C.Calibration(_NESTING_CAL.classes, _NESTING_CAL.scores, min_class_n=min_n)
    inside = cal.sets(p[None], level)[0]
    assert inside.any()
    if not inside.all():
        assert p[inside].min() >= p[~inside].max()
    s = cal.prediction_set(p, level)
    assert s == [CLASSES[k] for k in np.argsort(-p, kind="stable") if inside[k]]
    assert set(s) <= set(cal.prediction_set(p, 0.99))                     # nested by level too


def test_coverage_holds_per_class_on_exchangeable_data():
    per = []
    for seed in range(8):
        y_cal, p_cal = _fake(5000, seed=100 + seed)
        y_te, p_te = _fake(5000, seed=200 + seed)
        cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
        assert cal.pooled == ()
        r = C.evaluate(cal, y_te, p_te, 0.9)
        per.append([v["coverage"] for v in r["per_class"].values()])
        assert sum(r["set_size_counts"]) == len(y_te) and r["set_size_counts"][0] == 0
        assert r["mean_set_size"] == pytest.approx(np.dot(np.arange(8), r["set_size_counts"]) / len(y_te))
    mean = np.mean(per, 0)
    assert (mean >= 0.88).all() and (mean <= 0.95).all(), dict(zip(CLASSES, mean))   # near the level, per class
    # higher level -> sets never shrink; the curve matches evaluate()
    small, big = cal.sets(p_te, 0.8), cal.sets(p_te, 0.95)
    assert not (small & ~big).any()
    curve = C.coverage_curve(cal, y_te, p_te, [0.5, 0.7, 0.9])
    assert curve["coverage"] == sorted(curve["coverage"]) and curve["coverage"][-1] == pytest.approx(r["coverage"])


def test_classes_with_too_few_photos_are_scored_against_all_photos():
    y = np.array([0] * 50 + [1] * 5)
    p = np.tile([0.9, 0.1], (55, 1))
    cal = C.Calibration.fit(y, p, ("a", "b"))
    assert cal.pooled == ("b",)
    # "b" at 0.001 scores 0.999, above all 55 calibration scores: p-value 1/56, out of the 90% set
    assert cal.prediction_set({"a": 0.999, "b": 0.001}, 0.9) == ["a"]
    assert cal.prediction_set({"a": 0.5, "b": 0.5}, 0.9) == ["a", "b"]          # ties go in together
    # calibrated on its own 5 photos the smallest p-value is 1/6 > 0.1: "b" always in, and "a" above it
    own = C.Calibration.fit(y, p, ("a", "b"), min_class_n=0)
    assert own.pooled == () and own.prediction_set({"a": 0.999, "b": 0.001}, 0.9) == ["a", "b"]
    # no calibration photo at all: every p-value is 1, the full set
    none = C.Calibration.fit(np.zeros(0, int), np.zeros((0, 2)), ("a", "b"))
    assert none.prediction_set([1.0, 0.0], 0.99) == ["a", "b"]


def test_prediction_set_order_and_text():
    y_cal, p_cal = _fake(600, seed=5)
    cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
    row = p_cal[0]
    s = cal.prediction_set(row, 0.9)
    probs = dict(zip(CLASSES, row))
    assert [probs[c] for c in s] == sorted((probs[c] for c in s), reverse=True)
    assert cal.prediction_set(np.full(7, 1 / 7), 0.5) == list(CLASSES)        # a flat photo: every class
    with pytest.raises(ValueError):
        cal.sets(p_cal, 1.0)
    names = {c: c.upper() for c in CLASSES}
    short = C.describe(["nv", "mel"], 0.9, names)
    assert "90% of the time" in short and "on photos like the validation set" in short.lower()
    assert "NV" in short and "MEL" in short and "uncertain" not in short
    long = C.describe(["nv", "mel", "bkl", "df"], 0.85, names)
    assert long.startswith("An uncertain photo: the model cannot narrow it down at this level.")
    assert "85% of the time" in long and "one of these 4 diagnoses" in long
    empty = C.describe([], 0.9)
    assert "No diagnosis" in empty and "unlike the validation photos" in empty


def test_model_lab_table_and_fixed_axis():
    from derm_core.evaluate.figures import coverage_figure
    y_cal, p_cal = _fake(800, seed=1)
    y_te, p_te = _fake(400, seed=2)
    cal = C.Calibration.fit(y_cal, p_cal, CLASSES)
    rows = C.per_class_rows(C.evaluate(cal, y_te, p_te, 0.9))
    assert [r["class"] for r in rows] == list(CLASSES)
    assert {r["class"]: r["calibration photos"] for r in rows} == cal.n
    assert sum(r["photos"] for r in rows) == len(y_te)
    assert [r["class"] for r in rows if r["calibrated on"].startswith("all")] == list(cal.pooled)
    fig = coverage_figure(C.coverage_curve(cal, y_te, p_te))
    assert tuple(fig.layout.yaxis.range) == (0, 1.02)
    assert {d.name for d in fig.data} >= set(CLASSES)


def test_a_calibration_from_the_old_method_is_refused(tmp_path, tiny_predictor):
    from derm_core.model.checkpoint import read_card, save_model

    path = save_model(tiny_predictor.model, tiny_predictor.card, tmp_path / "m" / "model")
    card = read_card(path)
    old = {"format": C.FORMAT, "method": "class-conditional split conformal, score 1 - p",
           "classes": list(card.classes),
           "source": {"weights_sha256": card.weights_sha256(), "temperature": card.temperature},
           "scores": {c: [0.1, 0.5] for c in card.classes}}
    C.calibration_path(card).write_text(json.dumps(old))
    with pytest.raises(C.ConformalError, match="older method .*: re-fit it"):
        C.load_calibration(card)
    out = C.predict_fields(card, dict(zip(card.classes, [1 / 7] * 7)))
    assert out["prediction_set"] is None and "older method" in out["prediction_set_note"]
    with pytest.raises(C.ConformalError, match="unknown method"):
        C.Calibration.from_dict({**old, "method": "something newer"})


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
    assert back.to_dict()["method"] == C.METHOD and back.min_class_n == C.MIN_CLASS_N
    assert C.Calibration.from_dict(C.Calibration.fit(y, p, card.classes, min_class_n=5).to_dict()).min_class_n == 5
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
