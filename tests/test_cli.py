"""The CLI contract: train, evaluate (report.json + ISIC CSV), predict --json."""
import json

import pandas as pd
import pytest

from conftest import CLASS_COLOURS, lesion_image
from derm_core.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import write_dataset
    root = tmp_path_factory.mktemp("cli")
    data = write_dataset(root / "data", per_class=6)
    rc = main(["train", "--data", str(data), "--out", str(root / "run"), "--arch", "tiny_test", "--epochs", "1",
               "--batch-size", "16", "--pretrained", "none", "--workers", "0"])
    assert rc == 0
    return root, data


def test_evaluate_writes_report_and_isic_csv(trained, capsys):
    root, data = trained
    rc = main(["evaluate", "--data", str(data), "--model", str(root / "run" / "model.json"),
               "--out", str(root / "report.json"), "--predictions", str(root / "preds.csv")])
    assert rc == 0
    rep = json.loads((root / "report.json").read_text())
    assert rep["n_images"] == 42
    assert {"accuracy", "balanced_accuracy", "macro_auc", "per_class", "tiers", "ece"} <= set(rep)
    assert set(rep["per_class"]["mel"]) >= {"auc", "sensitivity", "specificity", "threshold"}
    assert set(rep["tiers"]["dangerous"]) >= {"auc", "sensitivity", "specificity"}
    assert set(rep["subgroups"]) == {"sex", "age_band", "site"}
    preds = pd.read_csv(root / "preds.csv")
    assert list(preds.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert len(preds) == 42 and (abs(preds.iloc[:, 1:].sum(1) - 1) < 1e-4).all()


def test_evaluate_test_split_only(trained):
    root, data = trained
    assert main(["evaluate", "--data", str(data), "--model", str(root / "run"), "--split", "test",
                 "--out", str(root / "test.json")]) == 0
    split = pd.read_csv(root / "run" / "split.csv")
    assert json.loads((root / "test.json").read_text())["n_images"] == (split["split"] == "test").sum()


def test_predict_json(trained, tmp_path, capsys):
    root, _ = trained
    img = tmp_path / "x.png"
    lesion_image(CLASS_COLOURS["bcc"]).save(img)
    assert main(["predict", str(img), "--age", "60", "--sex", "female", "--site", "face",
                 "--model", str(root / "run"), "--anyway", "--json"]) == 0   # past the tiny run's strict gate
    out = json.loads(capsys.readouterr().out)
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-5
    assert out["risk_tier"] in ("low-risk", "high-risk", "dangerous") and out["action"]
    assert out["differential"] and any("age, sex, site" in n for n in out["notes"])


def test_clear_errors(trained, tmp_path, capsys):
    root, _ = trained
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(bad), "--model", str(root / "run")]) == 2
    assert "not a format DermTriage reads" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path), "--model", str(root / "run")]) == 2
    assert "metadata.csv" in capsys.readouterr().err
    assert main(["predict", str(bad), "--model", str(tmp_path / "none.json")]) == 2


def test_recalibrate_updates_card_and_records_command(trained):
    root, data = trained
    card_path = root / "run" / "model.json"
    before = json.loads(card_path.read_text())
    assert before["preprocessing"]["tta"] is True and "out_of_scope" in before
    assert main(["recalibrate", "--data", str(data), "--model", str(card_path), "--no-tta",
                 "--target", "dangerous", "0.99"]) == 0
    after = json.loads(card_path.read_text())
    assert after["preprocessing"]["tta"] is False
    assert after["thresholds"]["tier_sensitivity_targets"]["dangerous"] == 0.99
    assert "recalibrate" in after["recalibrations"][-1]["command"]
    assert after["out_of_scope"]["report"]["n_non_lesion"] > 0


@pytest.mark.parametrize("method", ["gradcam", "lime"])
def test_explain_writes_overlay_and_biopsy_site(trained, tmp_path, capsys, method):
    root, _ = trained
    img = tmp_path / "x.png"
    lesion_image(CLASS_COLOURS["mel"], (200, 150)).save(img)
    assert main(["explain", str(img), "--method", method, "--out", str(tmp_path / "out"), "--samples", "40",
                 "--model", str(root / "run"), "--anyway", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all((tmp_path / "out" / p.split("/")[-1]).is_file() for p in out["files"]) and out["seconds"] > 0
    if method == "lime":
        assert 0 <= out["biopsy_site"]["x"] < 200 and 0 <= out["biopsy_site"]["y"] < 150
        assert out["superpixel_weights"]
    else:
        assert out["target"] in CLASS_COLOURS


def test_explain_maps_the_biopsy_site_as_the_triage_page_does(trained, tmp_path, capsys):
    """The page explains a crop of a photo, the CLI a whole photo: given that crop as its photo,
    the CLI reports the page's biopsy site less the crop's offset (same rule, same mapping)."""
    from derm_core.data.clinical import Clinical
    from derm_core.data.images import load_image
    from derm_core.explain import lesion
    from derm_core.explain import maps as E
    from derm_core.model.predictor import Predictor
    from derm_core.triage.rules import biopsy_class
    root, _ = trained
    lesion_image(CLASS_COLOURS["mel"], (300, 220), seed=4).save(tmp_path / "photo.png")
    photo = load_image(tmp_path / "photo.png")
    box = (50, 40, 250, 190)
    crop = photo.crop(box)
    crop.save(tmp_path / "crop.png")
    assert main(["explain", str(tmp_path / "crop.png"), "--method", "lime", "--out", str(tmp_path / "out"),
                 "--samples", "40", "--seed", "0", "--model", str(root / "run"), "--anyway", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cli = out["biopsy_site"]
    pred = Predictor.from_path(root / "run")                  # what pages/triage.py does with the crop
    clinical = Clinical.parse(None, None, None)
    target = pred.taxonomy.index(biopsy_class(pred.predict(crop, clinical, anyway=True), pred.taxonomy))
    lime = E.lime_explanation(pred, crop, target, num_samples=40, seed=0, clinical=clinical)
    site = lesion.biopsy_site(lime, lesion.suggest_mask(crop), "the automatic lesion outline")
    assert site.suggested and cli is not None
    page = lime.geometry.point_to_photo(site.x, site.y, box)
    assert page == (cli["x"] + box[0], cli["y"] + box[1])
    assert cli["note"] == site.note and out["target"] == pred.taxonomy.classes[target]
