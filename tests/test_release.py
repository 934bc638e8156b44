"""The release command: one bundle from a finished run, its parts tied together, the same when re-run."""
from __future__ import annotations

import json

from conftest import write_dataset
from derm_core.cli import main
from derm_core.evaluate.sheet import SHEET, model_sheet
from derm_core.fit.train import TrainConfig, train
from derm_core.model import conformal, ood
from derm_core.model.checkpoint import read_card

BUNDLE = ("model.safetensors", "model.json", "model.ood.safetensors", "model.conformal.json", "report_val.json",
          "report_test.json", "split.csv", "log.jsonl", "outline.safetensors", "outline.json", SHEET)


def with_masks(data):
    """A mask (a centred ellipse) beside every image, as HAM10000 has, so the release trains its outline."""
    import numpy as np
    from PIL import Image
    (data / "masks").mkdir()
    for p in (data / "images").iterdir():
        w, h = Image.open(p).size
        yy, xx = np.mgrid[:h, :w]
        m = ((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 < 1
        Image.fromarray(m.astype(np.uint8) * 255).save(data / "masks" / f"{p.stem}.png")
    return data


def test_release_builds_one_bundle_and_is_repeatable(tmp_path):
    data = with_masks(write_dataset(tmp_path / "data", per_class=8))
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="tiny_test", epochs=2, batch_size=16,
                            pretrained="none", workers=0), command="pytest")
    out = tmp_path / "bundle"
    assert main(["release", str(run.parent), "--data", str(data), "--out", str(out)]) == 0
    assert all((out / f).is_file() for f in BUNDLE), sorted(p.name for p in out.iterdir())
    card = read_card(out / "model.json")
    sha = card.identity().weights_sha256
    cal = conformal.load_calibration(card)                         # raises if it belongs to other weights
    assert cal.source["weights_sha256"] == sha and cal.source["temperature"] == card.temperature
    det, note = ood.load_detector_checked(card)
    assert det is not None and note is None
    for name in ("val", "test"):
        rep = json.loads((out / f"report_{name}.json").read_text())
        assert rep["model_identity"] == {"weights_sha256": sha, "temperature": card.temperature}
        assert rep["accuracy"] == card.metrics[name]["accuracy"] and "error" not in rep["conformal"]
    assert card.extra["release"]["command"].startswith("python -m derm_core release")
    sheet = (out / SHEET).read_text()
    assert sheet == model_sheet(card) and sha in sheet and "Out-of-scope gate" in sheet
    before = {f: (out / f).read_bytes() for f in BUNDLE}

    assert main(["release", str(run.parent), "--data", str(data), "--out", str(out)]) == 0    # the same, again
    after = {f: (out / f).read_bytes() for f in BUNDLE}
    changed = {f for f in BUNDLE if before[f] != after[f]}
    assert changed <= {"model.json", "outline.json", SHEET}, changed
    untimed = lambda d: {**d, "training": {k: v for k, v in d["training"].items() if k != "seconds"}}   # noqa: E731
    assert untimed(json.loads(before["outline.json"])) == untimed(json.loads(after["outline.json"]))
    assert "skin_tones" in card.extra and sum(card.extra["skin_tones"]["train"].values()) > 0
    assert "Suggested lesion crop" in sheet and "Skin tone of the data" in sheet
    strip = lambda d: {k: v for k, v in d.items() if k != "release"}   # noqa: E731 - its timing differs
    assert strip(json.loads(before["model.json"])) == strip(json.loads(after["model.json"]))
    drop = lambda b: [ln for ln in b.decode().splitlines() if not ln.startswith("took ")]   # noqa: E731
    assert drop(before[SHEET]) == drop(after[SHEET])
