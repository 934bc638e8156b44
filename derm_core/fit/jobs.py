"""Background training jobs for the Model lab: start, watch, stop, resume, re-attach.

A job is ``python -m derm_core train ... --out RUN`` in its own process session (so it
outlives a page reload and is never part of a Streamlit script run), with its output in
``RUN/train.log``. ``RUN/job.json`` records the process (pid plus its kernel start time,
so a recycled pid is not mistaken for it), the command and the training settings (``request``:
the :class:`~derm_core.fit.config.TrainConfig` as a dict); any page, tab or server process
reads the run folder to re-attach. Starting a job in a folder whose job is
alive returns that job instead of starting another (under a file lock, so two tabs
clicking at once start one process).

What the trainer itself writes (:mod:`derm_core.fit.train`): ``progress.json`` (live state,
epoch, batch, elapsed, ETA, per-epoch history), ``log.jsonl``, the resumable checkpoint
``last.*`` and, when finished, ``model.json``. :func:`stop` creates ``RUN/STOP``: training
stops after the current batch with a resumable checkpoint; :func:`resume` runs the same
command again, which continues from it. A dead process that did not finish is reported
as failed with the error taken from the log's tail.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from derm_core.errors import DermTriageError, JobError
from derm_core.fit.config import TrainConfig, config_argv
from derm_core.model.checkpoint import ModelCard, atomic_write_json, read_card
from derm_core.settings import ROOT, settings
from derm_core.slugs import slugify

JOB_FILE, LOG_FILE, EXIT_FILE, STOP_FILE, LOCK_FILE = "job.json", "train.log", "exit.json", "STOP", ".job.lock"
STOPPED_EXIT = 3          # the CLI's exit code after a STOP
ACTIVE = ("starting", "running", "stopping")
_LOCAL_LOCK = threading.Lock()
_CHILDREN: dict[int, subprocess.Popen] = {}
_REAPERS: dict[int, threading.Thread] = {}   # pid -> the thread that records its exit code and end time


def runs_root() -> Path:
    """Where runs live: ``settings().runs`` ($DERMTRIAGE_RUNS, $DERMTRIAGE_HOME/runs or runs/ beside the code)."""
    return settings().runs


@dataclass
class JobStatus:
    """What a run folder says about its job, read fresh each time."""

    run: Path
    state: str                      # empty | starting | running | stopping | stopped | failed | done
    phase: str = ""                 # the trainer's own state: training, calibrating, ...
    pid: int | None = None
    alive: bool = False
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    loss: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    log_tail: str = ""
    returncode: int | None = None
    resumable: bool = False
    model: Path | None = None
    request: dict | None = None
    started_at: float | None = None
    member: int = 0                 # an ensemble job: the member training now (1-based) and how many
    members: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def in_epoch(self) -> bool:
        """Whether ``epoch`` is an epoch in progress (a live job training); otherwise it is the
        last finished epoch and ``loss`` that epoch's training loss (see :func:`status`)."""
        return self.alive and self.phase == "training" and self.batches > 0

    @property
    def fraction(self) -> float:
        """0..1 progress for a bar (from the same epoch and batch the texts show)."""
        if self.state == "done":
            return 1.0
        if not self.epochs:
            return 0.0
        if self.active and self.phase and self.phase not in ("training", "stopped"):
            return 0.99
        done = max(0, self.epoch - 1) + self.batch / self.batches if self.in_epoch else self.epoch
        share = min(max(done / self.epochs, 0.0), 1.0)
        if self.members:      # an ensemble: the members before this one are done
            share = (self.member - 1 + share) / self.members
        return float(min(share, 0.99))

    @property
    def epoch_text(self) -> str:
        """``epoch/epochs`` ("2/2" for a finished two-epoch run), "—" when unknown."""
        return f"{self.epoch}/{self.epochs}" if self.epochs else "—"

    @property
    def loss_text(self) -> str:
        """The training loss shown: the running loss while an epoch trains, else the last finished epoch's."""
        return f"{self.loss:.3f}" if isinstance(self.loss, (int, float)) else "—"

    def describe(self) -> str:
        text = self._describe()
        if self.members and self.state != "done":
            return f"member {self.member} of {self.members}: {text}"
        return text

    def _describe(self) -> str:
        if self.state == "empty":
            return "no job"
        if self.state in ("running", "stopping", "starting"):
            what = {"starting": "starting (loading data and model)", "stopping": "stopping after the current batch"}
            text = what.get(self.state) or (f"{self.phase}: epoch {self.epoch_text}, batch "
                                            f"{self.batch}/{self.batches}" if self.in_epoch else
                                            f"{'finishing' if self.phase == 'done' else self.phase} "
                                            f"(after epoch {self.epoch_text})")
            return text
        if self.state == "done":
            early = 0 < self.epoch < self.epochs
            return (f"finished after epoch {self.epoch_text} (early stopping)" if early else
                    f"finished: epoch {self.epoch_text}" if self.epochs else "finished")
        after = f" after epoch {self.epoch_text}" if self.epoch else ""
        return {"stopped": f"stopped{after}" + (" (resumable)" if self.resumable else ""),
                "failed": f"failed{after}" + (" (resumable)" if self.resumable else "")}.get(self.state, self.state)


# ---------------------------------------------------------------------- process identity
def _proc_start(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), or None where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Whether ``pid`` runs and is the process that was started at ``start`` (not a recycled pid or zombie)."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if Path("/proc").is_dir():
        if _proc_state(pid) in (None, "Z", "X"):
            return False
        if start is not None and _proc_start(pid) != start:
            return False
    return True


# ---------------------------------------------------------------------- reading a run folder
def _read_json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def log_tail(run: str | Path, n_bytes: int = 6000) -> str:
    path = Path(run) / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - n_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


_EXC = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)|[A-Z]\w*Error)\b.*")


def readable_error(tail: str) -> str | None:
    """The one line of a training log that says what went wrong: the CLI's ``error: ...``
    line, else the final exception line of a traceback, else the last line."""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln[len("error:"):].strip()
    for ln in reversed(lines):
        if _EXC.match(ln):
            return ln
    return lines[-1] if lines else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _history(run: Path, progress: dict | None) -> list[dict]:
    hist = (progress or {}).get("history")
    if hist:
        return hist
    rows = []
    try:
        for ln in (run / "log.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
    except OSError:
        pass
    return rows


def status(run: str | Path) -> JobStatus:
    """The job's state from its run folder (works from any process, tab or after a restart)."""
    run = Path(run)
    job = _read_json(run / JOB_FILE) or {}
    progress = _read_json(run / "progress.json")
    pid, started = job.get("pid"), job.get("started_at")
    child = _CHILDREN.get(pid)                 # started by this process: its exit code is known at once
    child_rc = child.poll() if child is not None else None
    alive = pid_alive(pid, job.get("proc_start"))
    if not alive and child is not None and child_rc is None:
        try:                                   # just ended: the reaper thread is collecting its exit code
            child_rc = child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    reaper = _REAPERS.get(pid)
    if not alive and reaper is not None:
        reaper.join(timeout=2)                 # let it write exit.json (with the end time) first
    ext = _read_json(run / EXIT_FILE)          # read after: the reaper writes it before forgetting the child
    if ext is not None and ext.get("pid") != pid:
        ext = None
    if ext is None and child_rc is not None:
        ext = {"pid": pid, "returncode": child_rc}
    member, members, where = 0, 0, run     # an ensemble job: the member now training, and its folder
    if progress and progress.get("members"):
        member, members = int(progress.get("member") or 0), int(progress["members"])
        where = Path(progress.get("member_run") or run)
        inner = _read_json(where / "progress.json") if where != run else None
        if progress.get("state") == "training" and inner:     # its epochs, batches, loss and state
            progress = {**inner, "time": max(inner.get("time") or 0, progress.get("time") or 0)}
            if inner.get("eta_s") is not None and inner.get("elapsed_s") is not None:   # members to come: as long
                progress["eta_s"] = inner["eta_s"] + (members - member) * (inner["elapsed_s"] + inner["eta_s"])
        elif inner:                                           # calibrating the whole: the last member's curves
            progress = {**progress, "history": inner.get("history")}
    fresh = progress if progress and (started is None or progress.get("time", 0) >= started - 1) else None
    model = run / "model.json"
    st = JobStatus(run=run, state="empty", pid=pid, alive=alive, request=job.get("request"), started_at=started,
                   resumable=(where / "last.json").is_file() and (where / "last.safetensors").is_file(),
                   history=_history(where, progress), returncode=(ext or {}).get("returncode"),
                   member=member, members=members)
    if fresh:
        st.phase = fresh.get("state", "")
        for k in ("epoch", "epochs", "batch", "batches"):
            setattr(st, k, int(fresh.get(k) or 0))
        st.loss = fresh.get("loss")
        st.elapsed_s = fresh.get("elapsed_s")
        if fresh.get("eta_s") is not None and alive:
            st.eta_s = max(0.0, fresh["eta_s"] - (time.time() - fresh.get("time", time.time())))
    if not st.epochs and st.request:
        st.epochs = int(st.request.get("epochs") or 0)
    if not st.in_epoch:
        # no epoch in progress (starting, calibrating, finished, stopped, crashed): the epoch and
        # loss shown are the last finished epoch's, from the same history the curves draw
        last = st.history[-1] if st.history else {}
        st.epoch, st.batch, st.batches = int(last.get("epoch") or 0), 0, 0
        st.loss = last.get("train_loss")
        st.epochs = st.epochs or st.epoch
    # elapsed: the job's own wall clock, from its start to now (alive) or to its end; never
    # the trainer's clock, which starts later (after imports and data loading)
    if started and alive:
        st.elapsed_s = time.time() - started
    elif started:
        ended = (ext or {}).get("ended_at") or max(
            [(fresh or {}).get("time") or 0.0, *(_mtime(run / f) for f in (LOG_FILE, "progress.json"))])
        st.elapsed_s = max(ended - started, st.elapsed_s or 0.0) if ended >= started else st.elapsed_s
    if alive:
        st.state = "stopping" if (run / STOP_FILE).exists() else ("running" if fresh else "starting")
        return st
    finished = model.is_file() and (st.returncode == 0 or (fresh or {}).get("state") == "done"
                                    or (not job and not progress))
    if finished:
        st.state, st.model = "done", model
    elif (st.returncode == STOPPED_EXIT or (fresh or {}).get("state") == "stopped"
          or (job and (run / STOP_FILE).exists())):
        st.state = "stopped"
    elif job or progress:
        st.state = "failed"
        st.log_tail = log_tail(run)
        rc = st.returncode
        if rc is not None and rc < 0:
            st.error = f"the training process was killed by signal {-rc} ({signal.Signals(-rc).name})"
        else:
            st.error = readable_error(st.log_tail) or (
                "the training process ended without finishing" + (f" (exit code {rc})" if rc is not None else ""))
    if st.state in ("stopped", "failed") and not st.log_tail:
        st.log_tail = log_tail(run)
    return st


# ---------------------------------------------------------------------- controlling jobs
@contextmanager
def _run_lock(run: Path):
    """Exclusive for one run folder across threads (tabs) and processes (servers)."""
    with _LOCAL_LOCK:
        try:
            import fcntl
        except ImportError:  # Windows: the thread lock above is all we have
            yield
            return
        with open(run / LOCK_FILE, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _reap(proc: subprocess.Popen, run: Path) -> None:
    """Wait for the child (no zombie) and record its exit code for every later reader."""
    rc = proc.wait()
    try:
        atomic_write_json(run / EXIT_FILE, {"pid": proc.pid, "returncode": rc, "ended_at": time.time()})
    except OSError:
        pass
    _CHILDREN.pop(proc.pid, None)
    _REAPERS.pop(proc.pid, None)


def start(run: str | Path, config: TrainConfig, *, python: str | None = None, env: dict | None = None,
          allow_finished: bool = False, nice: int | None = None, members: list | None = None) -> JobStatus:
    """Start training into ``run`` in the background, or re-attach to the job already running there.

    The job runs ``python -m derm_core train`` with ``config``'s settings (its ``out`` set to
    ``run``); ``job.json`` keeps them as ``request`` (``asdict``) for :func:`resume`. A folder
    holding a checkpoint resumes from it. Returns the job's status. With ``members`` (a list
    of :class:`~derm_core.fit.ensemble.MemberPlan`, two or more) it runs ``train-ensemble``:
    the members one after another, then the ensemble; the status follows the member training.

    Args:
        nice: CPU priority of the job (0 = normal, 19 = lowest); default ``$DERMTRIAGE_JOB_NICE``
            or 5, a little below the app's, so the pages stay responsive while a CPU trains.

    Raises:
        JobError: the run already finished (unless ``allow_finished``), a setting cannot be given on
            the command line, or the process could not start.
    """
    run = Path(run)
    config = replace(config, out=str(run))
    try:
        args = ["train", *config_argv(config)]
        if members:
            args[0] = "train-ensemble"
            args += [a for m in members for a in ("--member", m.arch, str(m.seed))]
    except ValueError as e:
        raise JobError(f"cannot start this training job: {e}") from None
    run.mkdir(parents=True, exist_ok=True)
    with _run_lock(run):
        st = status(run)
        if st.alive:
            return st
        if st.state == "done" and not allow_finished:
            raise JobError(f"run {run.name} has already finished; start a new run (or evaluate this one)")
        (run / STOP_FILE).unlink(missing_ok=True)
        (run / EXIT_FILE).unlink(missing_ok=True)
        nice = settings().require("job_nice") if nice is None else int(nice)
        argv = [python or sys.executable, "-m", "derm_core.fit.jobs", "--nice", str(nice), *args]
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
                     "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            with open(run / LOG_FILE, "ab") as log:   # the child keeps its own copy of the descriptor
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[1:])}\n".encode())
                log.flush()
                proc = subprocess.Popen(argv, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=os.name == "posix")
        except OSError as e:
            raise JobError(f"could not start the training process: {e}") from None
        _CHILDREN[proc.pid] = proc
        atomic_write_json(run / JOB_FILE, {"pid": proc.pid, "proc_start": _proc_start(proc.pid),
                                           "started_at": time.time(), "argv": argv, "request": asdict(config),
                                           **({"members": [asdict(m) for m in members]} if members else {}),
                                           "host": os.uname().nodename if hasattr(os, "uname") else ""})
        reaper = threading.Thread(target=_reap, args=(proc, run), daemon=True, name=f"reap-{proc.pid}")
        _REAPERS[proc.pid] = reaper
        reaper.start()
    return status(run)


def stop(run: str | Path) -> JobStatus:
    """Ask the job to stop after the current batch (it leaves a resumable checkpoint).

    A job still starting (loading data and model, before its first batch) is ended at once:
    there is nothing to save yet, and the trainer would clear a STOP file made that early.
    """
    run = Path(run)
    st = status(run)
    if st.alive:
        (run / STOP_FILE).touch()
        if st.state == "starting":
            kill(run)
    return status(run)


def kill(run: str | Path, sig: int = signal.SIGTERM) -> JobStatus:
    """Force-stop the job's process group at once. Every file the trainer writes is written
    atomically, so the checkpoint of the last finished epoch (if any) stays usable."""
    run = Path(run)
    job = _read_json(run / JOB_FILE) or {}
    if pid_alive(job.get("pid"), job.get("proc_start")):
        (run / STOP_FILE).touch()   # the stop was asked for: report it as stopped, not as a crash
        try:
            os.killpg(job["pid"], sig) if os.name == "posix" else os.kill(job["pid"], sig)
        except ProcessLookupError:
            pass
        _wait_dead(job["pid"], job.get("proc_start"), 10.0)
    return status(run)


def _wait_dead(pid: int, start: int | None, timeout: float) -> None:
    t0 = time.time()
    while pid_alive(pid, start) and time.time() - t0 < timeout:
        time.sleep(0.05)


def resume(run: str | Path, **kw) -> JobStatus:
    """Run a stopped or failed job's command again; training continues from its checkpoint."""
    run = Path(run)
    job = _read_json(run / JOB_FILE)
    if not job or not job.get("request"):
        raise JobError(f"run {run.name} was not started from the Model lab; resume it with its command")
    from derm_core.fit.ensemble import MemberPlan
    members = [MemberPlan(**m) for m in job.get("members") or []] or None
    return start(run, TrainConfig.from_dict(job["request"]), members=members, **kw)


def wait(run: str | Path, timeout: float = 600.0, poll: float = 0.5) -> JobStatus:
    """Block until the job is no longer active (for scripts and tests)."""
    t0 = time.time()
    while True:
        st = status(run)
        if not st.active or time.time() - t0 > timeout:
            return st
        time.sleep(poll)


def new_run_dir(name: str, root: str | Path | None = None) -> Path:
    """A fresh folder under the runs root for ``name`` (``name``, ``name-2``, ...)."""
    root = Path(root) if root else runs_root()
    slug = slugify(name, lower=False, fallback="run")
    path, i = root / slug, 2
    while path.exists():
        path, i = root / f"{slug}-{i}", i + 1
    return path


@dataclass
class RunInfo:
    name: str
    path: Path
    status: JobStatus
    card: ModelCard | None = None       # the finished model's card (None: none yet, or unreadable)
    modified: float = 0.0


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run folder under the root (a job, progress or a model card in it), newest first."""
    root = Path(root) if root else runs_root()
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if not d.is_dir() or not any((d / f).exists() for f in (JOB_FILE, "progress.json", "model.json")):
            continue
        try:
            card = read_card(d / "model.json") if (d / "model.json").is_file() else None
        except (DermTriageError, OSError):
            card = None
        try:
            mtime = max((d / f).stat().st_mtime for f in (JOB_FILE, "progress.json", "model.json") if (d / f).exists())
        except OSError:
            mtime = 0.0
        out.append(RunInfo(d.name, d, status(d), card, mtime))
    return sorted(out, key=lambda r: r.modified, reverse=True)


def active_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Runs whose training process is alive (what a reloaded page re-attaches to)."""
    return [r for r in list_runs(root) if r.status.active]


def _lower_priority(nice: int) -> None:
    """Lower this process's CPU priority (and, on Linux, its session's autogroup's)."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except (AttributeError, OSError):
        pass
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """``python -m derm_core.fit.jobs [--nice N] train ...``: what :func:`start` runs in the background.

    Sets the priority, then runs the ordinary CLI in this process, so the card records the
    plain ``python -m derm_core train ...`` command.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    nice = 0
    if argv[:1] == ["--nice"]:
        nice, argv = int(argv[1]), argv[2:]
    _lower_priority(nice)
    from derm_core.cli import main as cli_main
    sys.argv = ["derm_core", *argv]
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
