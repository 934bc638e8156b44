"""The MRMC analysis (derm_core.study.mrmc): ORH against an independent implementation's numbers,
DBM giving the same F test, and Roe-Metz simulations for its type-I error and power."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from scipy import stats
from sklearn.metrics import roc_auc_score

from derm_core.errors import StudyError
from derm_core.study import mrmc

REF_DIR = ROOT.parent / "shared" / "reference" / "mrmc"
DATASETS = {"dataset1": 0.6, "dataset2": 0.6, "dataset3": 3}     # accuracy threshold (README): score >= threshold
# The reference keeps the reader x modality FOMs in float32; its returned statistics therefore carry float32
# rounding, which the t statistic (up to 4e-6 off for accuracy), p (2e-6) and the Hillis df (1.5e-5) amplify.
# Per-reader FOMs (float64 in expected.json) and the variance components (float64 there) match far closer.
TOL = {"fom": 1e-9, "effect": 1e-6, "t": 5e-6, "p": 2e-6, "df": 2e-5, "components": 1e-12}


def _reference():
    if not (REF_DIR / "expected.json").is_file():
        pytest.skip(f"MRMC reference data not found at {REF_DIR}")
    return json.loads((REF_DIR / "expected.json").read_text(encoding="utf-8"))["datasets"]


@pytest.fixture(scope="module", params=list(DATASETS))
def dataset(request):
    expected = _reference()[request.param]
    return request.param, mrmc.crossed(pd.read_csv(REF_DIR / expected["file"])), expected


def _run(name, data, fom, method=mrmc.orh):
    kw = {"threshold": DATASETS[name]} if fom == "accuracy" else {}
    return method(data.truth, data.scores, fom, **kw)


@pytest.mark.parametrize("fom", mrmc.FOMS)
def test_orh_matches_the_reference(dataset, fom):
    name, data, expected = dataset
    res = mrmc.orh(data.truth, data.scores, fom, threshold=DATASETS[name], readers=data.readers)
    assert res.readers == tuple(expected["readers"]) and res.n_cases == expected["n_cases"]
    per_reader = expected[f"per_reader_{'auc' if fom == 'auc' else 'accuracy'}"]
    for m, modality in enumerate(mrmc.MODALITIES):
        want = [per_reader[modality][r] for r in expected["readers"]]
        assert res.reader_foms[:, m] == pytest.approx(want, abs=TOL["fom"])
    got, ref = expected["orh"][fom]["returned"], expected["orh"][fom]["derived"]
    assert res.mean_foms == pytest.approx(got["modality_foms"], abs=TOL["effect"])
    assert res.effect == pytest.approx(got["effect"], abs=TOL["effect"])
    assert (res.ci_low, res.ci_high) == pytest.approx((got["ci_lower"], got["ci_upper"]), abs=TOL["effect"])
    assert res.t == pytest.approx(got["statistic_t"], abs=TOL["t"])
    assert res.f == pytest.approx(ref["F"], abs=2 * abs(got["statistic_t"]) * TOL["t"])
    assert res.df == pytest.approx(got["dof"], abs=TOL["df"])
    assert res.p == pytest.approx(got["pvalue"], abs=TOL["p"])
    for field, key in (("ms_t", "ms_t"), ("ms_r", "ms_r"), ("ms_tr", "ms_tr"), ("var_e", "var_E"), ("cov1", "cov1"),
                       ("cov2", "cov2"), ("cov3", "cov3")):
        assert getattr(res, field) == pytest.approx(ref[key], abs=TOL["components"]), field


@pytest.mark.parametrize("fom", mrmc.FOMS)
def test_dbm_gives_the_same_f_test_as_orh(dataset, fom):
    """Hillis (2005, 2008): DBM with Hillis' df is the ORH test with jackknife covariances."""
    name, data, _ = dataset
    o, d = _run(name, data, fom), _run(name, data, fom, mrmc.dbm)
    assert d.f == pytest.approx(o.f, rel=1e-9)
    assert d.df == pytest.approx(o.df, rel=1e-9)
    assert d.p == pytest.approx(o.p, rel=1e-9)
    assert (d.effect, d.ci_low, d.ci_high) == pytest.approx((o.effect, o.ci_low, o.ci_high), abs=1e-12)
    n, r = o.n_cases, len(o.readers)            # the mean squares map one to one (Hillis 2005)
    assert (d.ms_t, d.ms_tr) == pytest.approx((n * o.ms_t, n * o.ms_tr), rel=1e-9)
    assert d.ms_tc - d.ms_trc == pytest.approx(n * r * (o.cov2 - o.cov3), rel=1e-9)


def test_vectorised_jackknife_equals_refitting(dataset):
    """The kernel-sum jackknife equals recomputing the FOM without each case (ties in dataset 3)."""
    name, data, _ = dataset
    theta, jack = mrmc.jackknife(data.truth, data.scores, "auc")
    r, m = 1, 1                                                        # one reader and modality, every 7th case
    assert theta[r, m] == pytest.approx(roc_auc_score(data.truth, data.scores[r, m]), abs=1e-12)
    for k in range(0, data.truth.size, 7):
        keep = np.arange(data.truth.size) != k
        assert jack[r, m, k] == pytest.approx(roc_auc_score(data.truth[keep], data.scores[r, m, keep]), abs=1e-12)
    theta, jack = mrmc.jackknife(data.truth, data.scores, "accuracy", DATASETS[name])
    right = (data.scores[0, 0] >= DATASETS[name]) == data.truth.astype(bool)
    assert theta[0, 0] == pytest.approx(right.mean()) and jack[0, 0, 3] == pytest.approx(np.delete(right, 3).mean())


def test_summary_reads_as_one_sentence():
    truth, scores = _roe_metz(np.random.default_rng(3), 8, 60, 60, 0.78, 0.85)
    res = mrmc.orh(truth, scores)
    text = res.summary()
    assert text.startswith("With AI, readers' AUC rose by ")
    assert "ORH random readers and cases, 8 readers x 120 cases" in text
    assert f"{res.ci_low:.3f} to {res.ci_high:.3f}" in text and text.count(".\n") == 0 and text.endswith(".")
    acc = mrmc.orh(truth, scores, "accuracy", threshold=0.7).summary()
    assert "accuracy" in acc and "percentage points" in acc
    assert "AUC fell by" in mrmc.orh(truth, scores[:, ::-1]).summary()
    perfect = np.tile(truth, (3, 2, 1))                                   # no variation: no test, said in words
    assert "no test is possible" in mrmc.orh(truth, perfect).summary()
    row = res.as_dict()
    assert row["effect"] == res.effect and row["F"] == pytest.approx(res.t ** 2) and row["summary"] == text
    with pytest.raises(AttributeError):
        res.effect = 0.0                                                   # frozen


def test_clear_errors():
    truth, scores = _roe_metz(np.random.default_rng(4), 3, 10, 10, 0.8, 0.8)
    with pytest.raises(mrmc.MRMCError, match="at least 2 readers"):
        mrmc.orh(truth, scores[:1])
    with pytest.raises(mrmc.MRMCError, match="single class"):
        mrmc.orh(np.ones_like(truth), scores)
    holes = scores.copy()
    holes[1, 1, 4] = np.nan
    with pytest.raises(mrmc.MRMCError, match="not fully crossed"):
        mrmc.orh(truth, holes)
    with pytest.raises(mrmc.MRMCError, match="figure of merit"):
        mrmc.orh(truth, scores, "sensitivity")
    long = pd.DataFrame([(f"R{r}", f"C{c:02d}", truth[c], mod, scores[r, m, c]) for r in range(3)
                         for m, mod in enumerate(mrmc.MODALITIES) for c in range(20)],
                        columns=["reader", "case", "truth", "modality", "score"])
    assert mrmc.crossed(long).scores == pytest.approx(scores)
    with pytest.raises(mrmc.MRMCError, match="reader 'R1' has no assisted score for case 'C05'"):
        mrmc.crossed(long[~((long.reader == "R1") & (long.modality == "assisted") & (long.case == "C05"))])
    with pytest.raises(mrmc.MRMCError, match="two different truths"):
        mrmc.crossed(long.assign(truth=np.where(long.index == 0, 1 - long.truth, long.truth)))
    assert issubclass(mrmc.MRMCError, StudyError)


# ---------------------------------------------------------------------- Roe-Metz simulations
def _roe_metz(rng, n_readers, n_pos, n_neg, auc0, auc1, var_r=0.02, var_tr=0.01):
    """Roe & Metz (1997) scores [reader, modality, case]: a reader-and-modality separation plus
    case, modality x case, reader x case and pure-error terms (variances 0.5, 0.1, 0.3, 0.1)."""
    truth = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    mu = np.sqrt(2) * stats.norm.ppf([auc0, auc1])
    sep = mu + rng.normal(0, np.sqrt(var_r), (n_readers, 1)) + rng.normal(0, np.sqrt(var_tr), (n_readers, 2))
    n = truth.size
    noise = (rng.normal(0, np.sqrt(0.5), (1, 1, n)) + rng.normal(0, np.sqrt(0.1), (1, 2, n))
             + rng.normal(0, np.sqrt(0.3), (n_readers, 1, n)) + rng.normal(0, np.sqrt(0.1), (n_readers, 2, n)))
    return truth, truth * sep[..., None] + noise


def _rejections(n_studies, seed, n_readers, n_cases, auc0, auc1, fom="auc"):
    rng = np.random.default_rng(seed)
    return np.mean([mrmc.orh(*_roe_metz(rng, n_readers, n_cases // 2, n_cases // 2, auc0, auc1), fom,
                             threshold=0.7).p < 0.05 for _ in range(n_studies)])


@pytest.mark.parametrize(("n_readers", "n_cases", "fom"), [(5, 80, "auc"), (3, 40, "auc"), (5, 80, "accuracy")])
def test_type_one_error_is_near_five_percent(n_readers, n_cases, fom):
    assert 0.02 <= _rejections(600, 11, n_readers, n_cases, 0.8, 0.8, fom) <= 0.09


def test_power_grows_with_readers_and_cases():
    base = _rejections(300, 12, 3, 40, 0.78, 0.85)
    more_readers, more_cases = _rejections(300, 13, 8, 40, 0.78, 0.85), _rejections(300, 14, 3, 120, 0.78, 0.85)
    both = _rejections(300, 15, 8, 120, 0.78, 0.85)
    assert 0.15 < base < more_readers - 0.05 and base < more_cases - 0.1
    assert both > max(more_readers, more_cases) and both > 0.8
