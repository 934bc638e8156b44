"""Multi-reader multi-case (MRMC) comparison of AI-assisted against unassisted reading.

Readers and cases are both samples: a paired test over readers ignores that another case set
would give other results, and a test over cases ignores other readers. The Obuchowski-Rockette
analysis with Hillis' denominator degrees of freedom (ORH; Obuchowski & Rockette 1995, Hillis
2007) treats both as random, with the case covariances of the figures of merit (FOM) estimated
by the case jackknife. The Dorfman-Berbaum-Metz pseudovalue ANOVA with Hillis' df (DBM) gives
the same F test (Hillis 2005, 2008) and is kept as a cross-check.

FOMs: the empirical AUC (Mann-Whitney, ties count 1/2) of scores or ratings, or accuracy
(a case is right when ``score >= threshold`` matches its 0/1 truth). Scores are arrays
``[reader, modality, case]`` with modality 0 unassisted and 1 assisted, fully crossed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from derm_core.errors import MRMCError
from derm_core.study.cases import PHASES

__all__ = ["FOMS", "MODALITIES", "Crossed", "DBMResult", "MRMCError", "MRMCResult", "crossed", "dbm", "jackknife",
           "orh"]

MODALITIES = PHASES                    # ("unassisted", "assisted"): the effect is assisted - unassisted
FOMS = ("auc", "accuracy")
FOM_NAME = {"auc": "AUC", "accuracy": "accuracy"}


class Crossed(NamedTuple):
    """Long-format reader data pivoted for :func:`orh`: truth ``[case]``, scores ``[reader, modality, case]``."""
    truth: np.ndarray
    scores: np.ndarray
    readers: tuple[str, ...]
    cases: tuple[str, ...]


def crossed(df: pd.DataFrame, reader: str = "reader", case: str = "case", modality: str = "modality",
            score: str = "score", truth: str = "truth") -> Crossed:
    """Pivot one row per (reader, case, modality) into arrays, sorted by reader and case id.

    Raises:
        MRMCError: unknown modality, a duplicated or missing (reader, case, modality), a missing
            score, or a case whose truth differs between rows: ORH needs a fully crossed design.
    """
    unknown = set(df[modality]) - set(MODALITIES)
    if unknown:
        raise MRMCError(f"unknown modality {sorted(map(str, unknown))}; use {list(MODALITIES)}")
    if df.duplicated([reader, case, modality]).any():
        raise MRMCError("a reader has two scores for the same case and modality")
    if df[score].isna().any():
        raise MRMCError("some scores are missing: the data are not fully crossed")
    per_case = df.groupby(case)[truth].nunique()
    if (per_case > 1).any():
        raise MRMCError(f"case {per_case[per_case > 1].index[0]!r} has two different truths")
    readers, cases = sorted(df[reader].unique()), sorted(df[case].unique())
    full = pd.MultiIndex.from_product([readers, MODALITIES, cases], names=[reader, modality, case])
    wide = df.set_index([reader, modality, case])[score].reindex(full)
    if wide.isna().any():
        r, m, c = wide.index[wide.isna().to_numpy()][0]
        raise MRMCError(f"not fully crossed: reader {r!r} has no {m} score for case {c!r}; the MRMC analysis "
                        "needs every reader to read every case in both modalities")
    t = df.drop_duplicates(case).set_index(case)[truth].reindex(cases)
    return Crossed(t.to_numpy(), wide.to_numpy(float).reshape(len(readers), 2, len(cases)),
                   tuple(map(str, readers)), tuple(map(str, cases)))


def _checked(truth, scores, fom: str) -> tuple[np.ndarray, np.ndarray]:
    if fom not in FOMS:
        raise MRMCError(f"unknown figure of merit {fom!r}; choose one of {list(FOMS)}")
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth)
    if scores.ndim != 3 or scores.shape[1] != 2:
        raise MRMCError(f"scores must be [reader, modality (2), case], got shape {scores.shape}")
    if scores.shape[0] < 2:
        raise MRMCError(f"the MRMC analysis needs at least 2 readers, got {scores.shape[0]}")
    if truth.shape != (scores.shape[2],):
        raise MRMCError(f"{scores.shape[2]} cases have scores but {truth.size} have a truth")
    if np.isnan(scores).any():
        raise MRMCError("some scores are missing: the data are not fully crossed")
    if not np.isin(truth, (0, 1)).all():
        raise MRMCError("truth must be 0 (negative) or 1 (positive)")
    n_pos = int(truth.sum())
    if fom == "auc" and min(n_pos, truth.size - n_pos) < 2:
        raise MRMCError(f"an AUC needs at least 2 positive and 2 negative cases, got {n_pos} positive and "
                        f"{truth.size - n_pos} negative" + (" (a single class)" if min(n_pos, truth.size - n_pos) == 0
                                                          else ""))
    if truth.size < 2:
        raise MRMCError("the case jackknife needs at least 2 cases")
    return truth.astype(bool), scores


def jackknife(truth, scores, fom: str = "auc", threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """FOMs ``[reader, modality]`` and leave-one-case-out FOMs ``[reader, modality, case]``.

    The AUC's jackknife comes from the Mann-Whitney kernel's row and column sums (leaving out
    a positive removes its row), so nothing is refitted per case.
    """
    pos, scores = _checked(truth, scores, fom)
    if fom == "accuracy":
        right = ((scores >= threshold) == pos).astype(float)
        total = right.sum(-1, keepdims=True)
        return right.mean(-1), (total - right) / (right.shape[-1] - 1)
    p, q = scores[..., pos], scores[..., ~pos]
    kernel = (p[..., :, None] > q[..., None, :]) + 0.5 * (p[..., :, None] == q[..., None, :])
    n1, n0 = p.shape[-1], q.shape[-1]
    s = kernel.sum((-2, -1))
    jack = np.empty_like(scores)
    jack[..., pos] = (s[..., None] - kernel.sum(-1)) / ((n1 - 1) * n0)
    jack[..., ~pos] = (s[..., None] - kernel.sum(-2)) / (n1 * (n0 - 1))
    return s / (n1 * n0), jack


def _t_test(effect: float, se: float, df: float, alpha: float) -> tuple[float, float, float, float]:
    """t, two-sided p and the (1 - alpha) interval of ``effect`` on ``df`` degrees of freedom."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = float(np.divide(effect, se))
    half = float(stats.t.isf(alpha / 2, df)) * se
    return t, float(2 * stats.t.sf(abs(t), df)), effect - half, effect + half


def _hillis_df(ms_tr: float, denominator: float, n_readers: int) -> float:
    """Hillis (2007): the denominator's df by Satterthwaite, with MS_TR on (t - 1)(r - 1) = r - 1 df."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.divide(denominator ** 2 * (n_readers - 1), ms_tr ** 2))


@dataclass(frozen=True)
class MRMCResult:
    """ORH comparison of two modalities: effect = assisted - unassisted, random readers and cases."""
    fom: str
    readers: tuple[str, ...]
    n_cases: int
    reader_foms: np.ndarray            # [reader, modality]
    effect: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    ms_t: float
    ms_r: float
    ms_tr: float
    var_e: float
    cov1: float
    cov2: float
    cov3: float
    alpha: float = 0.05

    @property
    def f(self) -> float:
        return self.t ** 2

    @property
    def mean_foms(self) -> dict[str, float]:
        return dict(zip(MODALITIES, map(float, self.reader_foms.mean(0)), strict=True))

    def summary(self) -> str:
        """One plain-English sentence for the page."""
        acc = self.fom == "accuracy"
        fmt = (lambda v: f"{100 * v:.1f}") if acc else (lambda v: f"{v:.3f}")
        unit, pct = (" percentage points", "%") if acc else ("", "")
        size = f"{len(self.readers)} readers x {self.n_cases} cases"
        if not np.isfinite(self.p):
            un, ai = self.mean_foms.values()
            return (f"Readers' {FOM_NAME[self.fom]} was {fmt(un)}{pct} without and {fmt(ai)}{pct} with AI; no test "
                    f"is possible because their results do not vary between readers or cases ({size}).")
        move = "did not change" if self.effect == 0 else \
            f"{'rose' if self.effect > 0 else 'fell'} by {fmt(abs(self.effect))}{unit}"
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}" if self.p < 0.1 else f"p = {self.p:.2f}"
        verdict = "" if self.p < self.alpha else f"; not a significant difference at the {self.alpha:.0%} level"
        return (f"With AI, readers' {FOM_NAME[self.fom]} {move} ({1 - self.alpha:.0%} CI {fmt(self.ci_low)} to "
                f"{fmt(self.ci_high)}; {p}, ORH random readers and cases, {size}){verdict}.")

    def as_dict(self) -> dict[str, float | int | str]:
        """The figures as one flat row, for the exports."""
        means = {f"mean_{m}": v for m, v in self.mean_foms.items()}
        return {"analysis": "ORH (random readers and cases)", "fom": self.fom, "n_readers": len(self.readers),
                "n_cases": self.n_cases, **means, "effect": self.effect, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "confidence": 1 - self.alpha, "t": self.t, "F": self.f, "df": self.df,
                "p": self.p, "ms_t": self.ms_t, "ms_r": self.ms_r, "ms_tr": self.ms_tr, "var_e": self.var_e,
                "cov1": self.cov1, "cov2": self.cov2, "cov3": self.cov3, "summary": self.summary()}


def orh(truth, scores, fom: str = "auc", threshold: float = 0.5, readers=None, alpha: float = 0.05) -> MRMCResult:
    """Obuchowski-Rockette-Hillis test of assisted against unassisted reading (two-sided).

    ``truth``: 0/1 per case; ``scores``: ``[reader, modality, case]`` (see :func:`crossed`).
    Variance components are not truncated at 0 (the test uses max(cov2 - cov3, 0), as Hillis).

    Raises:
        MRMCError: fewer than 2 readers, a single class (AUC), missing scores, a wrong shape.
    """
    theta, jack = jackknife(truth, scores, fom, threshold)
    r, n = jack.shape[0], jack.shape[2]
    d = jack - jack.mean(-1, keepdims=True)
    cov = (n - 1) / n * np.einsum("amk,bnk->ambn", d, d)           # [reader, modality, reader, modality]
    same, other = np.eye(r, dtype=bool), ~np.eye(r, dtype=bool)
    var_e = float(np.mean([cov[:, m, :, m][same] for m in (0, 1)]))
    cov1 = float(cov[:, 0, :, 1][same].mean())
    cov2 = float(np.mean([cov[:, m, :, m][other] for m in (0, 1)]))
    cov3 = float(cov[:, 0, :, 1][other].mean())
    by_m, by_r, grand = theta.mean(0), theta.mean(1), theta.mean()
    ms_t = float(r * ((by_m - grand) ** 2).sum())
    ms_r = float(2 * ((by_r - grand) ** 2).sum() / (r - 1))
    ms_tr = float(((theta - by_r[:, None] - by_m[None, :] + grand) ** 2).sum() / (r - 1))
    denominator = ms_tr + r * max(cov2 - cov3, 0.0)
    effect = float(by_m[1] - by_m[0])
    df = _hillis_df(ms_tr, denominator, r)
    t, p, lo, hi = _t_test(effect, float(np.sqrt(2 * denominator / r)), df, alpha)
    names = tuple(map(str, readers)) if readers is not None else tuple(f"R{i + 1:02d}" for i in range(r))
    if len(names) != r:
        raise MRMCError(f"{len(names)} reader names for {r} readers")
    foms = theta.copy()
    foms.flags.writeable = False
    return MRMCResult(fom, names, n, foms, effect, lo, hi, t, df, p, ms_t, ms_r, ms_tr, var_e, cov1, cov2, cov3,
                      alpha)


@dataclass(frozen=True)
class DBMResult:
    """DBM pseudovalue ANOVA with Hillis' df (random readers and cases): the cross-check of ORH."""
    effect: float
    ci_low: float
    ci_high: float
    f: float
    df: float
    p: float
    ms_t: float
    ms_tr: float
    ms_tc: float
    ms_trc: float


def dbm(truth, scores, fom: str = "auc", threshold: float = 0.5, alpha: float = 0.05) -> DBMResult:
    """Dorfman-Berbaum-Metz: a treatment x reader x case ANOVA on the jackknife pseudovalues
    n * FOM - (n - 1) * FOM(-case), with Hillis' denominator max(MS_TC - MS_TRC, 0) + MS_TR."""
    theta, jack = jackknife(truth, scores, fom, threshold)
    r, _, n = jack.shape
    y = n * theta[..., None] - (n - 1) * jack                        # [reader, modality, case]
    y_t, y_tr, y_tc, grand = y.mean((0, 2)), y.mean(2), y.mean(0), y.mean()
    y_r, y_c, y_rc = y.mean((1, 2)), y.mean((0, 1)), y.mean(1)
    ms_t = float(r * n * ((y_t - grand) ** 2).sum())
    ms_tr = float(n * ((y_tr - y_r[:, None] - y_t[None, :] + grand) ** 2).sum() / (r - 1))
    ms_tc = float(r * ((y_tc - y_t[:, None] - y_c[None, :] + grand) ** 2).sum() / (n - 1))
    resid = y - y_tr[..., None] - y_tc[None] - y_rc[:, None, :] + y_t[None, :, None] + y_r[:, None, None] + y_c - grand
    ms_trc = float((resid ** 2).sum() / ((r - 1) * (n - 1)))
    denominator = ms_tr + max(ms_tc - ms_trc, 0.0)
    effect = float(y_t[1] - y_t[0])
    df = _hillis_df(ms_tr, denominator, r)
    t, p, lo, hi = _t_test(effect, float(np.sqrt(2 * denominator / (r * n))), df, alpha)
    return DBMResult(effect, lo, hi, t ** 2, df, p, ms_t, ms_tr, ms_tc, ms_trc)
