"""The out-of-scope gate: its statistics, its file, and what a flagged photo gets (nothing clinical)."""
from __future__ import annotations

import json
from html import escape

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from derm_core.cli import main
from derm_core.model import ood
from derm_core.model.predictor import Predictor
from derm_core.triage.report import case_report_html, case_report_pdf
from tests.conftest import CLASS_COLOURS, lesion_image


def _gaussian_feats(rng, n, shift=0.0):
    return [rng.normal(shift, 1.0, (n, d)) for d in (6, 10, 14)]


def test_detector_flags_far_points_and_passes_its_share_of_lesions():
    rng = np.random.default_rng(0)
    det = ood.fit_detector(_gaussian_feats(rng, 800), _gaussian_feats(rng, 400))
    inside = det.scores(_gaussian_feats(rng, 2000)) > det.threshold
    assert 0.0 < inside.mean() < 0.03          # about 1 - IN_DIST_PASS of new in-distribution points
    far = _gaussian_feats(rng, 50, shift=3.0)
    assert (det.scores(far) > det.threshold).all()
    # one depth alone far away is enough: the score is the largest ratio
    mixed = _gaussian_feats(rng, 50)
    mixed[1] = mixed[1] + 4.0
    assert (det.scores(mixed) > det.threshold).all()


def test_detector_file_round_trips_and_refuses_damage():
    rng = np.random.default_rng(1)
    det = ood.fit_detector(_gaussian_feats(rng, 300), _gaussian_feats(rng, 100))
    back = ood.OodDetector.from_tensors(det.tensors())
    x = _gaussian_feats(rng, 20, shift=0.5)
    assert np.allclose(back.scores(x), det.scores(x)) and back.threshold == det.threshold
    t = det.tensors()
    del t["precision_1"]
    with pytest.raises(ValueError, match="precision_1"):
        ood.OodDetector.from_tensors(t)
    t = det.tensors()
    t["scale_0"] = torch.tensor([float("nan")], dtype=torch.float64)
    with pytest.raises(ValueError, match="non-finite"):
        ood.OodDetector.from_tensors(t)
    t = det.tensors()
    t["mean_2"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="do not fit"):
        ood.OodDetector.from_tensors(t)


def test_reference_features_have_one_block_per_depth():
    feats = ood.features([lesion_image(CLASS_COLOURS["mel"], (200, 150)), Image.new("RGB", (40, 30), (9, 9, 9))])
    assert len(feats) == len(ood.DEPTHS)
    assert all(f.shape[0] == 2 and f.shape[1] % 2 == 0 and np.isfinite(f).all() for f in feats)


def test_a_flagged_photo_gets_nothing_clinical(tiny_predictor, tmp_path):
    """A gate that flags everything: the result is withheld with the reason; "anyway" triages and marks it."""
    feats = ood.features([lesion_image(CLASS_COLOURS["mel"], (200, 150), seed=k) for k in range(12)])
    det = ood.fit_detector(feats, feats)
    tiny_predictor.ood = ood.OodDetector(det.means, det.precisions, det.scales, threshold=-1.0)
    photo = lesion_image(CLASS_COLOURS["mel"], (200, 150))
    res = tiny_predictor.predict(photo)
    assert res.withheld and res.out_of_scope and not res.differential and res.tier == "" and not res.probs
    d = res.to_dict()
    assert d["risk_tier"] is None and d["differential"] == [] and d["probabilities"] is None and d["withheld"]
    forced = tiny_predictor.predict(photo, anyway=True)
    assert forced.withheld is None and forced.out_of_scope and forced.differential and forced.tier
    assert any("triaged anyway" in n for n in forced.notes)
    html = case_report_html(photo, res, tiny_predictor.taxonomy, tiny_predictor.card.thresholds, "tiny", "0")
    assert "Not triaged: out of scope" in html and escape(res.withheld) in html and "<table>" not in html
    pdf = case_report_pdf(photo, res, tiny_predictor.taxonomy, tiny_predictor.card.thresholds, "tiny", "0")
    assert pdf.startswith(b"%PDF")


def test_legacy_or_foreign_detector_files_disable_the_gate_with_the_reason(tiny_predictor, tmp_path):
    from derm_core.model.card import OutOfScope
    from derm_core.model.checkpoint import atomic_save_tensors
    rng = np.random.default_rng(3)
    det = ood.fit_detector(_gaussian_feats(rng, 200), _gaussian_feats(rng, 100))
    card = tiny_predictor.card.with_(path=tmp_path / "model.json")
    atomic_save_tensors(ood.detector_path(card.path), det.tensors())
    ok, note = ood.load_detector_checked(card.with_(out_of_scope=OutOfScope(ood.SCORE, det.threshold, 0.99, "x")))
    assert ok is not None and note is None
    none, note = ood.load_detector_checked(card.with_(out_of_scope=OutOfScope("feature", 0.2)))
    assert none is None and "older kind" in note
    none, note = ood.load_detector_checked(card.with_(out_of_scope=OutOfScope(ood.SCORE, det.threshold * 2)))
    assert none is None and "does not belong" in note


# ---------------------------------------------------------------- the shipped model's gate
@pytest.fixture(scope="module")
def shipped():
    return Predictor.from_path()


def test_the_shipped_gate_refuses_the_cat(shipped):
    cat = Image.fromarray(skimage.data.chelsea())
    res = shipped.predict(cat)
    assert res.withheld and res.tier == "" and "does not look like a dermatoscopic photo" in res.withheld


def test_the_shipped_gate_passes_ham_test_lesions(shipped, ham_dir):
    import pandas as pd
    split = pd.read_csv(shipped.card.split_file)
    ids = split.loc[split["split"] == "test", "image_id"].head(40)
    flagged = [i for i in ids if shipped.predict(Image.open(ham_dir / "images" / f"{i}.jpg")).withheld]
    assert len(flagged) <= 2, flagged


def test_cli_predict_refuses_the_cat_unless_anyway(tmp_path, capsys):
    path = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    assert main(["predict", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["withheld"] and out["risk_tier"] is None and out["differential"] == [] and out["prediction_set"] is None
    assert main(["predict", str(path), "--json", "--crop", "none", "--anyway"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["withheld"] is None and forced["risk_tier"] and forced["out_of_scope"] is True
    assert main(["explain", str(path), "--method", "gradcam", "--out", str(tmp_path / "x"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["withheld"]


def test_the_triage_page_refuses_the_cat_and_offers_triage_anyway(monkeypatch):
    import io

    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT, page_text
    monkeypatch.delenv("DERMTRIAGE_MODEL", raising=False)
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, format="JPEG")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["lime_samples"] = 50
    at.run()
    at.file_uploader[0].set_value(("cat.jpg", buf.getvalue(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Not triaged: out of scope" in text and "Risk tier:" not in text and "Biopsy site" not in text
    assert [b.label for b in at.get("download_button")] == ["Report (HTML)", "Report (PDF)"]
    assert [t.key for t in at.sidebar.text_input] == ["data_dir"]    # the sidebar keeps its dataset folder
    at.button(key="triage_anyway").click().run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Triaged anyway" in text and "Risk tier:" in text
