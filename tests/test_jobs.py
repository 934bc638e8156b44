"""Background training jobs: start, progress, stop, resume, re-attach, crash reports (real processes,
tiny synthetic data, the registry's tiny_test network)."""
import json
import time
from dataclasses import asdict

import pytest

from conftest import write_dataset
from derm_core.cli import build_parser
from derm_core.fit import jobs
from derm_core.fit.config import TrainConfig, config_argv


def _request(data, **kw) -> TrainConfig:
    base = dict(data=str(data), arch="tiny_test", epochs=2, batch_size=16, lr=3e-3, pretrained="none", workers=0,
                patience=50, device="cpu", tta=False)
    return TrainConfig(**{**base, **kw})


def _wait_for(pred, timeout=240, poll=0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = pred()
        if st:
            return st
        time.sleep(poll)
    raise AssertionError("timed out")


def test_request_is_a_valid_cli_command():
    req = TrainConfig(data="/d", out="/runs/x", arch="tiny_test", epochs=3, image_size=(48, 64), lr=1e-4,
                      metadata=False, limit=50, device="cpu", csv="my.csv", tta=False, monitor="val_macro_auc",
                      init_from="/m/model.json")
    a = build_parser().parse_args(["train", *config_argv(req)])
    assert (a.data, a.out, a.arch, a.epochs, a.image_size, a.lr, a.metadata, a.limit, a.device, a.csv, a.tta,
            a.monitor, a.init_from) == \
        ("/d", "/runs/x", "tiny_test", 3, [48, 64], 1e-4, False, 50, "cpu", "my.csv", False, "val_macro_auc",
         "/m/model.json")
    assert TrainConfig.from_dict(json.loads(json.dumps(asdict(req)))) == req


def test_readable_error_from_a_log_tail():
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\n    boom()\nRuntimeError: CUDA out of memory\n"
    assert jobs.readable_error("epoch 1 ...\n" + tb) == "RuntimeError: CUDA out of memory"
    assert jobs.readable_error("loading\nerror: dataset folder not found: /x\n") == "dataset folder not found: /x"
    assert jobs.readable_error("") is None


def test_empty_and_cli_made_runs(tmp_path):
    assert jobs.status(tmp_path).state == "empty"
    (tmp_path / "model.json").write_text("{}")          # a run trained with the CLI: no job file
    assert jobs.status(tmp_path).state == "done"
    assert jobs.new_run_dir("my run", tmp_path) == tmp_path / "my-run"
    (tmp_path / "my-run").mkdir()
    assert jobs.new_run_dir("my run", tmp_path) == tmp_path / "my-run-2"


def test_start_progress_reattach_stop_resume_finish(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=8)
    run = tmp_path / "runs" / "r1"
    req = _request(data, epochs=400)               # long enough to be stopped mid-training
    st = jobs.start(run, req, nice=19)
    assert st.alive and st.state in ("starting", "running")
    pid = st.pid

    # a reload / second tab: start again re-attaches to the same process
    again = jobs.start(run, req, nice=19)
    assert again.pid == pid
    jobs._CHILDREN.clear()                          # as seen from another server process
    assert jobs.status(run).alive

    running = _wait_for(lambda: (s := jobs.status(run)).phase == "training" and s.state == "running" and s)
    assert running.epochs == 400 and running.batches > 0 and running.elapsed_s > 0 and 0 <= running.fraction < 1
    assert [r.name for r in jobs.active_runs(run.parent)] == ["r1"]

    st = jobs.stop(run)
    assert st.state in ("stopping", "stopped")
    st = jobs.wait(run, timeout=240)
    assert st.state == "stopped" and st.resumable and not st.alive, (st.state, st.log_tail)
    assert st.returncode in (None, jobs.STOPPED_EXIT)
    stopped_at = json.loads((run / "last.json").read_text())["epoch"]

    # resume (fewer epochs, so it finishes quickly): continues from the checkpoint
    st = jobs.start(run, _request(data, epochs=stopped_at + 1), nice=19)
    st = jobs.wait(run, timeout=300)
    assert st.state == "done", (st.error, st.log_tail)
    assert st.model == run / "model.json" and st.fraction == 1.0
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["command"].startswith("python -m derm_core train ")
    assert [h["epoch"] for h in card["training"]["history"]][-1] == stopped_at + 1
    assert "resuming" in (run / "train.log").read_text()
    runs = jobs.list_runs(run.parent)
    assert runs[0].name == "r1" and runs[0].card.arch == "tiny_test" and runs[0].status.state == "done"
    with pytest.raises(jobs.JobError, match="already finished"):
        jobs.start(run, req)


def test_crash_is_reported_with_a_readable_error(tmp_path):
    run = tmp_path / "runs" / "bad"
    jobs.start(run, _request(tmp_path / "no-such-folder"), nice=19)
    st = jobs.wait(run, timeout=240)
    assert st.state == "failed" and not st.alive
    assert "dataset folder not found" in st.error
    assert st.returncode == 2 and not st.resumable


def test_stop_while_starting_and_force_stop(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=4)
    run = tmp_path / "runs" / "early"
    st = jobs.start(run, _request(data), nice=19)
    assert st.state == "starting"
    st = jobs.stop(run)                       # nothing to save yet: ended at once
    assert not st.alive and st.state == "stopped"
    st = jobs.resume(run, nice=19)            # the same request again
    assert st.alive
    st = jobs.kill(run)
    assert not st.alive and st.state == "stopped"
    with pytest.raises(jobs.JobError):
        jobs.resume(tmp_path / "runs" / "never-started")
