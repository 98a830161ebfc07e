"""A run directory has one owner (launcher/run_lock.py): the rules, and real processes holding,
losing and taking over RUN_DIR/owner.lock."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from llmlaunch.launcher.run_lock import Owner, RunDirBusy, RunLock, judge

HOLD = """
import sys, time
from pathlib import Path
from llmlaunch.launcher.run_lock import Owner, RunLock
RunLock(Path(sys.argv[1]), Owner.here("holder test"), heartbeat_s=0.2).acquire()
print("held", flush=True)
time.sleep(600)
"""


def owner(**kw) -> Owner:
    return Owner(**{"host": "node1", "boot_id": "b1", "pid": 100, "process_start": 5.0,
                    "started": "t", **kw})


def test_the_rules():
    me = owner(pid=200)
    never = lambda: pytest.fail("a holder on this host is judged by its pid, not its heartbeat")
    assert judge(owner(), me, alive=lambda pid, t: True, heartbeat_moved=never) == (
        False, "it is running on this host")
    assert judge(owner(), me, alive=lambda pid, t: False, heartbeat_moved=never) == (
        True, "that process is gone")
    # another host: its pid says nothing here, its heartbeat does
    assert not judge(owner(host="node2"), me, alive=lambda *a: False,
                     heartbeat_moved=lambda: True)[0]
    stale, why = judge(owner(host="node2"), me, alive=lambda *a: True,
                       heartbeat_moved=lambda: False)
    assert stale and "host node2 is gone or hung" in why
    # same host name after a reboot (another boot id): the old pid is meaningless
    assert judge(owner(boot_id="b0", host="node1"), me, alive=lambda *a: True,
                 heartbeat_moved=lambda: False)[0]
    # a requeued Slurm job finds its own earlier start's lock
    stale, why = judge(owner(job="12", start=0, host="node2"), owner(job="12", start=1),
                       alive=lambda *a: True, heartbeat_moved=lambda: True)
    assert stale and why.startswith("it is this job's start 0")


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_live_holder_is_refused_by_name_and_a_dead_one_taken_over(tmp_path, holder):
    me = Owner.here("llmlaunch train")
    with pytest.raises(RunDirBusy) as refused:
        RunLock(tmp_path, me).acquire(watch_s=0.5)
    message = str(refused.value)
    assert message.startswith(f"run directory {tmp_path} is in use by holder test (pid {holder.pid} "
                              f"on {me.host}, started ")
    assert "it is running on this host" in message and len(message.splitlines()) == 1
    mtime = (tmp_path / "owner.lock").stat().st_mtime_ns
    time.sleep(0.5)
    assert (tmp_path / "owner.lock").stat().st_mtime_ns != mtime        # its heartbeat
    started = json.loads((tmp_path / "owner.lock").read_text())["started"]
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    said = []
    lock = RunLock(tmp_path, me).acquire(say=said.append)
    assert said == [f"llmlaunch: taking over the run directory from holder test (pid {holder.pid} "
                    f"on {me.host}, started {started}): that process is gone"]
    assert json.loads((tmp_path / "owner.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "owner.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []              # no temporary left


def test_a_holder_on_another_host_is_judged_by_its_heartbeat(tmp_path):
    other = owner(host="gone-host", boot_id="x", pid=1)
    (tmp_path / "owner.lock").write_text(json.dumps(vars(other)))
    me = Owner.here("llmlaunch train")
    beating = threading.Event()

    def beat():
        while not beating.wait(0.05):
            os.utime(tmp_path / "owner.lock")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    with pytest.raises(RunDirBusy, match="its heartbeat moved within"):
        RunLock(tmp_path, me).acquire(watch_s=0.6)
    beating.set()
    thread.join()
    said = []
    RunLock(tmp_path, me).acquire(watch_s=0.6, say=said.append).release()
    assert said and said[0].startswith("llmlaunch: taking over the run directory from")
    assert "host gone-host is gone or hung" in said[0]


def test_the_owner_notices_when_its_lock_was_taken(tmp_path):
    lock = RunLock(tmp_path, Owner.here("llmlaunch train"), heartbeat_s=0.05).acquire()
    (tmp_path / "owner.lock").write_text(json.dumps(vars(owner(host="intruder"))))
    deadline = time.monotonic() + 5
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "on intruder" in lock.lost
    lock.release()
    assert (tmp_path / "owner.lock").exists()      # not ours: left alone
