"""Issue 12 in the CLI: predict --json prediction_set/level, report.json "conformal", explain --seed and map quality."""
import json

import numpy as np
import pytest

from conftest import CLASS_COLOURS, lesion_image, write_dataset
from derm_core.cli import main
from derm_core.model import conformal as C
from derm_core.model.checkpoint import read_card


# A gate fitted on a few dozen synthetic photos refuses much of anything else; these tests are about the
# prediction sets and maps, so they triage with --anyway (the gate has its own tests: test_ood_gate.py).
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli12")
    data = write_dataset(root / "data", per_class=6)
    assert main(["train", "--data", str(data), "--out", str(root / "run"), "--arch", "tiny_test", "--epochs", "1",
                 "--batch-size", "16", "--pretrained", "none", "--workers", "0"]) == 0
    return root, data


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_predict_json_has_a_prediction_set_once_calibrated(trained, tmp_path, capsys, monkeypatch):
    root, data = trained
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    img = tmp_path / "x.png"
    lesion_image(CLASS_COLOURS["mel"], (200, 150)).save(img)
    model = str(root / "run" / "model.json")
    card = read_card(model)
    C.calibration_path(card).unlink(missing_ok=True)
    assert main(["predict", str(img), "--model", model, "--anyway", "--json"]) == 0
    out = _json(capsys)
    assert out["prediction_set"] is None and out["level"] == 0.9 and "no conformal calibration" in out["prediction_set_note"]
    # calibrate on the run's validation split, then the set is there, ordered by probability
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import load_splits
    table = load_table(data, card.taxonomy)
    cal = C.fit_for_model(card, table, load_splits(table, card.split_file).to_numpy())
    for level in ("0.5", "0.95"):
        assert main(["predict", str(img), "--model", model, "--anyway", "--json", "--level", level]) == 0
        out = _json(capsys)
        assert out["level"] == float(level)
        expected = cal.prediction_set(out["probabilities"], float(level))
        assert out["prediction_set"] == expected
        probs = [out["probabilities"][c] for c in out["prediction_set"]]
        assert probs == sorted(probs, reverse=True)
        if expected:
            assert f"{float(level):.0%} of the time" in out["prediction_set_note"]
    assert main(["predict", str(img), "--model", model, "--anyway", "--json", "--level", "1.5"]) == 2
    assert "level" in capsys.readouterr().err


def test_report_json_gains_a_conformal_block(trained, tmp_path, capsys, monkeypatch):
    root, data = trained
    monkeypatch.setenv("DERMTRIAGE_CACHE", str(tmp_path / "cache"))
    card = read_card(root / "run" / "model.json")
    from derm_core.data.dataset import load_table
    from derm_core.data.splits import load_splits
    table = load_table(data, card.taxonomy)
    C.fit_for_model(card, table, load_splits(table, card.split_file).to_numpy())
    assert main(["evaluate", "--data", str(data), "--model", str(root / "run"), "--split", "test",
                 "--out", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())["conformal"]
    assert rep["level"] == 0.9 and 0 <= rep["coverage"] <= 1 and 0 <= rep["mean_set_size"] <= 7
    assert set(rep["per_class"]) == set(card.classes)
    n = sum(v["n"] for v in rep["per_class"].values())
    covered = sum(v["coverage"] * v["n"] for v in rep["per_class"].values() if v["n"])
    assert covered / n == pytest.approx(rep["coverage"])


def test_explain_seed_and_map_quality(trained, tmp_path, capsys):
    root, _ = trained
    img = tmp_path / "x.png"
    lesion_image(CLASS_COLOURS["bkl"], (120, 90), seed=4).save(img)
    runs = {}
    for seed in (0, 0, 7):
        assert main(["explain", str(img), "--anyway", "--method", "lime", "--samples", "40", "--seed", str(seed),
                     "--model", str(root / "run"), "--out", str(tmp_path / f"o{seed}"), "--json"]) == 0
        out = _json(capsys)
        runs.setdefault(seed, []).append(out["superpixel_weights"])
        q = out["map_quality"]
        assert {"deletion_auc", "insertion_auc", "random_deletion_auc", "inside_lesion", "summary"} <= set(q)
        verdict = "no verdict" if q["inconclusive"] else "faithful" if q["faithful"] else "NOT faithful"
        assert q["summary"].startswith(verdict), q
    assert runs[0][0] == runs[0][1]                     # same seed, same weights
    assert runs[7][0] != runs[0][0]                     # another seed, another sample
    assert main(["explain", str(img), "--anyway", "--method", "gradcam", "--model", str(root / "run"),
                 "--out", str(tmp_path / "g"), "--json"]) == 0
    q = _json(capsys)["map_quality"]
    assert q["method"] == "gradcam" and np.isfinite(q["deletion_auc"])
