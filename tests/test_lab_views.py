"""What the Model lab shows, computed in derm_core.evaluate.lab_views: the t-SNE colouring at the
current thresholds, the runs table, and the number formats and clamps of its widgets."""
import math
import time

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_card
from derm_core.data.taxonomy import load_taxonomy
from derm_core.evaluate import lab_views as L
from derm_core.evaluate import operating as O
from derm_core.evaluate.figures import target_colours
from derm_core.fit.jobs import JobStatus, RunInfo
from derm_core.model.card import TrainingRecord
from derm_core.triage.rules import Thresholds

# classes of ham7: akiec bcc bkl df mel nv vasc
P = [{"mel": 0.9},                  # a: melanoma, called melanoma
     {"mel": 0.7, "nv": 0.2},       # b: naevus, called melanoma
     {"nv": 0.6, "bcc": 0.35}]      # c: basal cell carcinoma, called naevus
TRUTH = ["mel", "nv", "bcc"]


@pytest.fixture
def ev(ham7):
    probs = []
    for p in P:
        rest = [c for c in ham7.classes if c not in p]
        share = (1 - sum(p.values())) / len(rest)
        probs.append([p.get(c, share) for c in ham7.classes])
    return O.EvalSet(ham7, [ham7.index(t) for t in TRUTH], np.log(probs), 1.0, ["a", "b", "c"])


def _thr(tax, high, dangerous):
    return Thresholds({c: 0.3 for c in tax.classes}, {"high-risk": high, "dangerous": dangerous}, "t")


def test_embedding_colours_by_class_tier_and_correctness(ev, ham7):
    thr = _thr(ham7, 0.5, 0.5)
    palette = {c: f"#00000{i}" for i, c in enumerate(ham7.classes)}
    true = L.embedding_colours(ev, thr, "true class", palette)
    assert list(true.categories) == TRUTH and list(true.colours) == list(ham7.classes)
    assert true.colours["mel"] == palette["mel"]
    assert list(L.embedding_colours(ev, thr, "predicted class", palette).categories) == ["mel", "mel", "nv"]
    tier = L.embedding_colours(ev, thr, "risk tier")
    # P(dangerous) 0.9 and 0.7 reach 0.5; c: P(high-risk or worse) = 0.35 + 2 x 0.01 does not
    assert list(tier.categories) == ["dangerous", "dangerous", "low-risk"] == list(tier.tiers)
    assert tier.colours == {t: ham7.tiers[t].colour for t in ham7.tier_names}
    right = L.embedding_colours(ev, thr, "correct")
    assert list(right.categories) == ["correct", "wrong", "wrong"] and right.colours == L.CORRECT_COLOURS
    assert right.hover[1] == "b<br>true nv · predicted mel (70%)<br>tier dangerous"
    assert L.embedding_colours(ev, thr, "true class").colours["mel"] == target_colours(ev)["mel"]   # the default


def test_the_tiers_follow_the_thresholds(ev, ham7):
    view = L.embedding_colours(ev, _thr(ham7, 0.3, 0.95), "risk tier")
    assert list(view.categories) == ["high-risk"] * 3
    assert view.hover[2].endswith("tier high-risk")
    with pytest.raises(ValueError):
        L.embedding_colours(ev, _thr(ham7, 0.3, 0.95), "colour of the sky")


def test_selected_points_map_to_rows():
    points = [{"customdata": 3}, {"customdata": [5]}, {"x": 1.0}, {"customdata": None}, {"customdata": []}]
    assert L.selected_rows(points) == [3, 5]
    assert L.selected_rows([{"customdata": i} for i in range(20)], limit=4) == [0, 1, 2, 3]
    assert L.selected_rows(None) == []


def test_runs_table_and_card_summary(tmp_path):
    card = tiny_card(load_taxonomy("ham7")).with_(
        arch="tiny_test", metrics={"val": {"balanced_accuracy": 0.7, "macro_auc": 0.9}},
        training=TrainingRecord(details={"history": [{"epoch": 1}], "epochs": 3}))
    runs = [RunInfo("r1", tmp_path, JobStatus(tmp_path, "done", history=[{}, {}]), card, modified=0.0),
            RunInfo("r2", tmp_path, JobStatus(tmp_path, "failed", request={"arch": "tiny"}), None, modified=0.0)]
    t = L.runs_table(runs).set_index("run")
    assert t.loc["r1", "state"] == "finished" and t.loc["r1", "architecture"] == "tiny_test" and t.loc["r1", "epochs"] == 2
    assert t.loc["r1", "val macro AUC"] == 0.9 and pd.isna(t.loc["r1", "test macro AUC"])
    assert t.loc["r2", "architecture"] == "tiny" and t.loc["r2", "state"] == "failed"
    # a run folder restored with its card only (no progress file): the card's epochs, not 0
    restored = [RunInfo("r3", tmp_path, JobStatus(tmp_path, "done"), card.with_(
        training=TrainingRecord(details={"epochs_run": 12, "history": [{}] * 12})), modified=0.0),
                RunInfo("r4", tmp_path, JobStatus(tmp_path, "done"), card.with_(
                    training=TrainingRecord(details={"history": [{}] * 5})), modified=0.0)]
    assert list(L.runs_table(restored)["epochs"]) == [12, 5]
    assert t.loc["r1", "modified"] == time.strftime("%Y-%m-%d %H:%M", time.localtime(0.0))
    shown = L.card_summary(card)
    assert "history" not in shown["training"] and shown["training"]["epochs"] == 3 and "taxonomy" not in shown
    assert card.training.details["history"] and card.to_json()["taxonomy"]   # the run's own card is untouched


def test_number_formats_and_clamps():
    assert L.pct(0.1234) == "12.3%" and L.pct(None) == "—" and L.pct(math.nan) == "—" and L.pct(1) == "100.0%"
    assert L.duration(None) == "—" and L.duration(59.9) == "0:59" and L.duration(65) == "1:05"
    assert L.duration(3725) == "1:02:05"
    assert (L.unit_interval(-0.2), L.unit_interval(1.5), L.unit_interval(0.3)) == (0.0, 1.0, 0.3)
    assert L.prevalence_percent(0.0004) == 0.1 and L.prevalence_percent(0.12345) == 12.3
    assert L.prevalence_percent(1.0) == 99.9


def test_undefined_values_show_as_a_dash_never_none(ev, ham7):
    df = pd.DataFrame({"group": ["a", "b"], "n": [3, 1], "sensitivity": [0.5, math.nan],
                       "macro_auc": pd.Series([0.81234, None], dtype=object)})
    shown, cols, undefined = L.display_table(df)
    assert shown["sensitivity"].tolist() == ["0.500", L.UNDEFINED] and shown["macro_auc"].tolist() == ["0.812", "–"]
    assert shown["n"].tolist() == [3, 1] and shown["group"].tolist() == ["a", "b"]
    assert cols == ["sensitivity", "macro_auc"] and undefined
    assert L.display_table(df.iloc[:1])[2] is False
    # a subgroup table of few images has undefined cells (groups without the condition, ...)
    from test_operating import _eval
    small = _eval(ham7, n=24, seed=3)
    sub = O.subgroup_table(small, _thr(ham7, 0.5, 0.5), "df")
    assert sub.isna().any().any()
    shown, _, undefined = L.display_table(sub)
    text = shown.astype(str).to_string()
    assert "None" not in text and "nan" not in text.lower() and not shown.isna().any().any()
    assert undefined and L.UNDEFINED in text and L.UNDEFINED_FOOTNOTE.startswith(L.UNDEFINED)


def test_headers_read_as_words_and_values_carry_their_intervals():
    assert L.header("sensitivity_95ci") == "sensitivity 95% CI" and L.header("n_positive") == "n positive"
    assert L.header("ppv") == "PPV" and L.header("macro_auc") == "macro AUC" and L.header("mcnemar_p") == "McNemar p"
    assert L.with_interval([0.6667, float("nan"), 0.5], ["0.55–0.78", None, ""]) == ["0.667 (0.55–0.78)", L.UNDEFINED,
                                                                                     "0.500"]
