"""Both decision rules and the lesion-grouped bootstrap intervals."""
import numpy as np
import pytest

from derm_core.data.taxonomy import load_taxonomy
from derm_core.evaluate import metrics as M
from derm_core.evaluate.evaluation import build_report
from derm_core.model.decision import BalancedRule, class_prior
from derm_core.triage.rules import Thresholds


def _imbalanced(n=2000, seed=0):
    """Scores whose argmax favours the common class; the truth is recoverable with the prior removed."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.7, 0.2, 0.1])
    y = rng.choice(3, n, p=prior)
    lik = rng.normal(0, 1.0, (n, 3)) + 1.2 * np.eye(3)[y]         # balanced evidence
    logp = lik + np.log(prior)                                      # posterior logits
    p = np.exp(logp - logp.max(1, keepdims=True))
    return y, p / p.sum(1, keepdims=True), prior


def test_balanced_rule_trades_accuracy_for_rare_class_recall():
    y, p, prior = _imbalanced()
    rule = BalancedRule.fit(p, y, prior)
    most = p.argmax(1)
    bal = rule.predict(p)
    assert rule.tau > 0.5
    assert M.balanced_accuracy_score(y, bal) > M.balanced_accuracy_score(y, most) + 0.03
    assert M.accuracy_score(y, bal) < M.accuracy_score(y, most)
    assert ((bal == 2) & (y == 2)).sum() > ((most == 2) & (y == 2)).sum()


def test_tau_zero_is_the_most_likely_rule():
    y, p, prior = _imbalanced()
    assert np.array_equal(BalancedRule(0.0, tuple(prior)).predict(p), p.argmax(1))
    assert BalancedRule.from_dict(BalancedRule(0.4, tuple(prior)).to_dict()) == BalancedRule(0.4, tuple(prior))


def test_class_prior_never_zero():
    pr = class_prior(np.array([0, 0, 1]), 3)
    assert pr.sum() == pytest.approx(1) and pr[2] > 0


def test_lesion_bootstrap_moves_whole_lesions():
    clusters = np.repeat(np.arange(50), 4)           # 4 images per lesion
    counts = M.bootstrap_counts(200, 100, clusters=clusters)
    per_lesion = counts.reshape(100, 50, 4)
    assert (per_lesion == per_lesion[:, :, :1]).all()   # the images of a lesion share a multiplicity
    assert counts.sum(1).mean() == pytest.approx(200)


def test_lesion_grouped_intervals_are_wider_than_image_intervals():
    """Duplicated images of one lesion are not independent evidence: grouped CIs must be wider."""
    rng = np.random.default_rng(1)
    n_lesions, k = 150, 5
    correct = rng.random(n_lesions) < 0.8
    hit = np.repeat(correct, k)
    every = np.ones(len(hit), bool)
    grouped = M.interval(M.weighted_rate(hit, every, M.bootstrap_counts(len(hit), 400, clusters=np.repeat(np.arange(n_lesions), k))))
    naive = M.interval(M.weighted_rate(hit, every, M.bootstrap_counts(len(hit), 400)))
    assert grouped[1] - grouped[0] > 1.6 * (naive[1] - naive[0])


def test_report_has_both_rules_and_intervals():
    import pandas as pd
    tax = load_taxonomy("ham7")
    rng = np.random.default_rng(2)
    n = 300
    y = rng.integers(0, 7, n)
    logits = rng.normal(0, 1, (n, 7)) + 2.5 * np.eye(7)[y]
    table = pd.DataFrame({"group": np.repeat(np.arange(n // 2), 2), "sex": None, "age": np.nan, "site": None})
    thr = Thresholds({c: 0.3 for c in tax.classes}, {"high-risk": 0.3, "dangerous": 0.2})
    rule = BalancedRule(1.0, tuple(class_prior(y, 7)))
    rep = build_report(y, logits, 1.0, thr, tax, table, rule)
    assert rep["decision_rule"] == "most_likely"
    assert rep["accuracy"] == pytest.approx(M.accuracy_score(y, logits.argmax(1)))
    br = rep["balanced_rule"]
    assert br["tau"] == 1.0 and set(br["per_class_recall"]) == set(tax.classes)
    iv = rep["intervals"]
    assert iv["n_clusters"] == n // 2 and iv["method"].endswith("lesions")
    for key in ("macro_auc", "accuracy", "balanced_accuracy"):
        lo, hi = iv[key]
        assert lo <= rep[key] <= hi and hi - lo > 0.01
    lo, hi = iv["tiers"]["dangerous"]["sensitivity_at_or_above"]
    assert 0 <= lo <= hi <= 1
