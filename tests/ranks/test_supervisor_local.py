"""The local supervisor (`llmlaunch train`, launcher/job.py) owns its run directory and takes its
ranks with it: one job of real ranks (tiny-cpu, 4 ranks) serves both checks."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from train_job import Job  # tests/helpers (conftest puts it on sys.path)


def left_behind(run_dir, supervisor_pid: int) -> list[str]:
    """Processes of this run still alive: the elastic launcher and the ranks (their command line
    names the run directory, their environment the supervisor)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            mine = str(run_dir) in cmdline or \
                proc.environ().get("LLMLAUNCH_SUPERVISOR_PID") == str(supervisor_pid)
            if mine and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {cmdline[:120]}")
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A long run with steps done: (Job, run dir)."""
    run_dir = tmp_path_factory.mktemp("owned") / "run"
    job = Job(run_dir, "train.steps=100000", "checkpoint.every=0")
    try:
        job.wait_for_steps(2)
        yield job, run_dir
    finally:
        job.kill()


def test_a_second_train_on_a_running_run_directory_refuses_naming_the_holder(running):
    job, run_dir = running
    second = subprocess.run([sys.executable, "-m", "llmlaunch", "train", "--config", "tiny-cpu",
                             "--run-dir", str(run_dir)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert line.startswith(f"llmlaunch: error: run directory {run_dir} is in use by llmlaunch "
                           f"train (pid {job.proc.pid} on "), line
    assert "it is running on this host" in line and "another --run-dir" in line
    assert job.proc.poll() is None                       # the first run goes on
    before = job.steps_logged()
    job.wait_for_steps(before + 1)


def test_nothing_outlives_a_sigkilled_supervisor(running):
    """10 s after a SIGKILL of `llmlaunch train` (the supervisor alone, not its group), neither
    the elastic launcher nor any rank is left; the lock it held names the dead process."""
    job, run_dir = running
    # the supervisor, the elastic launcher and 4 ranks
    assert len(left_behind(run_dir, job.proc.pid)) == 6
    os.kill(job.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    job.proc.wait(timeout=10)
    while left_behind(run_dir, job.proc.pid) and time.monotonic() - killed_at < 10:
        time.sleep(0.2)
    assert left_behind(run_dir, job.proc.pid) == []
    holder = json.loads((run_dir / "owner.lock").read_text())
    assert holder["pid"] == job.proc.pid and not psutil.pid_exists(job.proc.pid)
