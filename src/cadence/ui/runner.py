"""Runs jobs as detached `cadence train` subprocesses and keeps the store true to the real process state.

Each job runs as `job_wrapper` (new session, so it survives the UI and owns a process group) around
`[python, -m, cadence.cli, train, CONFIG]`, or for a caption job (`kind` "caption")
`[python, -m, cadence.cli, caption, @ARGS]` (ARGS: the job's argument file, one argument per line); both
kinds share the queue, the device slots, stop and reconcile. The store keeps the wrapper's pid and its start time (psutil),
so a reused pid after a reboot is not mistaken for our job. `reconcile()` runs at startup and on every
poll: a job whose process is gone becomes finished/stopped/failed from the `exit_code` file the wrapper
wrote, or failed/stopped when there is none (the wrapper itself was killed). Stop = SIGINT to the group
(the trainer checkpoints and exits 0), SIGTERM after `stop_timeout`, SIGKILL after twice that.

A train job given several GPUs (`device` "0,1": a comma list) runs as `python -m torch.distributed.run
--nproc_per_node N -m cadence train CONFIG` on those GPUs (docs/distributed.md) and holds a slot on each of
them. Its workers run in sessions of their own: SIGINT and SIGTERM go to them directly (they stop at one
agreed step and exit 0, and so does torchrun), and the SIGKILL stage kills them with the group.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from cadence.ui.store import ACTIVE, Job, JobStore

log = logging.getLogger(__name__)

DEFAULT_TRAIN_CMD = (sys.executable, "-m", "cadence.cli", "train")
DEFAULT_CAPTION_CMD = (sys.executable, "-m", "cadence.cli", "caption")
_STOP_SIGNALS = {1: signal.SIGINT, 2: signal.SIGTERM, 3: signal.SIGKILL}


def detect_gpus() -> list[str]:
    """GPU indices visible to this process, without importing torch (the UI must start fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class JobBusy(Exception):
    """The job is running or stopping, so it cannot be deleted now."""


class JobRunner:
    """Starts, stops and reconciles jobs. Thread-safe: one lock around every state change."""

    def __init__(
        self,
        store: JobStore,
        home: Path,
        train_cmd: tuple[str, ...] = DEFAULT_TRAIN_CMD,
        stop_timeout: float = 120.0,
        cpu_slots: int = 1,
        gpus: list[str] | None = None,
        caption_cmd: tuple[str, ...] = DEFAULT_CAPTION_CMD,
    ) -> None:
        self.store = store
        self.home = Path(home)
        self.train_cmd = tuple(train_cmd)
        self.caption_cmd = tuple(caption_cmd)
        self.stop_timeout = stop_timeout
        self.cpu_slots = cpu_slots
        self.gpus = detect_gpus() if gpus is None else list(gpus)
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}  # reaped here so finished wrappers are no zombies
        self._side: list[subprocess.Popen] = []  # helper commands (cadence analyze), reaped on each tick

    # ------------------------------------------------------------------------------------------ paths
    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def devices(self) -> list[str]:
        return ["cpu", *self.gpus]

    def device_problem(self, device: str) -> str | None:
        """Why `device` is no slot of this machine: "cpu", one GPU, or several ("0,1") for torchrun."""
        if device in self.devices():
            return None
        wanted = [d.strip() for d in device.split(",")]
        if len(wanted) > 1 and len(set(wanted)) == len(wanted) and all(d in self.gpus for d in wanted):
            return None
        return f"device {device!r} is not one of {self.devices()} (or a list of distinct GPUs such as 0,1)"

    def command(self, job: Job) -> list[str]:
        """What the wrapper runs for `job`: its kind's command and the job's config (or argument) file."""
        if job.kind == "caption":
            return [*self.caption_cmd, "@" + job.config_path]
        if len(_slots(job)) > 1:  # several GPUs: one torchrun worker per GPU
            from cadence.parallel.launch import torchrun_command

            return torchrun_command(_slots(job), ["train", job.config_path])
        return [*self.train_cmd, job.config_path]

    # -------------------------------------------------------------------------------------- lifecycle
    def start(self, job: Job) -> None:
        """Spawn the wrapper for `job` (already checked to have a free slot)."""
        job_dir = self.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "exit_code").unlink(missing_ok=True)
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if job.device == "cpu" else job.device
        # the slot decides the device: inside the job the chosen GPU is cuda:0 whatever the config says
        # (several GPUs: each torchrun worker takes the one of its local rank)
        env["CADENCE_DEVICE"] = (
            "cpu" if job.device == "cpu" else "cuda:0" if len(_slots(job)) == 1 else "cuda"
        )
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "cadence.ui.job_wrapper",
            str(job_dir),
            "--",
            *self.command(job),
        ]
        with open(job_dir / "job.log", "ab") as logf:
            logf.write(
                f"\n=== cadence ui: starting job {job.id} on {job.device} at {time.ctime()}\n".encode()
            )
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(job_dir),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._procs[job.id] = proc
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        self.store.update(
            job.id,
            status="running",
            pid=proc.pid,
            pid_create_time=created,
            exit_code=None,
            error=None,
            started_at=time.time(),
            stop_requested_at=None,
            stop_stage=0,
            finished_at=None,
        )
        log.info("started job %s (%s) pid %d on %s", job.id, job.name, proc.pid, job.device)

    def queue(self, job_id: str) -> bool:
        ok = self.store.transition(
            job_id,
            ("created", "finished", "stopped", "failed"),
            status="queued",
            queued_at=time.time(),
            error=None,
        )
        if ok:
            self.tick()
        return ok

    def stop(self, job_id: str) -> str | None:
        """Dequeue a queued job or send the graceful stop signal; returns the new status (None: not stoppable)."""
        with self._lock:
            if self.store.transition(job_id, ("queued",), status="created"):
                return "created"
            job = self.store.get(job_id)
            if job is None or job.status != "running":
                return None
            self.store.update(job_id, status="stopping", stop_requested_at=time.time(), stop_stage=0)
            self._signal(job, 1)
            return "stopping"

    def delete(self, job_id: str, remove_files: Callable[[Job], object]) -> tuple[Job | None, object]:
        """Forget a job that is not running, under the lock that start and schedule hold: a queued job is
        taken off the queue in the same step, so the scheduler can never start a job being deleted (no
        process without a job, no job folder removed under a running trainer). Returns (the job, or None
        when there is none; what `remove_files` returned); raises JobBusy for a running/stopping job."""
        with self._lock:
            self.reconcile()
            job = self.store.get(job_id)
            if job is None:
                return None, None
            if job.status in ACTIVE:
                raise JobBusy(f"job {job_id} is {job.status}; stop it first (Stop, then Delete)")
            self.store.delete(job_id)
            return job, remove_files(job)

    def _signal(self, job: Job, stage: int) -> None:
        sig = _STOP_SIGNALS[stage]
        if job.pid is not None and self.is_alive(job):
            if len(_slots(job)) > 1 and sig != signal.SIGKILL:
                # torchrun's workers run in sessions of their own; signalled directly, they stop cleanly
                # and torchrun exits 0 (torchrun itself answers a SIGINT with exit status 1)
                self._signal_workers(job, sig)
                self.store.update(job.id, stop_stage=stage)
                return
            if sig == signal.SIGKILL:
                signal_descendants(job.pid, sig)  # collected before the group dies (workers get reparented)
            try:
                os.killpg(job.pid, sig)
                log.info("job %s: sent %s to process group %d", job.id, sig.name, job.pid)
            except ProcessLookupError:
                pass
        self.store.update(job.id, stop_stage=stage)

    def _signal_workers(self, job: Job, sig: signal.Signals) -> None:
        try:
            torchrun = int(self.job_dir(job.id).joinpath("child_pid").read_text().strip())
        except (OSError, ValueError):
            return
        signal_descendants(torchrun, sig, depth=1)
        log.info("job %s: sent %s to the workers of torchrun %d", job.id, sig.name, torchrun)

    # ----------------------------------------------------------------------------------------- state
    def is_alive(self, job: Job) -> bool:
        """True while the job's wrapper (same pid and same start time) or its trainer still runs. A killed
        wrapper leaves the trainer running in the job's process group: calling that job ended would let
        Start launch a second trainer and leave Stop with nothing to signal."""
        return self._wrapper_alive(job) or self._trainer_alive(job)

    def _wrapper_alive(self, job: Job) -> bool:
        proc = self._procs.get(job.id)
        if proc is not None and proc.pid == job.pid and proc.poll() is not None:
            return False
        if not job.pid:
            return False
        try:
            p = psutil.Process(job.pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            if job.pid_create_time is not None and abs(p.create_time() - job.pid_create_time) > 0.05:
                return False  # the pid was reused by another process (e.g. after a reboot)
            return True
        except psutil.Error:
            return False

    def _trainer_alive(self, job: Job) -> bool:
        """The trainer the wrapper recorded in `child_pid`, if it still runs in the job's process group."""
        if not job.pid or job.started_at is None:
            return False
        try:
            child = int(self.job_dir(job.id).joinpath("child_pid").read_text().strip())
            p = psutil.Process(child)
            return (
                p.status() != psutil.STATUS_ZOMBIE
                and os.getpgid(child) == job.pid
                and p.create_time() >= job.started_at - 1.0  # not a pid reused since the job started
            )
        except (OSError, ValueError, psutil.Error):
            return False

    def _read_exit_code(self, job_id: str) -> int | None:
        try:
            return int(self.job_dir(job_id).joinpath("exit_code").read_text().strip())
        except (OSError, ValueError):
            return None

    def _final_status(self, job: Job) -> tuple[str, int | None, str | None]:
        code = self._read_exit_code(job.id)
        stopping = job.stop_requested_at is not None
        if code is None:
            if stopping:
                return "stopped", None, None
            return (
                "failed",
                None,
                "the job's process ended without an exit status (killed, or the machine restarted)",
            )
        if code == 0:
            return ("stopped" if stopping else "finished"), 0, None
        if stopping and (code < 0 or code in (130, 143)):
            return "stopped", code, None
        return "failed", code, f"cadence {job.kind} exited with status {code}; see the log"

    def reconcile(self) -> None:
        """Make every running/stopping job match reality; escalate stops that take too long."""
        with self._lock:
            for job in self.store.list(ACTIVE):
                if self.is_alive(job):
                    if job.status == "stopping":
                        self._escalate(job)
                    continue
                status, code, error = self._final_status(job)
                self.store.transition(
                    job.id, ACTIVE, status=status, exit_code=code, error=error, finished_at=time.time()
                )
                self._procs.pop(job.id, None)
                log.info("job %s is %s (exit code %s)", job.id, status, code)

    def _escalate(self, job: Job) -> None:
        """The next signal once `stop_timeout` has passed since the last one: SIGINT, SIGTERM, SIGKILL, one
        stage per tick. A tick that comes late (the UI was suspended or restarted, a stalled disk) sends the
        next stage and times the one after from now, so a job is never SIGKILLed without its SIGTERM."""
        if self.stop_timeout <= 0:
            if job.stop_stage < 3:
                self._signal(job, 3)
            return
        now = time.time()
        requested = job.stop_requested_at or now
        due = min(3, 1 + int((now - requested) // self.stop_timeout))
        if due <= job.stop_stage:
            return
        stage = job.stop_stage + 1
        # stage n is due stop_timeout * (n - 1) after the request: re-based so the next one counts from now
        self.store.update(job.id, stop_requested_at=max(requested, now - (stage - 1) * self.stop_timeout))
        self._signal(job, stage)

    def schedule(self) -> None:
        """Start queued jobs, oldest first, while their device slot is free (one per GPU)."""
        with self._lock:
            busy: dict[str, int] = {}
            for job in self.store.list(ACTIVE):
                for slot in _slots(job):
                    busy[slot] = busy.get(slot, 0) + 1
            for job in self.store.list(("queued",)):
                limit = self.cpu_slots if job.device == "cpu" else 1
                if any(busy.get(slot, 0) >= limit for slot in _slots(job)):
                    continue
                try:
                    self.start(job)
                except OSError as exc:
                    self.store.update(
                        job.id, status="failed", error=f"could not start: {exc}", finished_at=time.time()
                    )
                    continue
                for slot in _slots(job):
                    busy[slot] = busy.get(slot, 0) + 1

    def spawn_helper(self, cmd: list[str], log_path: Path) -> None:
        """Run a short helper command (e.g. `cadence analyze`) detached, appending to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        with self._lock:
            self._side = [p for p in self._side if p.poll() is None] + [proc]

    def tick(self) -> None:
        with self._lock:
            self._side = [p for p in self._side if p.poll() is None]
        self.reconcile()
        self.schedule()


def _slots(job: Job) -> list[str]:
    """The device slots a job holds: "cpu", or each of its GPUs."""
    return [d.strip() for d in job.device.split(",")]


def signal_descendants(pid: int, sig: signal.Signals, depth: int | None = None) -> None:
    """Send `sig` to the processes below `pid` (its children only with depth=1)."""
    try:
        children = psutil.Process(pid).children(recursive=depth != 1)
    except psutil.Error:
        return
    for child in children:
        try:
            child.send_signal(sig)
        except psutil.Error:
            pass


class Scheduler(threading.Thread):
    """Background loop of the UI process: reconcile + schedule every `interval` seconds."""

    def __init__(self, runner: JobRunner, interval: float = 1.0) -> None:
        super().__init__(name="cadence-ui-scheduler", daemon=True)
        self.runner = runner
        self.interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.runner.tick()
            except Exception:  # keep the loop alive; the next tick retries
                log.exception("scheduler tick failed")

    def halt(self) -> None:
        self._halt.set()
