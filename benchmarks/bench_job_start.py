"""How fast a Slurm job starts: seconds from `sbatch` to the first step in metrics.jsonl, and to the
job's end, for the job `plan --emit` writes (tiny CPU model, 4 ranks on one host: dp 1 x pp 2 x tp 2,
2 steps, preflight on), on a one-host Slurm cluster on this machine (slurm/local-cluster.sh). The
job body is whatever llmlaunch this interpreter imports: run it once per version to compare (issue
22 measured the bash body of 0.1 against the Python supervisor that replaced it this way).

Every figure is measured on this machine (2 shared CPU cores: start-up is dominated by importing
torch and DeepSpeed in every rank); the runs alternate nothing else, so compare runs made back to
back on an otherwise idle machine.

Run as root, from outside a checkout (so that `python -m llmlaunch` imports the llmlaunch to time,
not a folder of the working directory): cd /tmp && python .../benchmarks/bench_job_start.py
[--runs 3] [--no-preflight]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from slurm_cluster import local_cluster  # noqa: E402
from slurm_jobs import emit, job_log, sbatch, steps_logged  # noqa: E402

PLAN = ["--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "4", "--layers", "4", "--hidden", "64",
        "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "1", "--pp", "2", "--tp", "2",
        "--precision", "fp32", "--global-batch", "4", "--micro-batch", "2"]


def one_job(env: dict, run_dir: Path) -> tuple[float, float]:
    """(sbatch -> step 1, sbatch -> end) in seconds."""
    emit(run_dir, *PLAN, train__steps=2, checkpoint__every=0)
    start = time.monotonic()
    proc, _ = sbatch(env, run_dir)
    while steps_logged(run_dir) < 1:
        if proc.poll() is not None:
            raise SystemExit("the job ended before its first step:\n" + job_log(run_dir))
        time.sleep(0.05)
    first = time.monotonic() - start
    if proc.wait(timeout=600) != 0:
        raise SystemExit(job_log(run_dir))
    return first, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-preflight", action="store_true", help="LLMLAUNCH_PREFLIGHT=0")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_job_start: needs root (the Slurm daemons)", file=sys.stderr)
        return 2
    import llmlaunch.launcher

    print(f"llmlaunch from {Path(llmlaunch.launcher.__file__).parent.parent}")
    firsts, ends = [], []
    with tempfile.TemporaryDirectory(prefix="bench-job-start-") as tmp, \
            local_cluster(1, "bench-start") as (env, _state):
        if args.no_preflight:
            env = dict(env, LLMLAUNCH_PREFLIGHT="0")
        for run in range(args.runs):
            first, end = one_job(env, Path(tmp) / f"run{run}" / "run")
            firsts.append(first)
            ends.append(end)
            print(f"run {run + 1}: sbatch -> step 1 {first:.1f} s, sbatch -> end {end:.1f} s",
                  flush=True)
    print(f"median of {args.runs}: sbatch -> step 1 {statistics.median(firsts):.1f} s, "
          f"sbatch -> end {statistics.median(ends):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
