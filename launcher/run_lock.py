"""A run directory has one owner: the supervisor that runs it (launcher/job.py) holds
RUN_DIR/owner.lock from before its data check until it exits. Two runs on one directory would train
on each other's data, overwrite each other's checkpoints and lose each other's metrics; the second
start refuses, in one line naming the holder.

The file is JSON written whole (host, boot id, pid and the process's start time, when it started,
the Slurm job and start, the command, a random token) and made with link(2), which is atomic on
local file systems and NFS alike: exactly one of two racing starts gets it. The owner touches it
every HEARTBEAT_S seconds (its mtime: a counter, never compared with anyone's clock).

A start that finds the file decides from what it can prove (`judge`):
- the holder ran on this host (same host name and boot id): its pid, alive with the same process
  start time, holds the directory; otherwise the lock is stale and is taken over, with a line;
- the holder is an earlier start of this very Slurm job: taken over (Slurm runs one start of a job
  at a time, and a requeued start's supervisor may have been killed before it released the lock);
- the holder ran on another host (a shared file system): its heartbeat is watched for STALE_AFTER_S
  seconds; it moved: refused; it did not: the holder's host is gone or hung, and the lock is taken
  over with a line saying so. Local pids are never trusted across hosts.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from llmlaunch.run_files import OWNER_LOCK

from .hostnet import host_name

HEARTBEAT_S = 5.0
STALE_AFTER_S = 3 * HEARTBEAT_S


class RunDirBusy(ValueError):
    """Another live run owns the directory (one line: who, and what to do)."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@dataclass
class Owner:
    """Who holds (or wants) a run directory."""

    host: str
    boot_id: str
    pid: int
    process_start: float | None
    started: str
    job: str | None = None
    start: int = 0
    command: str = "llmlaunch"
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    @classmethod
    def here(cls, command: str, environ=os.environ) -> "Owner":
        pid = os.getpid()
        return cls(host=host_name(environ), boot_id=boot_id(), pid=pid,
                   process_start=process_start_time(pid),
                   started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   job=environ.get("SLURM_JOB_ID") or None,
                   start=int(environ.get("SLURM_RESTART_COUNT") or 0), command=command)

    @classmethod
    def from_dict(cls, raw: dict) -> "Owner":
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**{"host": "?", "boot_id": "", "pid": 0, "process_start": None,
                      "started": "?", **known})

    def describe(self) -> str:
        job = f", Slurm job {self.job} start {self.start}" if self.job else ""
        return f"{self.command} (pid {self.pid} on {self.host}, started {self.started}{job})"


def judge(holder: Owner, me: Owner, *, alive: Callable[[int, float | None], bool],
          heartbeat_moved: Callable[[], bool]) -> tuple[bool, str]:
    """(stale, why) for a lock `holder` wrote, as `me` finds it (the module docstring's rules).
    alive(pid, process_start): that process runs here; heartbeat_moved(): the file's mtime moved
    while we watched (called only for a holder on another host)."""
    if me.job and holder.job == me.job and holder.start < me.start:
        return True, (f"it is this job's start {holder.start}, which Slurm ended before starting it "
                      "again")
    if holder.host == me.host and holder.boot_id == me.boot_id:
        if alive(holder.pid, holder.process_start):
            return False, "it is running on this host"
        return True, "that process is gone"
    if heartbeat_moved():
        return False, f"its heartbeat moved within {STALE_AFTER_S:g} s"
    return True, (f"its heartbeat did not move in {STALE_AFTER_S:g} s: host {holder.host} is gone "
                  "or hung")


def alive_here(pid: int, process_start: float | None) -> bool:
    """Process `pid` runs on this host and is the one that wrote the lock (same start time: a
    reused pid is not it)."""
    started = process_start_time(pid)
    if started is None:
        return False
    return process_start is None or abs(started - process_start) < 1.0


class RunLock:
    """RUN_DIR/owner.lock held by this process: `acquire`, a heartbeat thread, `release`."""

    def __init__(self, run_dir: Path, owner: Owner, heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(run_dir) / OWNER_LOCK
        self.owner = owner
        self.heartbeat_s = heartbeat_s
        self.lost = ""            # set by the heartbeat when the file is no longer ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, watch_s: float = STALE_AFTER_S, say=None) -> "RunLock":
        """Hold the directory or raise RunDirBusy; a stale lock is taken over with a line (`say`,
        default stderr)."""
        say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        for _ in range(5):
            if self._link_new():
                self._start_heartbeat()
                return self
            holder = self._read_holder()
            if holder is None:
                continue   # released meanwhile: try again
            stale, why = judge(holder, self.owner, alive=alive_here,
                               heartbeat_moved=lambda: self._heartbeat_moved(watch_s))
            if not stale:
                raise RunDirBusy(
                    f"run directory {self.path.parent} is in use by {holder.describe()}: {why}. "
                    "One run per directory: stop that run first, or give this one another "
                    "--run-dir")
            if self._set_aside():
                say(f"llmlaunch: taking over the run directory from {holder.describe()}: {why}")
        raise RunDirBusy(f"run directory {self.path.parent}: could not take {self.path} (other "
                         "starts are racing for it); try again")

    def _link_new(self) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.{self.owner.token}")
        tmp.write_text(json.dumps(asdict(self.owner)) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _read_holder(self) -> Owner | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return Owner.from_dict(json.loads(text))
        except (ValueError, TypeError):   # not ours, or damaged: only its heartbeat can tell
            return Owner(host=f"an unknown host ({self.path} is not an owner record)", boot_id="?",
                         pid=0, process_start=None, started="?")

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _heartbeat_moved(self, watch_s: float) -> bool:
        before = self._mtime()
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            time.sleep(min(0.5, watch_s))
            if self._mtime() != before:
                return True
        return False

    def _set_aside(self) -> bool:
        """Move the stale file out of the way (rename: one racing taker wins); True if we did."""
        aside = self.path.with_name(f".{self.path.name}.stale-{self.owner.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        aside.unlink(missing_ok=True)
        return True

    def _is_ours(self) -> bool:
        holder = self._read_holder()
        return holder is not None and holder.token == self.owner.token

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                if not self._is_ours():
                    holder = self._read_holder()
                    self.lost = holder.describe() if holder else "nobody (the file was removed)"
                    return
                try:
                    os.utime(self.path)
                except OSError:
                    pass
        self._thread = threading.Thread(target=beat, name="llmlaunch-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the file, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 1)
        if self._is_ours():
            self.path.unlink(missing_ok=True)
