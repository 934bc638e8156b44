"""Metrics checked against scikit-learn on fixed arrays, plus invariances."""
import numpy as np
import pytest
from sklearn import metrics as skm

from derm_core.evaluate import metrics as M
from derm_core.model.calibration import fit_temperature, softmax

RNG = np.random.default_rng(0)
Y_BIN = RNG.integers(0, 2, 200)
SCORE = np.clip(Y_BIN * 0.3 + RNG.random(200) * 0.7, 0, 1)
Y_MC = RNG.integers(0, 4, 300)
PROBS = softmax(RNG.normal(size=(300, 4)) + np.eye(4)[Y_MC] * 1.5)

BINARY_SCORE_METRICS = {"auc": M.auc_score, "youden": M.youden_threshold,
                        "t_sens90": lambda y, s: M.threshold_for_sensitivity(y, s, 0.9)}
LABEL_METRICS = {"sens": M.sensitivity_score, "spec": M.specificity_score, "acc": M.accuracy_score,
                 "bacc": M.balanced_accuracy_score}


def test_against_sklearn():
    pred = (SCORE >= 0.5).astype(int)
    assert M.sensitivity_score(Y_BIN, pred) == pytest.approx(skm.recall_score(Y_BIN, pred))
    assert M.specificity_score(Y_BIN, pred) == pytest.approx(skm.recall_score(Y_BIN, pred, pos_label=0))
    assert M.auc_score(Y_BIN, SCORE) == pytest.approx(skm.roc_auc_score(Y_BIN, SCORE))
    assert M.sens_spec_at(Y_BIN, SCORE, threshold=0.5) == (M.sensitivity_score(Y_BIN, pred), M.specificity_score(Y_BIN, pred))
    assert M.balanced_accuracy_score(Y_MC, PROBS.argmax(1)) == pytest.approx(skm.balanced_accuracy_score(Y_MC, PROBS.argmax(1)))
    assert M.top_k_accuracy_score(Y_MC, PROBS, 2) == pytest.approx(skm.top_k_accuracy_score(Y_MC, PROBS, k=2))
    assert (M.confusion(Y_MC, PROBS.argmax(1), 4) == skm.confusion_matrix(Y_MC, PROBS.argmax(1))).all()


def test_youden_maximises_j():
    t = M.youden_threshold(Y_BIN, SCORE)
    sens, spec = M.sens_spec_at(Y_BIN, SCORE, threshold=t)
    for other in np.linspace(0, 1, 101):
        s2, p2 = M.sens_spec_at(Y_BIN, SCORE, threshold=other)
        assert sens + spec >= s2 + p2 - 1e-12


def test_youden_on_separable_data():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert M.youden_threshold(y, s) == pytest.approx(0.8)
    assert M.sens_spec_at(y, s, threshold=0.8) == (1.0, 1.0)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity_meets_target_with_fewest_alarms(target):
    t = M.threshold_for_sensitivity(Y_BIN, SCORE, target)
    sens, spec = M.sens_spec_at(Y_BIN, SCORE, threshold=t)
    assert sens >= target
    higher = np.nextafter(t, 2)
    assert M.sens_spec_at(Y_BIN, SCORE, threshold=higher)[0] < target or target == 0


def test_ece():
    y = np.array([0, 1, 0, 1])
    perfect = np.eye(2)[y]
    assert M.expected_calibration_error(y, perfect) == pytest.approx(0.0)
    assert M.expected_calibration_error(y, np.full((4, 2), 0.5)) == pytest.approx(0.0)  # 50% confident, 50% right
    wrong = np.eye(2)[1 - y] * 0.9 + 0.05
    assert M.expected_calibration_error(y, wrong) == pytest.approx(0.95)
    rel = M.reliability_curve(Y_MC, PROBS)
    assert sum(rel["count"]) == len(Y_MC)


@pytest.mark.parametrize("name", BINARY_SCORE_METRICS)
def test_score_metrics_invariant_to_sample_order(name):
    perm = RNG.permutation(len(Y_BIN))
    fn = BINARY_SCORE_METRICS[name]
    assert fn(Y_BIN, SCORE) == pytest.approx(fn(Y_BIN[perm], SCORE[perm]))


@pytest.mark.parametrize("name", LABEL_METRICS)
def test_label_metrics_invariant_and_checked(name):
    fn = LABEL_METRICS[name]
    pred = (SCORE > 0.5).astype(int)
    perm = RNG.permutation(len(Y_BIN))
    assert fn(Y_BIN, pred) == pytest.approx(fn(Y_BIN[perm], pred[perm]))
    with pytest.raises(ValueError, match="y_true has 200 items but y_score has 199"):
        fn(Y_BIN, pred[:-1])


def test_single_class_auc_is_nan_not_error():
    assert np.isnan(M.auc_score(np.ones(5), np.linspace(0, 1, 5)))
    with pytest.raises(ValueError, match="both positive and negative"):
        M.youden_threshold(np.ones(5), np.linspace(0, 1, 5))


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 5)) * 3
    true_probs = softmax(z, 2.5)
    y = np.array([rng.choice(5, p=p) for p in true_probs])
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.1)
    assert M.expected_calibration_error(y, softmax(z, t)) < M.expected_calibration_error(y, softmax(z, 1.0))
