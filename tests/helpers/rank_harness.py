"""Run a driver script as N ranks under torch's elastic launcher, for tests.

The launcher and its workers run in a new session (start_new_session=True), so the whole job is one
process group: on timeout, failure or teardown it is killed as a group (SIGKILL), and whatever is
still alive in the session afterwards is reported (a rank that raised but did not exit, say).
Output goes to a file (no pipe to fill up) and is returned; ranks report results by writing JSON
with `write_rank_result`, collected per rank.

Drivers call `init_test_distributed()` first: gloo, with a short default process-group timeout so
that DeepSpeed's sub-groups fail fast too; and `finish_test_distributed()` last.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RESULTS_ENV = "RANK_HARNESS_RESULTS"
GROUP_TIMEOUT_S = 60


@dataclass
class RankRun:
    """What a launch left behind."""

    returncode: int | None
    """The launcher's exit status; None when it was killed on timeout."""
    output: str
    """stdout and stderr of the launcher and every rank, interleaved."""
    results: dict[int, dict] = field(default_factory=dict)
    """rank -> the JSON object the rank wrote with write_rank_result."""
    elapsed_s: float = 0.0
    timed_out: bool = False
    leftover_pids: list[int] = field(default_factory=list)
    """Processes of the job's session still alive after the final kill (should be none)."""

    def check(self) -> "RankRun":
        """Raise AssertionError with the output's tail unless the job succeeded."""
        if self.returncode != 0 or self.timed_out:
            raise AssertionError(f"ranks failed (rc={self.returncode}, timed_out={self.timed_out}, "
                                 f"{self.elapsed_s:.1f}s):\n{self.output[-6000:]}")
        return self


def free_port() -> int:
    """A TCP port free at the time of asking (the launcher binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(session_id: int) -> list[int]:
    """Live (non-zombie) processes whose session is `session_id`."""
    pids = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == session_id and proc.info["status"] != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return pids


def kill_session(session_id: int, grace_s: float = 5.0) -> list[int]:
    """SIGKILL the job's process group and every descendant of its leader (torch's elastic launcher
    starts each rank in a session of its own, out of the group's reach), then wait until the
    session is empty; returns survivors."""
    try:
        descendants = psutil.Process(session_id).children(recursive=True)
    except psutil.Error:
        descendants = []
    try:
        os.killpg(session_id, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for proc in descendants:
        try:
            proc.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace_s
    while True:
        alive = session_pids(session_id)
        if not alive or time.monotonic() > deadline:
            return alive
        for pid in alive:          # a worker that changed process group still shares the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def run_ranks(driver: str | os.PathLike, nproc: int, args: list[str] = (), timeout_s: float = 300,
              results_dir: str | os.PathLike | None = None, env: dict | None = None) -> RankRun:
    """Run `python driver *args` as `nproc` ranks; always returns, never leaves processes behind."""
    results = Path(results_dir or tempfile.mkdtemp(prefix="ranks-"))
    results.mkdir(parents=True, exist_ok=True)
    log_path = results / "output.log"
    job_env = {**os.environ, "OMP_NUM_THREADS": "1", RESULTS_ENV: str(results),
               "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(driver), *map(str, args)]
    start = time.monotonic()
    timed_out, returncode, leftover = False, None, []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=job_env,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            leftover = kill_session(proc.pid)
            if proc.poll() is None:
                proc.wait()
    return RankRun(returncode=None if timed_out else returncode,
                   output=log_path.read_text(errors="replace"), results=_read_results(results),
                   elapsed_s=time.monotonic() - start, timed_out=timed_out,
                   leftover_pids=leftover)


def _read_results(results: Path) -> dict[int, dict]:
    return {int(path.stem.split("_")[1]): json.loads(path.read_text())
            for path in results.glob("rank_*.json")}


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------

def init_test_distributed(timeout_s: float = GROUP_TIMEOUT_S) -> None:
    """gloo process groups that all time out after timeout_s (see llmlaunch.model.distributed)."""
    from llmlaunch.model.distributed import init_distributed

    init_distributed(backend="gloo", timeout_s=timeout_s)


def finish_test_distributed() -> None:
    """The driver's last call: leave the process groups together (llmlaunch.model.distributed.
    finish_distributed), then exit the process at once as llmlaunch's own ranks do
    (llmlaunch.launcher.entry.exit_process: gloo's threads can abort an interpreter's teardown)."""
    from llmlaunch.launcher.entry import exit_process
    from llmlaunch.model.distributed import finish_distributed

    finish_distributed()
    exit_process(0)


def results_dir() -> Path:
    return Path(os.environ[RESULTS_ENV])


def write_rank_result(result: dict) -> None:
    """Report this rank's result (JSON-serialisable) to the test."""
    rank = int(os.environ["RANK"])
    path = results_dir() / f"rank_{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
