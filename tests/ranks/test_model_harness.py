"""The rank harness fails fast and leaves nothing behind. This file is also the driver it runs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from rank_harness import run_ranks, session_pids  # noqa: E402

MESSAGE = "rank 1 fails on purpose"


def driver_main(mode: str):
    rank = int(os.environ["RANK"])
    if mode == "raise":
        import torch
        import torch.distributed as dist

        from rank_harness import init_test_distributed

        init_test_distributed()
        if rank == 1:
            raise RuntimeError(MESSAGE)
        dist.all_reduce(torch.ones(1))      # rank 0 waits for a peer that is gone
        dist.barrier()
    elif mode == "hang":
        # a grandchild in a process group of its own: only the session sweep reaches it
        subprocess.Popen(["sleep", "600"], process_group=0)
        Path(os.environ["RANK_HARNESS_RESULTS"], f"started_{rank}").touch()
        time.sleep(600)


def test_a_rank_that_raises_fails_the_run_fast_and_visibly(tmp_path):
    run = run_ranks(__file__, 2, ["raise"], timeout_s=120, results_dir=tmp_path)
    assert run.returncode not in (0, None) and not run.timed_out
    assert MESSAGE in run.output
    assert run.elapsed_s < 45, run.elapsed_s       # start-up ~10 s; the group timeout is 60 s
    assert run.leftover_pids == []


def test_a_hanging_job_is_killed_at_the_timeout_with_its_grandchildren(tmp_path):
    start = time.monotonic()
    run = run_ranks(__file__, 2, ["hang"], timeout_s=8, results_dir=tmp_path)
    assert run.timed_out and run.returncode is None
    assert time.monotonic() - start < 20
    assert sorted(p.name for p in tmp_path.glob("started_*")) == ["started_0", "started_1"]
    assert run.leftover_pids == []


def test_session_pids_sees_a_live_session():
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert session_pids(proc.pid) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert session_pids(proc.pid) == []


if __name__ == "__main__":
    driver_main(sys.argv[1])
