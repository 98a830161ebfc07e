"""A run's ranks on this machine, through torch's elastic launcher (`python -m torch.distributed.run`,
the engine `torchrun` is): the command, its start, its stderr, and what is left of it at the end.

- The launcher runs in a session of its own (a terminal's Ctrl-C reaches the supervisor only, which
  asks the ranks to stop: launcher/signals.py) and dies with the supervisor (the kernel's
  parent-death signal, set between fork and exec); each rank dies with the launcher (signals.py:
  die_with_launcher). A SIGKILLed `llmlaunch train` leaves nothing running.
- Everything started carries LLMLAUNCH_SUPERVISOR_PID: at the end the supervisor kills whatever
  still carries its pid (a rank's stray child, a rank left by a launcher that died first).
- The launcher tears the group down on the first failure; its closing traceback is dropped from
  the ranks' stderr and its root cause (the first rank that failed) kept for the summary line.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from .signals import SUPERVISOR_PID_ENV, libc_prctl, set_parent_death_signal

# torch.distributed.elastic's own log lines (W1125 13:51:10.612000 ... api.py:1028] ...)
_ELASTIC_LOG = re.compile(r"^[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")
# The elastic launcher's failure report ("Root Cause (first observed failure)"): rank and exit code.
_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def rank_arguments(config_path: str, run_dir: str, overrides: list[str]) -> list[str]:
    """What every rank module takes: --config, --run-dir, one --set per override."""
    args = ["--config", config_path, "--run-dir", run_dir]
    for item in overrides:
        args += ["--set", item]
    return args


def elastic_command(nproc: int, module: str, rank_args: list[str], port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={port}",
            "-m", module, *rank_args]


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
    each rank already printed its error in one line and logged the traceback to RUN_DIR/logs.
    The stream is closed once read to its end (the launcher's pipe: nobody else reads it)."""
    with stream:
        _relay_lines(stream, out, report)


def _relay_lines(stream, out, report: LauncherReport | None) -> None:
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


def start_launcher(cmd: list[str], env: dict) -> subprocess.Popen:
    """The elastic launcher in its own session, dying with this process (see the module
    docstring), its stderr piped for relay_stderr. Call from the main thread: the parent-death
    signal follows the thread that forks."""
    parent, prctl = os.getpid(), libc_prctl()

    def in_child():   # between fork and exec: no locks, no imports
        set_parent_death_signal(signal.SIGKILL, prctl)
        if os.getppid() != parent:   # the supervisor died before the line above
            os._exit(1)

    env = {**env, SUPERVISOR_PID_ENV: str(parent)}
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True, preexec_fn=in_child)


def processes_started_by(pid: int) -> list:
    """Every process that carries LLMLAUNCH_SUPERVISOR_PID=pid (what supervisor `pid` started and
    their children), wherever it was reparented."""
    import psutil

    mark = str(pid)
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != pid and proc.environ().get(SUPERVISOR_PID_ENV) == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_everything_started(child: subprocess.Popen | None) -> int:
    """SIGKILL the launcher and whatever this process started that still runs; how many."""
    import psutil

    procs = processes_started_by(os.getpid())
    if child is not None and child.poll() is None:
        try:
            procs.append(psutil.Process(child.pid))
        except psutil.Error:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(procs)


def rank_processes(launcher_pid: int, module: str) -> list:
    """The rank processes of `module` under the launcher."""
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
