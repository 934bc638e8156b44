"""Train -> save -> load -> predict on a tiny synthetic set; resume; DDP with 2 CPU processes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import CLASS_COLOURS, ROOT, lesion_image, write_dataset
from derm_core.fit.train import Stopped, TrainConfig, class_weights, train
from derm_core.model.checkpoint import load_model
from derm_core.model.predictor import Predictor

REQUIRED_REPORT_KEYS = {"accuracy", "balanced_accuracy", "macro_auc", "per_class", "tiers", "ece", "n_images"}


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), arch="tiny_test", epochs=2, batch_size=16, lr=4.2e-3,   # 3e-3 at batch 16
                pretrained="none", workers=0, patience=5)
    return TrainConfig(**{**base, **kw})


def test_train_save_load_predict_round_trip(synthetic_data, tmp_path):
    card_path = train(_cfg(synthetic_data, tmp_path / "run", epochs=3), command="pytest")
    card = json.loads(card_path.read_text())
    assert card["training"]["command"] == "pytest" and card["training"]["epochs_run"] == 3
    assert card["temperature"] > 0 and set(card["thresholds"]["classes"]) == set(CLASS_COLOURS)
    assert set(card["metrics"]["test"]) >= {"accuracy", "balanced_accuracy", "macro_auc"}
    ood = card["out_of_scope"]
    assert ood["score"] == "imagenet_texture" and 0 <= ood["report"]["auroc"] <= 1
    assert ood["report"]["non_lesion_flagged"] > 0.5      # even a gate fitted on 70 synthetic photos refuses most
    assert (tmp_path / "run" / "model.ood.safetensors").is_file()
    for split in ("val", "test"):
        assert REQUIRED_REPORT_KEYS <= set(json.loads((tmp_path / "run" / f"report_{split}.json").read_text()))
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 3
    # the split file is reused and lesion-disjoint
    import pandas as pd
    s = pd.read_csv(tmp_path / "run" / "split.csv")
    assert (s.groupby("group")["split"].nunique() == 1).all()

    model, loaded = load_model(card_path)
    p = Predictor(model, loaded, device=torch.device("cpu"))
    res = p.predict(lesion_image(CLASS_COLOURS["mel"]), anyway=True)   # a gate fitted on 50 photos is strict
    assert abs(sum(res.probs.values()) - 1) < 1e-5
    assert res.out_of_scope is not None and res.ood_score is not None
    assert res.tier in ("low-risk", "high-risk", "dangerous") and res.differential


def test_learns_the_synthetic_classes(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=20)   # 20 validation images: one lucky guess is 5 points
    card_path = train(_cfg(data, tmp_path / "run", epochs=8, metadata=False))
    hist = json.loads(card_path.read_text())["training"]["history"]
    assert max(h["val_accuracy"] for h in hist) > 0.6  # 7 balanced classes: chance is 0.14
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]


def test_stop_then_resume(synthetic_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(synthetic_data, out, epochs=1), command="first")
    first = json.loads((out / "last.json").read_text())
    assert first["epoch"] == 1
    card = train(_cfg(synthetic_data, out, epochs=2, monitor="val_macro_auc"), command="second")  # from epoch 1
    training = json.loads(card.read_text())["training"]
    hist = training["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[0] == first["history"][0]
    assert training["commands"] == ["first", "second"]
    assert training["wall_time_s"] == pytest.approx(sum(h["seconds"] for h in hist), abs=0.2)
    best_auc = max(h["val_macro_auc"] for h in hist)
    assert training["best_epoch"] == min(h["epoch"] for h in hist if h["val_macro_auc"] == best_auc)


def test_stop_file_leaves_resumable_checkpoint(synthetic_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    import derm_core.fit.train as T
    real = T._write_progress

    def stop_after_first_batch(o, **kw):
        real(o, **kw)
        if kw.get("state") == "training":
            (o / "STOP").touch()
    monkeypatch.setattr(T, "_write_progress", stop_after_first_batch)
    with pytest.raises(Stopped):
        train(_cfg(synthetic_data, out, epochs=2))
    assert json.loads((out / "progress.json").read_text())["state"] == "stopped"
    assert (out / "last.safetensors").is_file() and not (out / "model.json").exists()
    monkeypatch.setattr(T, "_write_progress", real)
    assert train(_cfg(synthetic_data, out, epochs=2)).is_file()


def test_class_weights():
    y = np.array([0] * 90 + [1] * 10)
    w = class_weights(y, 3, "inverse")
    assert w[1] / w[0] == pytest.approx(9.0) and w[2] == 0
    assert class_weights(y, 3, "sqrt")[1] / class_weights(y, 3, "sqrt")[0] == pytest.approx(3.0)
    assert float(w[y].mean()) == pytest.approx(1.0)


def test_ddp_two_cpu_processes(synthetic_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "derm_core", "train", "--data", str(synthetic_data), "--out", str(out), "--arch", "tiny_test",
           "--epochs", "2", "--batch-size", "8", "--pretrained", "none", "--workers", "0", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["device"] == "cpu x2"
    assert card["training"]["epochs_run"] == 2
    load_model(out / "model.json")


def test_fine_tune_from_a_trained_model_and_monitor(synthetic_data, tmp_path):
    first = train(_cfg(synthetic_data, tmp_path / "a", epochs=2))
    src, _ = load_model(first)
    card = train(_cfg(synthetic_data, tmp_path / "b", epochs=1, init_from=str(first), monitor="val_macro_auc",
                      lr=1e-6))  # the stem is frozen in the first epoch: it stays the source's
    tuned, loaded = load_model(card)
    assert torch.allclose(src.backbone.conv_stem.weight, tuned.backbone.conv_stem.weight, atol=1e-6)
    assert loaded.training.config["monitor"] == "val_macro_auc"
    with pytest.raises(ValueError, match="monitor"):
        train(_cfg(synthetic_data, tmp_path / "c", monitor="val_f1"))


def test_checkpoint_counters_travel_with_the_weights(tmp_path):
    """A kill between the weights and the readable last.json must not pair new weights with old counters."""
    from derm_core.fit.train import load_checkpoint, save_checkpoint

    def fresh():
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(m.parameters(), lr=0.1)
        return m, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    model, opt, sched = fresh()
    for epoch in (1, 2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
        if epoch == 1:
            save_checkpoint(tmp_path, model, opt, sched, 1, [{"epoch": 1}], {}, ["first"])
            stale = (tmp_path / "last.json").read_text()
    save_checkpoint(tmp_path, model, opt, sched, 2, [{"epoch": 1}, {"epoch": 2}], {}, ["first"])
    (tmp_path / "last.json").write_text(stale)          # as if killed before the readable copy was replaced
    m2, opt2, sched2 = fresh()
    meta = load_checkpoint(tmp_path, m2, opt2, sched2)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2 and sched2.last_epoch == sched.last_epoch
    assert torch.equal(m2.weight, model.weight)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
