"""Stop signals in a rank, from its first line to its last (standard library only: it is imported
before anything else).

SIGUSR1 (Slurm's warning before the time limit, preemption), SIGTERM (scancel, the elastic launcher)
and SIGINT (Ctrl-C) all mean the same to a rank: stop at the next step boundary that every rank
agrees on, checkpoint if there is a step to save, and exit. `hold()`, the first statement of a rank
process, installs that handler and blocks the three signals; `release()` unblocks them once the
engine is built. While they are blocked a signal waits, pending, and the rank acts on it at its
first step boundary. Blocking, unlike a handler, is inherited by the rank's children across exec:
DeepSpeed's extension builds (ninja) started during start-up are shielded, where before a USR1 that
Slurm sent to every process of the step killed the build and failed the job.
"""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The signal that asked this process to stop (empty: none yet)."""

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

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)


STOP = StopRequest()

HELD_DIR = ".signals"


def mark_held(run_dir, rank: int) -> None:
    """Tell the Slurm job body that this rank holds the stop signals (RUN_DIR/.signals/held-RANK):
    it forwards a signal to the ranks only once all of them do."""
    from pathlib import Path

    folder = Path(run_dir) / HELD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"held-{rank}").touch()
"""This process's stop request (one per process: signals are per process)."""


def hold_for_launch() -> None:
    """Block the stop signals in a command that will start ranks (llmlaunch.cli.main): pending until
    the command forwards them (local.py) or runs as the rank (under srun, rank.py takes over)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
