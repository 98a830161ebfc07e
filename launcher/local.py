"""Starting a run's ranks from the command line: `llmlaunch train|preflight|validate`.

Under srun (SLURM_PROCID set) the calling process is one rank. Otherwise `launch` starts dp*pp*tp
local ranks (or --nproc N, which must equal it) through torch's elastic launcher and returns their
exit code; a rank that dies takes the others down (the elastic launcher tears the group down on the
first failure) and the summary line names it.

Signals, from the command's first line (llmlaunch.cli holds them before importing anything heavy):
- SIGUSR1 / SIGTERM: forwarded to every rank process, including ranks that start after the signal
  came (before any rank started: nothing is started). The ranks inherit the signals blocked, so none
  can die of one before it installs its handler; they stop at the next step boundary they all agree
  on, with a checkpoint when there is a step to save. Exit 75 (EX_TEMPFAIL): run again to resume.
- SIGINT (Ctrl-C): the same stop for the ranks, then exit 130 with one line. A rank that has not
  stopped INTERRUPT_GRACE_S after the first Ctrl-C, or a second Ctrl-C, kills the job.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from llmlaunch.config import load_run_config, resolve_config_path

from .ds_config import deepspeed_config
from .run_data import check_run_data
from .signals import STOP_SIGNALS
from .trainer import REQUEUE_EXIT_CODE, STOPPED_FILE

# The per-rank modules each command starts.
TRAIN_MODULE = "llmlaunch.launcher.rank"
PREFLIGHT_MODULE = "llmlaunch.launcher.preflight"
VALIDATE_MODULE = "llmlaunch.launcher.validate"
INTERRUPTED_EXIT_CODE = 130
# Seconds the ranks get after Ctrl-C to reach a step boundary and save (a step of a local run takes
# seconds; DeepSpeed's save of a small model, about one).
INTERRUPT_GRACE_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_command(module: str, config_path: str, run_dir: str, overrides: list[str]) -> list[str]:
    cmd = ["-m", module, "--config", config_path, "--run-dir", run_dir]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


# torch.distributed.elastic's own log lines (W1125 13:51:10.612000 ... api.py:1028] ...)
_ELASTIC_LOG = re.compile(r"^[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")
# The elastic launcher's failure report ("Root Cause (first observed failure)"): rank and exit code.
_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


class LauncherReport:
    """What the elastic launcher said about the first rank that failed."""

    def __init__(self):
        self.rank: int | None = None
        self.exitcode: int | None = None

    def describe(self) -> str:
        if self.rank is None:
            return ""
        how = ""
        if self.exitcode is not None and self.exitcode < 0:
            how = f", killed by {signal.Signals(-self.exitcode).name}"
        elif self.exitcode is not None:
            how = f", exit {self.exitcode}"
        return f"rank {self.rank} failed first{how}"


def relay_stderr(stream, out=sys.stderr, report: LauncherReport | None = None) -> None:
    """Pass the ranks' stderr through, minus the elastic launcher's own logging and its closing
    ChildFailedError traceback (whose root cause, the first rank that failed, goes into `report`):
    each rank already printed its error in one line and logged the traceback to RUN_DIR/logs;
    launch_local adds one summary line."""
    in_launcher_traceback = in_root_cause = False
    for line in stream:
        if line.startswith("Traceback (most recent call last)"):
            in_launcher_traceback = True
        if in_launcher_traceback:
            in_root_cause = in_root_cause or line.startswith("Root Cause")
            if in_root_cause and report is not None:
                if report.rank is None and (m := _ROOT_RANK.match(line)):
                    report.rank = int(m.group(1))
                elif report.exitcode is None and (m := _ROOT_EXIT.match(line)):
                    report.exitcode = int(m.group(1))
            continue
        if _ELASTIC_LOG.match(line):
            continue
        out.write(line)
        out.flush()


class LocalStop:
    """Stop signals that reached `llmlaunch train`, for forwarding to its ranks."""

    def __init__(self):
        self.pending: list[int] = []
        self.interrupted_at: float | None = None
        self.interrupts = 0

    def _handler(self, signum, frame):
        if signum == signal.SIGINT:
            self.interrupts += 1
            self.interrupted_at = self.interrupted_at or time.monotonic()
        if signum not in self.pending:
            self.pending.append(signum)

    def install(self) -> dict:
        """Handle the stop signals (and deliver any held since the command started); returns the
        previous handlers."""
        previous = {sig: signal.signal(sig, self._handler) for sig in STOP_SIGNALS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return previous

    @property
    def first(self) -> str:
        return signal.Signals(self.pending[0]).name if self.pending else ""


def rank_processes(launcher_pid: int, module: str) -> list:
    import psutil

    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.Error:
        return []
    ranks = []
    for proc in children:
        try:
            if module in " ".join(proc.cmdline()):
                ranks.append(proc)
        except psutil.Error:
            continue
    return ranks


def kill_job(child: subprocess.Popen) -> None:
    """SIGKILL the elastic launcher and everything it started."""
    import psutil

    try:
        procs = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        procs = []
    for proc in [*procs]:
        try:
            proc.kill()
        except psutil.Error:
            pass
    child.kill()


def stop_message(run_dir: str, stop: LocalStop) -> str:
    """One line: where the ranks stopped, from RUN_DIR/stopped.json."""
    path = Path(run_dir) / STOPPED_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    name = stop.first or record.get("signal", "a signal")
    if record.get("checkpoint"):
        return (f"stopped ({name}) after step {record['step']}, checkpoint {record['checkpoint']}; "
                "run the same command again to resume")
    return f"stopped ({name}) before the first step, nothing to checkpoint; run the same command again"


def launch_local(nproc: int, config_path: str, run_dir: str, overrides: list[str],
                 module: str = TRAIN_MODULE) -> int:
    """Start nproc ranks of `module` with torch's elastic launcher on this machine, forwarding stop
    signals (module docstring); returns the exit code."""
    stop = LocalStop()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           *rank_command(module, config_path, run_dir, overrides)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    (Path(run_dir) / STOPPED_FILE).unlink(missing_ok=True)
    # the launcher and the ranks start with the stop signals blocked (inherited across exec): a
    # rank acts on them from its first line; this process receives them once the handler is in
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if signal.sigpending() & set(STOP_SIGNALS):   # asked to stop before anything started
        previous = stop.install()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"llmlaunch: stopped ({stop.first}) before any rank started; run the same command "
              "again", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE if stop.interrupts else REQUEUE_EXIT_CODE
    try:
        child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    finally:
        previous = stop.install()
    report = LauncherReport()
    relay = threading.Thread(target=relay_stderr, args=(child.stderr, sys.stderr, report),
                             daemon=True)
    relay.start()
    signalled: set[tuple[int, int]] = set()
    killed = False
    try:
        while True:
            try:
                rc = child.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            for signum in list(stop.pending):
                for proc in rank_processes(child.pid, module):
                    if (proc.pid, signum) not in signalled:
                        try:
                            proc.send_signal(signum)
                        except Exception:  # noqa: BLE001 - gone meanwhile
                            pass
                        signalled.add((proc.pid, signum))
            if stop.interrupts >= 2 or (stop.interrupted_at is not None and
                                        time.monotonic() - stop.interrupted_at > INTERRUPT_GRACE_S):
                kill_job(child)
                killed = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    relay.join(timeout=5)
    logs = Path(run_dir) / "logs"
    if stop.interrupts:
        if killed:
            print(f"llmlaunch: interrupted: the ranks did not stop within {INTERRUPT_GRACE_S:g} s "
                  f"and were killed; the newest complete checkpoint is the one to resume from",
                  file=sys.stderr)
        elif rc == 0 and (Path(run_dir) / STOPPED_FILE).is_file():
            print(f"llmlaunch: interrupted: {stop_message(run_dir, stop)}", file=sys.stderr)
        else:
            print(f"llmlaunch: interrupted (exit {rc}); logs in {logs}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if rc != 0:
        first = report.describe()
        print(f"llmlaunch: error: the job failed (exit {rc})" + (f": {first}" if first else "")
              + f"; each rank's log is in {logs}", file=sys.stderr)
        return rc
    if (Path(run_dir) / STOPPED_FILE).is_file():
        print(f"llmlaunch: {stop_message(run_dir, stop)}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    return rc


def default_run_dir(config_arg: str) -> Path:
    """The folder of a run.yaml, or runs/NAME for a built-in config name."""
    given = Path(config_arg)
    return given.resolve().parent if given.exists() else Path("runs") / given.stem


def launch(config_arg: str, overrides: list[str], run_dir: str | None = None,
           nproc: int | None = None, module: str = TRAIN_MODULE) -> int:
    """Run `module`'s ranks for a run.yaml (or a built-in config name) with --set overrides: as this
    process under srun, else as nproc local ranks. Inputs the ranks would refuse are refused here
    first, in one line (ValueError)."""
    config = load_run_config(config_arg, overrides)
    world = config.layout_obj().world_size
    run_dir = str(Path(run_dir or default_run_dir(config_arg)).resolve())
    config_path = str(resolve_config_path(config_arg).resolve())
    if "SLURM_PROCID" in os.environ and nproc is None:
        import importlib

        entry = importlib.import_module(module).main
        return entry(["--config", config_path, "--run-dir", run_dir,
                      *[x for item in overrides for x in ("--set", item)]])
    check_run_data(config, Path(run_dir))   # fail here, not in every rank
    if config.train.precision != "auto":    # likewise a DeepSpeed config it would refuse
        deepspeed_config(config, config.train.precision)
    nproc = nproc or world
    if nproc != world:
        raise ValueError(f"--nproc {nproc} but the layout needs {config.layout_obj().product} "
                         "ranks")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return launch_local(nproc, config_path, run_dir, overrides, module)
