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
          "report_test.json", "split.csv", "log.jsonl", SHEET)


def test_release_builds_one_bundle_and_is_repeatable(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=8)
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
    assert changed <= {"model.json", SHEET}, changed
    strip = lambda d: {k: v for k, v in d.items() if k != "release"}   # noqa: E731 - its timing differs
    assert strip(json.loads(before["model.json"])) == strip(json.loads(after["model.json"]))
    drop = lambda b: [ln for ln in b.decode().splitlines() if not ln.startswith("took ")]   # noqa: E731
    assert drop(before[SHEET]) == drop(after[SHEET])
