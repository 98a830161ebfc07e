"""Stop signals and stop requests, in the ranks and in the supervisor that starts them (standard
library only: a rank imports it before anything else).

SIGUSR1 (Slurm's warning before the time limit), SIGTERM (scancel, preemption, `scontrol requeue`,
the elastic launcher) and SIGINT (Ctrl-C) all mean the same to a run: stop at the next step boundary
that every rank agrees on, checkpoint if there is a step to save, and exit. One mechanism carries
a stop to the ranks, on Slurm and locally alike:

- The supervisor (launcher/job.py) holds the stop signals from its first line and records them
  (`StopSignals`). It never signals a rank: it writes RUN_DIR/stop-request.json (`request_stop`),
  and rank 0 reads it at every step boundary (`StopRequest.take_request`); the agreement all-reduce
  then stops every rank after the same step. A request that comes before the ranks run waits for
  them: nothing is lost, whenever it comes (srun drops a signal sent before its tasks exist).
  Rank 0 runs on the supervisor's host (Slurm places task 0 on the batch host; locally every rank
  does), so it sees the file at once, on a shared file system too.
- A rank also takes the signals sent to it directly (Slurm's scancel, preemption and requeue signal
  every process of the job). `StopRequest.hold()`, its first statement, installs the handler and
  blocks the three signals; `release()` unblocks them once the engine is built. While blocked, a
  signal waits, pending, and the rank acts on it at its first step boundary. Blocking, unlike a
  handler, is inherited across exec: DeepSpeed's extension builds (ninja) started during start-up
  are shielded from a signal Slurm sends to every process of the step.
- A rank that torch's elastic launcher started dies with it (`die_with_launcher`: the kernel's
  parent-death signal), and the launcher dies with the supervisor: a SIGKILLed `llmlaunch train`
  leaves nothing running. Under srun the job's end ends its steps (Slurm's own rule).
"""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# Set in the environment of everything the local supervisor starts: its pid (launcher/local_ranks.py)
SUPERVISOR_PID_ENV = "LLMLAUNCH_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def stop_request_path(run_dir) -> Path:
    from llmlaunch.run_files import STOP_REQUEST

    return Path(run_dir) / STOP_REQUEST


def request_stop(run_dir, signal_name: str, why: str) -> None:
    """The supervisor asks the ranks to stop (RUN_DIR/stop-request.json, written whole)."""
    from llmlaunch.atomic import write_text_atomic

    write_text_atomic(stop_request_path(run_dir), json.dumps(
        {"signal": signal_name, "why": why, "time": time.time()}) + "\n")


def read_stop_request(run_dir) -> str | None:
    """The signal a stop request names ('' when the file is unreadable: still a request), or None
    when there is none."""
    path = stop_request_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    try:
        return str(json.loads(text).get("signal", ""))
    except (ValueError, AttributeError):
        return ""


def clear_stop_request(run_dir) -> None:
    """A new start begins without the last one's request (the supervisor, before any rank runs)."""
    stop_request_path(run_dir).unlink(missing_ok=True)


class StopRequest:
    """The stop a rank was asked for: the signal's name (empty: none yet)."""

    def __init__(self):
        self.signal_name = ""

    def _handler(self, signum, frame):
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def hold(self) -> None:
        """Handle the stop signals and keep them pending (see the module docstring)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)

    def release(self) -> None:
        """Deliver what is pending and every later stop signal to the handler."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def take_request(self, run_dir) -> bool:
        """Rank 0, at a step boundary: adopt the supervisor's stop request, if there is one."""
        if not self.signal_name:
            named = read_stop_request(run_dir)
            if named is not None:
                self.signal_name = named or "a stop request"
        return self.requested

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)


STOP = StopRequest()
"""This process's stop request (one per process: signals are per process)."""


def hold_for_launch() -> None:
    """Block the stop signals in a command that will start ranks (llmlaunch.cli.main): pending until
    the supervisor installs its handlers (StopSignals.install) or, under srun, the rank takes over."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def libc_prctl():
    """libc's prctl (None where there is none): look it up before a fork, call it after."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_parent_death_signal(sig: int = signal.SIGKILL, prctl=None) -> bool:
    """Ask Linux to send `sig` to this process when the thread that started it ends (prctl
    PR_SET_PDEATHSIG; cleared in children this process forks). False where there is no prctl."""
    prctl = prctl or libc_prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_launcher(environ=os.environ) -> None:
    """In a rank started by torch's elastic launcher: SIGKILL when the launcher ends; and if the
    supervisor that started the launcher is gone already (it died before this line), exit now."""
    if "TORCHELASTIC_RUN_ID" not in environ:
        return   # srun's task (the step ends with the job) or a process run by hand
    set_parent_death_signal(signal.SIGKILL)
    supervisor = environ.get(SUPERVISOR_PID_ENV, "")
    if supervisor.isdigit() and not process_alive(int(supervisor)):
        os._exit(1)


class StopNow(Exception):
    """A stop signal inside `StopSignals.interruptible()`: the phase is abandoned at once."""


class StopSignals:
    """The stop signals that reached the supervisor, in order of arrival. `install()` replaces the
    block held since the process's first line with handlers, so a signal that came before is
    delivered now, not lost. LLMLAUNCH_EARLY_STOP (set by the bash of train.sbatch files written
    before the supervisor: a signal that came while they found the job body) counts as one.
    Inside `interruptible()` (an in-process phase such as the data check, which has no step
    boundary to stop at) a signal raises StopNow as well."""

    def __init__(self, environ=os.environ):
        early = environ.get("LLMLAUNCH_EARLY_STOP", "")
        self.received: list[str] = [f"SIG{early}"] if early in ("USR1", "TERM") else []
        self.previous: dict = {}
        self._raise = False

    def _handler(self, signum, frame):
        self.received.append(signal.Signals(signum).name)
        if self._raise:
            self._raise = False
            raise StopNow(self.received[-1])

    @contextmanager
    def interruptible(self):
        if self.received:
            raise StopNow(self.received[0])
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def install(self) -> "StopSignals":
        self.previous = {sig: signal.signal(sig, self._handler) for sig in STOP_SIGNALS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    @property
    def first(self) -> str:
        return self.received[0] if self.received else ""

    @property
    def interrupts(self) -> int:
        return self.received.count("SIGINT")
