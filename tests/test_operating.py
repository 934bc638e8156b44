"""Threshold re-binning, presets and prevalence (derm_core.evaluate.operating) on synthetic predictions."""
import math

import numpy as np
import pandas as pd
import pytest

from derm_core.evaluate import metrics as M
from derm_core.evaluate import operating as O
from derm_core.evaluate.evaluation import summary_metrics
from derm_core.triage.rules import Thresholds, assign_tiers


def _eval(ham7, n=600, seed=0, sharp=2.0, **kw) -> O.EvalSet:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(ham7.classes), n)
    logits = rng.normal(0, 1, (n, len(ham7.classes)))
    logits[np.arange(n), y] += rng.normal(sharp, 1.0, n)
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "y": y,
                          "sex": rng.choice(["male", "female", None], n),
                          "age": rng.choice([np.nan, 25.0, 45.0, 65.0, 85.0], n),
                          "site": rng.choice(["back", "face", None], n)})
    return O.EvalSet.from_table(ham7, table, logits, temperature=1.5, **kw)


def _thr(ham7, c=0.3, t=0.4) -> Thresholds:
    return Thresholds({k: c for k in ham7.classes}, {"high-risk": t, "dangerous": t}, "test")


def test_rates_and_prevalence():
    r = O.rates(tp=9, fp=18, fn=1, tn=72)
    assert r["sensitivity"] == pytest.approx(0.9) and r["specificity"] == pytest.approx(0.8)
    assert r["ppv"] == pytest.approx(1 / 3) and r["npv"] == pytest.approx(72 / 73)
    assert r["f1"] == pytest.approx(18 / (18 + 18 + 1))
    ppv, npv = O.at_prevalence(0.9, 0.8, 0.1)            # the same numbers, from Bayes' rule
    assert ppv == pytest.approx(1 / 3) and npv == pytest.approx(72 / 73)
    assert math.isnan(O.rates(0, 0, 0, 5)["sensitivity"])  # no positives: undefined, not an error
    with pytest.raises(ValueError):
        O.at_prevalence(0.9, 0.8, 0.0)


def test_operating_table_agrees_with_the_evaluation_report(ham7):
    ev = _eval(ham7)
    thr = _thr(ham7)
    table = O.operating_table(ev, thr).set_index("target")
    ref = summary_metrics(ev.y, ev.probs, thr, ham7)
    for c in ham7.classes:
        assert table.loc[c, "sensitivity"] == pytest.approx(ref["per_class"][c]["sensitivity"])
        assert table.loc[c, "specificity"] == pytest.approx(ref["per_class"][c]["specificity"])
        assert table.loc[c, "auc"] == pytest.approx(ref["per_class"][c]["auc"])
        assert table.loc[c, "n"] == ref["per_class"][c]["n"]
        assert table.loc[c, "auc_low"] <= table.loc[c, "auc"] <= table.loc[c, "auc_high"]
    for t in ("high-risk", "dangerous"):
        assert table.loc[O.tier_target(t), "sensitivity"] == pytest.approx(ref["tiers"][t]["sensitivity_at_or_above"])
    row = table.loc["mel"]
    assert row[["tp", "fp", "fn", "tn"]].sum() == len(ev)
    assert row["ppv"] == pytest.approx(row["tp"] / (row["tp"] + row["fp"]))


def test_tier_confusion_and_operating_point(ham7):
    ev = _eval(ham7)
    thr = _thr(ham7)
    cm = O.tier_confusion(ev, thr)
    assert cm.sum() == len(ev)
    assert (cm.sum(1) == np.bincount(ev.true_tier, minlength=3)).all()
    assert (cm.sum(0) == np.bincount(assign_tiers(ev.probs, ham7, thr.tiers), minlength=3)).all()
    op = O.operating_point(ev, thr, "tier:dangerous", prevalence=0.02)
    row = O.operating_table(ev, thr).set_index("target").loc["tier:dangerous"]
    assert op["sensitivity"] == pytest.approx(row["sensitivity"])
    assert (op["ppv"], op["npv"]) == pytest.approx(O.at_prevalence(row["sensitivity"], row["specificity"], 0.02))
    # the same thresholds at a higher prevalence: higher PPV, lower NPV
    op2 = O.operating_point(ev, thr, "tier:dangerous", prevalence=0.3)
    assert op2["ppv"] > op["ppv"] and op2["npv"] < op["npv"]


def test_thresholds_only_rebin_and_move_the_numbers(ham7):
    ev = _eval(ham7)
    lo = O.operating_table(ev, _thr(ham7, c=0.1)).set_index("target")
    hi = O.operating_table(ev, _thr(ham7, c=0.6)).set_index("target")
    assert (lo.loc[list(ham7.classes), "sensitivity"] >= hi.loc[list(ham7.classes), "sensitivity"]).all()
    assert (lo.loc[list(ham7.classes), "specificity"] <= hi.loc[list(ham7.classes), "specificity"]).all()
    assert (lo["auc"] == hi["auc"]).all()   # threshold-free parts do not change


def test_curves_and_youden(ham7):
    ev = _eval(ham7)
    sens, spec = ev.sens_spec_curves["bcc"]
    i = int(np.flatnonzero(np.isclose(O.GRID, 0.3))[0])
    ref = M.sens_spec_at((ev.y == ham7.index("bcc")).astype(int), ev.probs[:, ham7.index("bcc")], threshold=O.GRID[i])
    assert (sens[i], spec[i]) == pytest.approx(ref)
    assert ev.youden["bcc"] == pytest.approx(M.youden_threshold((ev.y == 1).astype(int), ev.probs[:, 1]))
    fpr, tpr = ev.roc["tier:dangerous"]
    assert fpr[0] == 0 and tpr[-1] == 1


def test_bootstrap_auc_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = y + rng.normal(0, 1.2, 400)
    auc, lo, hi = O.bootstrap_auc(y, s, n_boot=300)
    assert auc == pytest.approx(M.auc_score(y, s))
    assert lo < auc < hi and hi - lo < 0.2
    _, l2, h2 = O.bootstrap_auc(y[:40], s[:40], n_boot=300)   # fewer images: wider interval
    assert h2 - l2 > hi - lo
    assert all(math.isnan(v) for v in O.bootstrap_auc(np.ones(10), s[:10]))


def test_threshold_for_specificity():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = rng.random(500)
    for target in (0.5, 0.9, 0.95, 0.99):
        t = O.threshold_for_specificity(y, s, target)
        _, spec = M.sens_spec_at(y, s, threshold=t)
        assert spec >= target
        # and no lower score would do: the next negative below would be flagged
        below = s[(y == 0) & (s < t)]
        if len(below):
            _, spec2 = M.sens_spec_at(y, s, threshold=below.max())
            assert spec2 < target


def test_presets_keep_their_promise(ham7):
    ev = _eval(ham7, n=800, sharp=1.0)
    scr = O.preset(ev, "screening", target=0.95)
    tab = O.operating_table(ev, scr).set_index("target")
    for t in ("tier:high-risk", "tier:dangerous", "mel", "bcc", "akiec"):
        assert tab.loc[t, "sensitivity"] >= 0.95, t
    spec = O.preset(ev, "specific", target=0.95)
    tab = O.operating_table(ev, spec).set_index("target")
    for c in ham7.classes:
        assert tab.loc[c, "specificity"] >= 0.95, c
    yd = O.preset(ev, "youden", step=None)
    for c in ham7.classes:
        assert yd.classes[c] == pytest.approx(ev.youden[c])
    snapped = O.preset(ev, "screening", target=0.95, step=0.01)
    assert all(abs(v * 100 - round(v * 100)) < 1e-9 for v in snapped.classes.values())
    for t in ("high-risk", "dangerous"):
        assert snapped.tiers[t] <= scr.tiers[t] + 1e-12   # snapped down: sensitivity kept
    yd.check(ham7)
    with pytest.raises(ValueError):
        O.preset(ev, "bogus")


def test_subgroup_table(ham7):
    ev = _eval(ham7)
    thr = _thr(ham7)
    sub = O.subgroup_table(ev, thr, "tier:dangerous")
    assert set(sub["grouping"]) == {"sex", "age_band", "site"}
    for g, part in sub.groupby("grouping"):
        assert part["n"].sum() == len(ev)
    pos = ev.true_tier == 2
    assert sub[sub.grouping == "sex"]["n_positive"].sum() == pos.sum()
    male = (ev.groups["sex"] == "male")
    f = O.flags(ev, thr)["tier:dangerous"]
    row = sub[(sub.grouping == "sex") & (sub.group == "male")].iloc[0]
    assert row["n"] == male.sum()
    assert row["sensitivity"] == pytest.approx((f & pos & male).sum() / (pos & male).sum())


def test_summary_is_json_ready(ham7):
    import json
    ev = _eval(ham7, n=200)
    s = O.summary(ev, _thr(ham7))
    json.dumps(s, allow_nan=False)
    assert set(s["classes"]) == set(ham7.classes) and set(s["tiers"]) == {"high-risk", "dangerous"}


def test_mismatched_inputs_are_refused(ham7):
    with pytest.raises(ValueError):
        O.EvalSet(ham7, np.zeros(3, int), np.zeros((3, 5)))
    ev = _eval(ham7, n=50)
    with pytest.raises(ValueError):
        O.operating_table(ev, Thresholds({"a": 0.5}, {"dangerous": 0.5}))


# ---------------------------------------------------------------------- predictions computed once (embedding.py)
def test_predictions_are_cached_per_model_and_data(tmp_path, ham7, monkeypatch):
    import os

    import torch

    from conftest import tiny_card, write_dataset
    from derm_core.data.dataset import load_table
    from derm_core.evaluate import embedding as E
    from derm_core.model.checkpoint import read_card, save_model
    from derm_core.model.networks import create_model
    from derm_core.model.predictor import Predictor

    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    card = read_card(save_model(create_model("tiny_test", 7, True, "none"), tiny_card(ham7), tmp_path / "m" / "model"))
    table = load_table(write_dataset(tmp_path / "data", per_class=2), ham7)
    assert E.load_cached_predictions(card, table) is None
    first = E.predictions(card, table)
    assert first["logits"].shape == (14, 7) and first["embeddings"].shape[0] == 14

    def no_model_calls(*a, **kw):
        raise AssertionError("the model ran again")
    monkeypatch.setattr(Predictor, "predict_table", no_model_calls)
    again = E.predictions(card, table)
    assert np.array_equal(again["logits"], first["logits"])
    # another subset, or a changed image file, is other data
    assert E.data_key(table.iloc[:5]) != E.data_key(table)
    st = os.stat(table["path"].iloc[0])
    os.utime(table["path"].iloc[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert E.load_cached_predictions(card, table) is None
    # a truncated cache file is recomputed, not trusted
    E.cache_path(card, table).parent.mkdir(parents=True, exist_ok=True)
    E.cache_path(card, table).write_bytes(b"PK\x03\x04garbage")
    assert E.load_cached_predictions(card, table) is None


def test_tsne_layouts_2d_and_3d(tmp_path, monkeypatch):
    from derm_core.evaluate import embedding as E
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 40))
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.normal(0, 1, (120, 40))
    xy = E.tsne(x, 2, n_jobs=1)
    assert xy.shape == (120, 2) and np.isfinite(xy).all()
    # clusters stay apart: each point's nearest neighbour in the layout has its class
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(120) * 1e9
    assert (y[d.argmin(1)] == y).mean() > 0.9
    assert E.tsne(x[:30], 3, n_jobs=1).shape == (30, 3)
    assert E.tsne(x[:3], 2).shape == (3, 2)   # too few points: no crash


# ---------------------------------------------------------------------- the lab's figures (figures.py)
def test_lab_figures_are_valid_plotly_and_the_fast_path_matches(ham7, monkeypatch):
    import json

    import plotly.io as pio

    from derm_core.evaluate import figures as F
    ev = _eval(ham7, n=300)
    thr = _thr(ham7)
    table = O.operating_table(ev, thr)
    xy = np.random.default_rng(0).normal(size=(300, 2))
    tiers = np.array(ham7.tier_names)[assign_tiers(ev.probs, ham7, thr.tiers)]

    def build():
        return [F.roc_figure(ev, table, ev.target_names()[:2]), F.roc_figure(ev, table, list(ham7.classes)),
                F.sens_spec_figure(ev, table, ev.target_names()),
                F.confusion_figure(ev.confusion, list(ham7.classes), True, "classes"),
                F.confusion_figure(O.tier_confusion(ev, thr), ham7.tier_names, False),
                F.reliability_figure(ev.calibration),
                F.embedding_figure(xy, tiers, ev.image_ids, {t: ham7.tiers[t].colour for t in ham7.tier_names}),
                F.embedding_figure(np.c_[xy, xy[:, :1]], np.array(ham7.classes)[ev.y], ev.image_ids),
                F.training_figure([{"epoch": 1, "train_loss": 1.2, "val_loss": 1.3, "val_accuracy": 0.4},
                                   {"epoch": 2, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5}])]
    fast = build()
    monkeypatch.setattr(F, "VALIDATE", True)
    checked = build()                       # raises on any invalid property
    for f, c in zip(fast, checked):
        assert json.loads(pio.to_json(f.to_dict(), validate=False)) == json.loads(pio.to_json(c.to_dict(), validate=False))
    sens_spec = checked[2]
    assert len([d for d in sens_spec.data if d.name == "sensitivity"]) == len(ev.target_names())
    roc = checked[1]
    assert sum(1 for d in roc.data if d.mode == "markers") == 7      # one operating point per class


# ---------------------------------------------------------------------- issue 17: readable lab figures
def test_the_two_roc_figures_have_their_own_titles(ham7):
    from derm_core.evaluate import figures as F
    ev = _eval(ham7, n=300)
    table = O.operating_table(ev, _thr(ham7))
    tiers = [t for t in ev.target_names() if t.startswith(O.TIER_PREFIX)]
    t_tiers = F.roc_figure(ev, table, tiers).layout.title.text
    t_classes = F.roc_figure(ev, table, list(ev.classes)).layout.title.text
    assert t_tiers != t_classes and "tier" in t_tiers and "class" in t_classes
    assert F.roc_figure(ev, table, tiers, title="mine").layout.title.text == "mine"


def test_sens_spec_grid_spaces_its_rows_and_names_its_axes(ham7):
    from derm_core.evaluate import figures as F
    ev = _eval(ham7, n=300)
    targets = ev.target_names()                       # 2 tiers + 7 classes: 3 rows of 3
    fig = F.sens_spec_figure(ev, O.operating_table(ev, _thr(ham7)), targets)
    lay = fig.layout
    plot_px = lay.height - lay.margin.t - lay.margin.b
    axes = [lay[f"xaxis{'' if i == 0 else i + 1}"] for i in range(len(targets))]
    yaxes = [lay[f"yaxis{'' if i == 0 else i + 1}"] for i in range(len(targets))]
    assert all(ax.title.text == "threshold" for ax in axes)
    titles = {a.text: a for a in lay.annotations}
    for i, t in enumerate(targets):
        a = titles[F.sens_spec_panel_title(ev, t)]
        assert a.hovertext == ev.target_label(t)                      # the full name on hover
        assert a.y >= yaxes[i].domain[1]                              # above its own panel
        if i >= 3:                                          # ... and clear of the panel above's ticks and title
            above = yaxes[i - 3].domain[0]
            gap_px = (above - yaxes[i].domain[1]) * plot_px
            assert gap_px >= F.SENS_SPEC_AXIS_PX + F.SENS_SPEC_TITLE_PX - 1
    # long class names never crowd a panel's title: class codes there
    assert all(len(F.sens_spec_panel_title(ev, c)) <= 6 for c in ev.classes)
    assert lay.margin.b >= 20 and lay.legend.y == 0 and lay.legend.yref == "container"   # the legend below the grid
