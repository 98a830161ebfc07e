"""Stale JIT build locks are reported before they can hang deepspeed.initialize."""
import os
import time

import pytest

from llmlaunch.launcher.build_locks import STALE_AFTER_S, check_build_locks, stale_build_locks


def make_lock(root, op, age_s):
    lock = root / "py311_cpu" / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_only_locks_older_than_the_limit_are_stale(tmp_path):
    old = make_lock(tmp_path, "fused_adam", STALE_AFTER_S + 60)
    make_lock(tmp_path, "cpu_adam", 5)               # a build may be under way: not stale
    assert stale_build_locks(tmp_path) == [old]
    assert stale_build_locks(tmp_path / "absent") == []


def test_check_names_the_file_and_the_remedy(tmp_path):
    check_build_locks(tmp_path)                      # nothing there: passes
    lock = make_lock(tmp_path, "fused_adam", 3600)
    with pytest.raises(RuntimeError, match=f"rm {lock}") as err:
        check_build_locks(tmp_path)
    assert "60 min old" in str(err.value) and "\n" not in str(err.value)
