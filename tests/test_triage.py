import numpy as np
import pytest

from derm_core.triage.rules import (
    Thresholds,
    assign_tiers,
    biopsy_caveat,
    biopsy_class,
    fit_thresholds,
    triage,
    true_tiers,
)


def _th(ham7, cls=0.3, high=0.3, danger=0.2):
    return Thresholds({c: cls for c in ham7.classes}, {"high-risk": high, "dangerous": danger})


def _p(ham7, **kw):
    p = np.zeros(len(ham7.classes))
    for c, v in kw.items():
        p[ham7.index(c)] = v
    return p


def test_differential_lists_every_class_over_its_threshold_ranked(ham7):
    r = triage(_p(ham7, nv=0.35, mel=0.45, bkl=0.2), ham7, _th(ham7))
    assert r.differential == [("mel", 0.45), ("nv", 0.35)]
    assert not r.low_confidence


def test_the_biopsy_site_is_for_the_most_urgent_class_of_the_differential(ham7):
    """A melanoma in the differential beside a more probable nevus: the biopsy is for the melanoma;
    within one tier the more probable class; a class outside the differential never counts."""
    assert biopsy_class(triage(_p(ham7, nv=0.6, mel=0.32, bcc=0.05), ham7, _th(ham7)), ham7) == "mel"
    assert biopsy_class(triage(_p(ham7, bcc=0.4, akiec=0.35, nv=0.25), ham7, _th(ham7)), ham7) == "bcc"
    assert biopsy_class(triage(_p(ham7, bkl=0.55, nv=0.35, mel=0.1), ham7, _th(ham7)), ham7) == "bkl"
    low = triage(np.full(7, 1 / 7), ham7, _th(ham7, cls=0.5))     # low confidence: its one class
    assert biopsy_class(low, ham7) == low.differential[0][0]

    # a low-risk tier ("monitor") does not call for a biopsy: the site says so; a referral tier needs no caveat
    assert "does not call for a biopsy" in biopsy_caveat(triage(_p(ham7, nv=0.95, bkl=0.05), ham7, _th(ham7)), ham7)
    assert biopsy_caveat(triage(_p(ham7, nv=0.6, mel=0.32, bcc=0.08), ham7, _th(ham7)), ham7) == ""


def test_low_confidence_when_nothing_passes(ham7):
    p = np.full(7, 1 / 7)
    r = triage(p, ham7, _th(ham7, cls=0.5))
    assert r.low_confidence and len(r.differential) == 1


def test_tiers_checked_from_most_urgent(ham7):
    th = _th(ham7)
    assert triage(_p(ham7, nv=0.75, mel=0.25), ham7, th).tier == "dangerous"  # 0.25 >= 0.2
    assert triage(_p(ham7, nv=0.75, mel=0.1, bcc=0.15), ham7, th).tier == "low-risk"  # high+dangerous = 0.25 < 0.3
    assert triage(_p(ham7, nv=0.6, mel=0.15, bcc=0.25), ham7, th).tier == "high-risk"  # 0.4 >= 0.3
    r = triage(_p(ham7, nv=0.6, mel=0.15, bcc=0.25), ham7, th)
    assert r.tier_probs == pytest.approx({"low-risk": 0.6, "high-risk": 0.25, "dangerous": 0.15})
    assert r.action == ham7.tiers["high-risk"].action
    assert r.what_to_do == "Refer to a dermatologist for assessment."     # the tier is not said twice
    assert triage(_p(ham7, nv=0.75, mel=0.25), ham7, th).what_to_do == "Urgent referral for excision biopsy."


def test_vectorised_tiers_match_single(ham7):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), 50)
    th = _th(ham7)
    names = ham7.tier_names
    assert [names[k] for k in assign_tiers(probs, ham7, th.tiers)] == [triage(p, ham7, th).tier for p in probs]


def test_fit_thresholds_meets_tier_sensitivity_targets(ham7):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    probs = rng.dirichlet(np.ones(7), 500) * 0.5 + np.eye(7)[y] * 0.5
    th = fit_thresholds(probs, y, ham7, {"dangerous": 0.95, "high-risk": 0.9})
    th.check(ham7)
    tiers = assign_tiers(probs, ham7, th.tiers)
    tt = true_tiers(y, ham7)
    assert (tiers[tt == 2] == 2).mean() >= 0.95
    assert (tiers[tt >= 1] >= 1).mean() >= 0.9


def test_thresholds_for_other_classes_refused(ham7):
    with pytest.raises(ValueError, match="classes"):
        Thresholds({"nv": 0.5}, {"high-risk": 0.3, "dangerous": 0.2}).check(ham7)
    with pytest.raises(ValueError, match="between 0 and 1"):
        _th(ham7, cls=1.5).check(ham7)
