"""Which ranks are still alive: each rank beats a counter in the job's rendezvous store (the c10d
TCPStore at MASTER_ADDR:MASTER_PORT that every rank already reaches), and a rank whose collective
failed reads them, so its error names the ranks and hosts that stopped answering instead of saying
only that a connection closed or a collective timed out.

The heartbeat is a daemon thread with a store connection of its own: it beats while the rank's main
thread waits in a collective, and stops with the process (killed) or with the process stopped
(SIGSTOP) or cut off (a host whose link went down). Counters, not clocks, tell the living from the
dead, so hosts need no common time.
"""
from __future__ import annotations

import os
import re
import threading
import time
from datetime import timedelta

from .hostnet import host_name

HEARTBEAT_S = 1.0
KEY = "llmlaunch/heartbeat/{rank}"
SAW_FAILURE = "llmlaunch/saw-failure/{rank}"   # set by a survivor before it leaves
STORE_TIMEOUT_S = 5.0


def _store():
    import torch.distributed as dist

    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False)


class Heartbeat:
    """Beats this rank's counter every HEARTBEAT_S seconds until the process ends."""

    def __init__(self, rank: int):
        self.rank = rank
        self.host = host_name()
        self.count = 0
        self.thread = threading.Thread(target=self._run, name="llmlaunch-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            store = _store()
        except Exception:  # noqa: BLE001 - no store, no heartbeat: failures are then only unnamed
            return
        key = KEY.format(rank=self.rank)
        while True:
            self.count += 1
            try:
                store.set(key, f"{self.count} {self.host} {os.getpid()}")
            except Exception:  # noqa: BLE001 - the store's host went away: nothing to beat into
                return
            time.sleep(HEARTBEAT_S)


def read_beats(world: int, store=None) -> dict[int, tuple[int, str]]:
    """{rank: (count, host)} of the ranks that have beaten at least once."""
    store = store or _store()
    beats = {}
    for rank in range(world):
        key = KEY.format(rank=rank)
        if store.check([key]):
            count, host, _pid = store.get(key).decode().split(" ", 2)
            beats[rank] = (int(count), host)
    return beats


def silent_ranks(world: int, me: int, wait_s: float = 2.5 * HEARTBEAT_S) -> list[tuple[int, str]]:
    """(rank, host) of the ranks whose counter did not move in `wait_s` seconds (or that never
    beat), other than `me`. Raises OSError/RuntimeError when the store itself is unreachable."""
    store = _store()
    store.set(SAW_FAILURE.format(rank=me), "1")   # alive, and leaving: not to be named by others
    before = read_beats(world, store)
    time.sleep(wait_s)
    after = read_beats(world, store)
    leaving = {rank for rank in range(world) if store.check([SAW_FAILURE.format(rank=rank)])}
    return [(rank, after.get(rank, (0, "?"))[1]) for rank in range(world)
            if rank != me and rank not in leaving
            and (rank not in after or after[rank][0] == before.get(rank, (0,))[0])]


def describe_silent(world: int, me: int) -> str:
    """A clause for an error message: who stopped answering, or why that cannot be told. Also
    appended (one line, 'rank ME: CLAUSE') to the file LLMLAUNCH_LOST_FILE names, when set: the
    Slurm job body reads it there, on the shared run directory, whatever became of the ranks'
    output streams."""
    try:
        silent = silent_ranks(world, me)
    except Exception:  # noqa: BLE001 - the store's host is gone with its rank (or the launcher)
        return record_lost(me, f"the job's rendezvous store at {os.environ.get('MASTER_ADDR')}:"
                               f"{os.environ.get('MASTER_PORT')} stopped answering too: its host "
                               "(rank 0's) or the launcher is gone")
    if not silent:
        return ""
    hosts = sorted({host for _, host in silent})
    ranks = ", ".join(str(rank) for rank, _ in silent)
    return record_lost(me, f"rank{'s' if len(silent) > 1 else ''} {ranks} on {', '.join(hosts)} "
                           "stopped answering")


def record_lost(me: int, clause: str) -> str:
    """Append 'rank ME: CLAUSE' to $LLMLAUNCH_LOST_FILE (when set); returns the clause."""
    path = os.environ.get("LLMLAUNCH_LOST_FILE")
    if path:
        try:
            with open(path, "a") as f:   # one short write per rank: O_APPEND keeps lines whole
                f.write(f"rank {me}: {clause}\n")
        except OSError:
            pass
    return clause


def read_lost(path, wait_s: float) -> str:
    """What the ranks of a start wrote to the lost-peer file: the first line that names ranks and
    hosts, else the first (rank 0's host gone: "rendezvous store ..."), '' when none; waits up to
    wait_s for a failed rank to write it (srun can return first: a stop signal ends the step while
    the rank reads the heartbeats for 2.5 s)."""
    from pathlib import Path

    path = Path(path)
    deadline = time.monotonic() + wait_s
    while not (path.is_file() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    named = [line for line in lines if "rendezvous store" not in line]
    return (named or lines or [""])[0]


def short_cause(text: str) -> str:
    """A backend's error without its source location and advice: gloo's
    '[.../pair.cc:553] Connection closed by peer [10.0.0.2]:23187. This is typically ...' becomes
    'Connection closed by peer [10.0.0.2]:23187'."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text.strip())
    first = re.split(r"\.\s+(?=[A-Z])", text, maxsplit=1)[0]
    return first.rstrip(".")


def is_communication_failure(exc: BaseException) -> bool:
    """A collective or point-to-point operation failed because a peer went away or timed out."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistBackendError", ())) or isinstance(exc, ConnectionError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("connection closed", "connection reset", "timed out",
                                         "broken pipe", "gloo", "nccl", "peer"))
