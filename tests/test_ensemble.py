"""Ensembles as a model (issue 19): trained runs averaged into one card with one calibration,
explained by member (Grad-CAM) or as a whole (LIME), run on the fast path, shipped by release."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from conftest import write_dataset
from derm_core.cli import main
from derm_core.errors import ModelError
from derm_core.explain import maps as E
from derm_core.fit.ensemble import combine, member_dir
from derm_core.model.card import ModelCard
from derm_core.model.checkpoint import embedding_width, load_model, read_card
from derm_core.model.conformal import calibration_path
from derm_core.model.inference import Runner
from derm_core.model.predictor import Predictor

TINY = ["--arch", "tiny_test", "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--workers", "0"]


@pytest.fixture(scope="module")
def ens(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    data = write_dataset(root / "data", per_class=6)
    assert main(["train-ensemble", "--data", str(data), "--out", str(root / "ens"), *TINY,
                 "--member", "tiny_test", "3", "--member", "tiny_test", "8"]) == 0
    return root, data


def photo(data, name="mel_001"):
    from PIL import Image
    return Image.open(data / "images" / f"{name}.jpg").convert("RGB")


def test_the_card_lists_its_members_and_round_trips(ens):
    root, _ = ens
    card = read_card(root / "ens" / "model.json")
    assert card.is_ensemble and card.arch == "ensemble" and card.architecture == "ensemble of 2: 2 x tiny_test"
    assert [m.training["seed"] for m in card.members] == [3, 8]
    for i, m in enumerate(card.members):
        member = read_card(member_dir(root / "ens", i) / "model.json")
        assert (m.name, m.version, m.weights_sha256) == (member.name, member.version, member.weights_sha256())
        assert member.split_file.resolve() == (root / "ens" / "split.csv").resolve()   # one split for all
    assert ModelCard.from_json(card.to_json(), card.path) == card
    assert card.training.details["commands"][-1].startswith("python -m derm_core train-ensemble")


def test_the_ensemble_averages_its_members_logits(ens):
    root, data = ens
    model, card = load_model(root / "ens")
    members = [load_model(member_dir(root / "ens", i))[0] for i in range(2)]
    x = torch.randn(3, 3, *card.input_size)
    with torch.no_grad():
        want = torch.stack([m(x) for m in members]).mean(0)
        assert torch.allclose(model(x), want, atol=1e-5)
        assert not torch.allclose(members[0](x), members[1](x), atol=1e-3)    # two different members
        # the DermNet shape the pipeline uses: backbone -> fuse -> head gives the same logits
        assert torch.allclose(model.head(model.fuse(model.backbone(x))), want, atol=1e-5)
    pred = Predictor(model, card, device="cpu", fast_path="fp32")
    e = pred.forward(pred.preprocess([photo(data)]))[1]
    assert e.shape[1] == embedding_width(card) == sum(model.embed_widths)


def test_one_temperature_thresholds_calibration_and_gate_for_the_whole(ens):
    root, _ = ens
    card = read_card(root / "ens" / "model.json")
    assert card.thresholds.name != "uncalibrated" and card.temperature > 0 and card.out_of_scope is not None
    cal = json.loads(calibration_path(card).read_text())
    assert cal["source"]["weights_sha256"] == card.weights_sha256()
    rep = json.loads((root / "ens" / "report_val.json").read_text())
    assert rep["model_identity"]["weights_sha256"] == card.weights_sha256()


def test_the_fast_path_runs_each_members_frozen_copy(ens):
    root, data = ens
    model, card = load_model(root / "ens")
    x = Predictor(model, card, device="cpu").preprocess([photo(data), photo(data, "nv_002")])
    eager = Runner(model, True, torch.device("cpu"), card.input_size, "fp32")
    eager.eager = True
    frozen = Runner(model, True, torch.device("cpu"), card.input_size, "fp32")
    assert frozen._build().backbone is not None             # traced, not eager
    for a, b in zip(eager(x), frozen(x)):
        assert torch.allclose(a, b, atol=1e-4)


def test_gradcam_explains_a_named_member_and_lime_the_whole(ens):
    root, data = ens
    pred = Predictor.from_path(root / "ens", device="cpu")
    img = photo(data)
    cams = [E.cam_heatmap(pred, img, target=4, member=i) for i in (0, 1)]
    assert [c.member for c in cams] == [0, 1] and E.cam_heatmap(pred, img, target=4).member == 0
    assert not np.allclose(cams[0].heatmap, cams[1].heatmap, atol=1e-3)
    alone = Predictor.from_path(member_dir(root / "ens", 1), device="cpu")
    assert np.allclose(E.cam_heatmap(alone, img, target=4).heatmap, cams[1].heatmap, atol=1e-4)
    with pytest.raises(ValueError, match="member must be 0..1"):
        E.cam_heatmap(pred, img, member=2)
    lime = E.lime_explanation(pred, img, num_samples=40, seed=0)
    assert lime.target == E.predicted_class(pred, img) and lime.weights


def test_explain_names_the_member_on_the_command_line(ens, tmp_path, capsys):
    root, data = ens
    args = ["explain", str(data / "images" / "mel_001.jpg"), "--model", str(root / "ens"), "--out", str(tmp_path),
            "--anyway", "--json"]
    assert main([*args, "--member", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["explains"] == "member 2 of 2: member-2 (tiny_test)"
    assert main([*args, "--member", "3"]) == 2
    assert "this ensemble has 2 members" in capsys.readouterr().err


def test_members_of_another_split_or_input_are_refused(ens, tmp_path):
    root, data = ens
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "other"), *TINY, "--seed", "11"]) == 0
    with pytest.raises(ModelError, match="another split"):
        combine([member_dir(root / "ens", 0), tmp_path / "other"], data, tmp_path / "mixed")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "big"), *TINY, "--image-size", "32", "40",
                 "--split-file", str(root / "ens" / "split.csv")]) == 0
    with pytest.raises(ModelError, match="input size differ"):
        combine([member_dir(root / "ens", 0), tmp_path / "big"], data, tmp_path / "mixed")
    with pytest.raises(ModelError, match="itself an ensemble"):
        combine([root / "ens", member_dir(root / "ens", 0)], data, tmp_path / "mixed")
    # the same split: combined into a calibrated ensemble like the trained one
    path = combine([member_dir(root / "ens", 0), member_dir(root / "ens", 1)], data, tmp_path / "again")
    assert read_card(path).members == read_card(root / "ens" / "model.json").members


def test_a_finished_member_is_kept_when_the_ensemble_is_run_again(ens, tmp_path):
    root, data = ens
    out = tmp_path / "ens"
    args = ["train-ensemble", "--data", str(data), "--out", str(out), *TINY, "--members", "2"]
    (out).mkdir()
    (out / "STOP").touch()          # a STOP left from an earlier job is not this run's
    assert main(args) == 0
    first = member_dir(out, 0) / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    (out / "model.json").unlink()
    assert main(args) == 0
    assert first.stat().st_mtime_ns == stamp and (out / "model.json").is_file()
    assert [m.training["seed"] for m in read_card(out / "model.json").members] == [0, 1]


def test_an_ensemble_needs_two_members(tmp_path, capsys):
    assert main(["train-ensemble", "--data", str(tmp_path), "--out", str(tmp_path / "e"), *TINY, "--members", "1"]) == 2
    assert "--members" in capsys.readouterr().err
    assert main(["train-ensemble", "--data", str(tmp_path), "--out", str(tmp_path / "e"), *TINY,
                 "--member", "no_such_net", "1", "--member", "tiny_test", "2"]) == 2
    assert "not a known architecture" in capsys.readouterr().err


def test_release_ships_an_ensemble_with_its_members_in_the_sheet(ens, tmp_path):
    from derm_core.fit.release import release
    root, data = ens
    path = release(root / "ens", data, tmp_path / "bundle", "python -m derm_core release ...", progress=lambda *_: None)
    card = read_card(path)
    assert card.is_ensemble and card.members == read_card(root / "ens" / "model.json").members
    sheet = (tmp_path / "bundle" / "MODEL.md").read_text()
    assert "ensemble of 2: 2 x tiny_test" in sheet and "| 2: member-2 | `tiny_test` | 8 |" in sheet
    assert Predictor.from_path(path, device="cpu").predict(photo(data), anyway=True).tier


def test_the_triage_page_says_which_member_grad_cam_explains(ens, monkeypatch):
    """An ensemble on the triage page: a member picker for the heat map, whose caption names the
    member; LIME's caption says it explains the whole ensemble."""
    import io

    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    root, data = ens
    monkeypatch.setenv("DERMTRIAGE_MODEL", str(root / "ens" / "model.json"))
    monkeypatch.delenv("DERMTRIAGE_DATA", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["lime_samples"] = 50
    at.run()
    buf = io.BytesIO()
    photo(data).save(buf, format="PNG")
    at.file_uploader[0].set_value(("lesion.png", buf.getvalue(), "image/png"))
    at.run()
    assert not at.exception, at.exception

    def captions():
        return [str(i.caption) for e in at.get("image") for i in e.proto.imgs]
    if "triage_anyway" in [b.key for b in at.button]:   # a tiny model's out-of-scope gate flags most photos
        at.button(key="triage_anyway").click().run()
        assert not at.exception, at.exception
    picker = at.selectbox(key="cam_member")
    assert picker.options == ["member 1 of 2: member-1 (tiny_test)", "member 2 of 2: member-2 (tiny_test)"]
    assert any("It explains ensemble member 1 of 2" in c for c in captions())
    assert any("the whole ensemble of 2 members" in c for c in captions())
    picker.set_value(1).run()
    assert not at.exception, at.exception
    assert any("It explains ensemble member 2 of 2: member-2 (tiny_test)" in c for c in captions())
