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
    assert st.epoch == len(st.history) and st.describe().startswith("stopped")   # the last finished epoch
    assert st.returncode in (None, jobs.STOPPED_EXIT)
    stopped_at = json.loads((run / "last.json").read_text())["epoch"]

    # resume (fewer epochs, so it finishes quickly): continues from the checkpoint
    st = jobs.start(run, _request(data, epochs=stopped_at + 1), nice=19)
    st = jobs.wait(run, timeout=300)
    assert st.state == "done", (st.error, st.log_tail)
    assert st.model == run / "model.json" and st.fraction == 1.0
    assert st.epoch == st.epochs == stopped_at + 1 and st.loss == st.history[-1]["train_loss"]   # issue 17
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


# ---------------------------------------------------------------------- issue 17: one story per run
HISTORY = [{"epoch": 1, "train_loss": 1.9, "val_loss": 2.0, "seconds": 1.0},
           {"epoch": 2, "train_loss": 1.7, "val_loss": 1.8, "seconds": 1.0}]


def _finished_run(run, started, ended, trainer_elapsed, history=HISTORY, epochs=2):
    """A run folder as a finished Model-lab job leaves it: the trainer's last progress.json
    ("done": no epoch, batch or loss, its own clock), the reaper's exit.json, a model card."""
    run.mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"pid": 2 ** 22 + 17, "proc_start": 1, "started_at": started,
                                              "request": {"epochs": epochs}}))
    (run / "exit.json").write_text(json.dumps({"pid": 2 ** 22 + 17, "returncode": 0, "ended_at": ended}))
    (run / "progress.json").write_text(json.dumps({"time": ended - 0.5, "state": "done", "history": history,
                                                   "elapsed_s": trainer_elapsed}))
    (run / "model.json").write_text("{}")
    return run


def test_a_finished_run_reads_the_same_everywhere(tmp_path):
    t0 = time.time() - 100
    st = jobs.status(_finished_run(tmp_path / "r", t0, t0 + 12.0, 9.0))
    assert st.state == "done" and st.fraction == 1.0
    # the last epoch N/N and its loss, as the curves (history) show them; not "Epoch 0/2", "Loss —"
    assert (st.epoch, st.epochs, st.epoch_text) == (2, 2, "2/2")
    assert st.loss == HISTORY[-1]["train_loss"] and st.loss_text == "1.700"
    assert st.describe() == "finished: epoch 2/2"
    # elapsed: the job's start to its end (what was counting while it ran), not the trainer's shorter clock
    assert st.elapsed_s == pytest.approx(12.0)
    early = jobs.status(_finished_run(tmp_path / "early", t0, t0 + 5, 4, HISTORY[:1], epochs=10))
    assert early.epoch_text == "1/10" and early.describe() == "finished after epoch 1/10 (early stopping)"


def test_status_texts_follow_the_state():
    from pathlib import Path
    live = jobs.JobStatus(Path("r"), "running", phase="training", alive=True, epoch=2, epochs=4, batch=5, batches=10,
                          loss=0.5)
    assert live.in_epoch and live.describe() == "training: epoch 2/4, batch 5/10"
    assert live.fraction == pytest.approx(1.5 / 4)
    after = jobs.JobStatus(Path("r"), "running", phase="calibrating", alive=True, epoch=4, epochs=4)
    assert not after.in_epoch and after.describe() == "calibrating (after epoch 4/4)" and after.fraction == 0.99
    stopped = jobs.JobStatus(Path("r"), "stopped", epoch=1, epochs=4, resumable=True, loss=0.7)
    assert stopped.describe() == "stopped after epoch 1/4 (resumable)" and stopped.fraction == 0.25
    assert jobs.JobStatus(Path("r"), "stopped", epochs=4).describe() == "stopped"
    failed = jobs.JobStatus(Path("r"), "failed")
    assert failed.epoch_text == "—" and failed.loss_text == "—"


def _fake_trainer(tmp_path, seconds: float) -> str:
    """An executable standing in for the python that runs ``derm_core.fit.jobs train``: it writes what
    a finished training writes (progress.json "done" with its own, later-started clock, a card) and
    exits after ``seconds``."""
    import sys
    script = tmp_path / "fake-python"
    script.write_text(f"""#!{sys.executable}
import json, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
time.sleep(0.5)                       # imports and data loading: the trainer's clock starts after
t0 = time.time()
history = {json.dumps(HISTORY)}
json.dump({{"time": time.time(), "state": "training", "epoch": 2, "epochs": 2, "batch": 1, "batches": 1,
           "loss": 1.75, "elapsed_s": 0.0, "eta_s": 0.1, "history": history[:1]}}, open(out + "/progress.json", "w"))
time.sleep({seconds})
open(out + "/log.jsonl", "w").write(json.dumps(history[1]) + "\\n")
open(out + "/model.json", "w").write("{{}}")
json.dump({{"time": time.time(), "state": "done", "history": history, "elapsed_s": time.time() - t0}},
          open(out + "/progress.json", "w"))
time.sleep(0.3)
""")
    script.chmod(0o755)
    return str(script)


def test_elapsed_never_decreases_and_the_end_agrees(tmp_path):
    run = tmp_path / "runs" / "fake"
    jobs.start(run, _request(tmp_path), python=_fake_trainer(tmp_path, 1.0), nice=0)
    seen = []
    while True:
        st = jobs.status(run)
        seen.append((st.state, st.elapsed_s, st.epoch_text, st.loss_text, st.describe()))
        if not st.active:
            break
        time.sleep(0.05)
    elapsed = [e for _, e, *_ in seen if e is not None]
    assert elapsed == sorted(elapsed), seen                  # never shrinks, at the end included
    assert seen[-1][0] == "done" and seen[-1][2:] == ("2/2", "1.700", "finished: epoch 2/2"), seen
    assert any(s[2:4] == ("2/2", "1.750") for s in seen if s[0] == "running"), seen   # the running loss meanwhile
    ended = json.loads((run / "exit.json").read_text())["ended_at"]
    assert seen[-1][1] == pytest.approx(ended - json.loads((run / "job.json").read_text())["started_at"])
    assert jobs.status(run).elapsed_s == seen[-1][1]         # read again later: the same


def test_an_ensemble_job_reports_each_member_then_finishes_as_one_model(tmp_path):
    from derm_core.fit.ensemble import MemberPlan
    data = write_dataset(tmp_path / "data", per_class=6)
    run = tmp_path / "runs" / "ens"
    plan = [MemberPlan("tiny_test", 0), MemberPlan("tiny_test", 1)]
    jobs.start(run, _request(data, epochs=20), nice=19, members=plan)
    first = _wait_for(lambda: (s := jobs.status(run)).phase == "training" and s.batches > 0 and s)
    assert (first.member, first.members) == (1, 2) and first.describe().startswith("member 1 of 2")
    assert 0 <= first.fraction < 0.5                       # member 1 of 2: at most half of the job
    second = _wait_for(lambda: (s := jobs.status(run)).member == 2 and s.phase == "training" and s.batches > 0 and s,
                       timeout=300)
    assert 0.5 <= second.fraction < 1 and second.eta_s is not None
    st = jobs.wait(run, timeout=300)
    assert st.state == "done", (st.error, st.log_tail)
    card = json.loads((run / "model.json").read_text())
    assert card["arch"] == "ensemble" and [m["training"]["seed"] for m in card["members"]] == [0, 1]
    assert card["training"]["command"].startswith("python -m derm_core train-ensemble ")
