"""Multi-host launch and failure detection on a local Slurm cluster (issue 16).

For 1, 2 and 3 hosts (NODES=N slurm/local-cluster.sh: one network namespace, hostname and slurmd
per host, tests/helpers/slurm_cluster.py), the job `plan --emit` writes for a tiny CPU model with
4 ranks per host (dp N x pp 2 x tp 2): seconds from `sbatch` to the first step in metrics.jsonl,
and to the job's end (2 steps). Then, on 2 hosts with collective_timeout_s = T: seconds from a
host's loss (its slurmd and every process on it SIGKILLed, or its ranks SIGSTOPped) to the line in
the job log that names it ("lost a peer: ...") and to the end of that start (the job leaves
RUNNING: LLMLAUNCH_MAX_RESTARTS=0 ends it, unless Slurm requeued it first on marking the host
DOWN; then it waits for its 2 nodes and the benchmark cancels it).

Every figure is one measurement on this machine (2 shared CPU cores: start-up is dominated by
importing torch and DeepSpeed in every rank, all ranks of all "hosts" on the same cores).

Run as root: python benchmarks/bench_multihost.py [--hosts 1 2 3] [--timeout-s 15]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from slurm_cluster import host_processes, local_cluster, lose_host  # noqa: E402
from slurm_jobs import emit, job_log, sbatch, steps_logged  # noqa: E402


def plan_args(hosts: int) -> list[str]:
    return ["--gpu", "cpu", "--gpus", str(4 * hosts), "--gpus-per-node", "4", "--layers", "4",
            "--hidden", "64", "--heads", "4", "--vocab", "1024", "--seq-len", "64",
            "--dp", str(hosts), "--pp", "2", "--tp", "2", "--precision", "fp32",
            "--global-batch", str(4 * hosts), "--micro-batch", "2"]


def wait_until(predicate, proc, limit_s: float) -> float:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None
                                           and not predicate()):
            raise SystemExit("the job did not get there; its log:\n" + (proc.stderr.read()
                                                                        if proc else ""))
        time.sleep(0.05)
    return time.monotonic()


def launch(hosts: int, work: Path) -> tuple[float, float]:
    """(sbatch -> first step, sbatch -> end) in seconds for a 2-step job on `hosts` hosts."""
    run_dir = work / f"launch{hosts}" / "run"   # its own folder: the job log lies beside it
    emit(run_dir, *plan_args(hosts), train__steps=2, checkpoint__every=0)
    with local_cluster(hosts, f"bench{hosts}") as (env, _state):
        start = time.monotonic()
        proc, _ = sbatch(env, run_dir)
        first = wait_until(lambda: steps_logged(run_dir) >= 1, proc, 600)
        if proc.wait(timeout=600) != 0:
            raise SystemExit(job_log(run_dir))
        return first - start, time.monotonic() - start


def host_loss(how: str, timeout_s: int, work: Path) -> tuple[float, float]:
    """(loss -> the job log names the host, loss -> job end) in seconds on 2 hosts."""
    run_dir = work / f"loss-{how}" / "run"
    emit(run_dir, *plan_args(2), train__steps=100000, checkpoint__every=0,
         train__collective_timeout_s=timeout_s)
    with local_cluster(2, f"bench-{how}") as (env, state):
        proc, job = sbatch(dict(env, LLMLAUNCH_MAX_RESTARTS="0"), run_dir)
        wait_until(lambda: steps_logged(run_dir) >= 3, proc, 600)
        lost = time.monotonic()
        if how == "killed":
            lose_host(state, "node2")
        else:
            for pid in host_processes("node2"):
                try:
                    if "llmlaunch.launcher.rank" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                        os.kill(pid, signal.SIGSTOP)
                except (OSError, ProcessLookupError):
                    pass
        named = wait_until(lambda: "lost a peer" in job_log(run_dir), None, timeout_s + 120)
        # the start's end: the job leaves RUNNING (it ends, or Slurm requeued it on its own after
        # marking node2 DOWN: it then waits for 2 nodes, and is cancelled here)
        ended = wait_until(lambda: job_state(env, job) != "RUNNING", None, timeout_s + 180)
        subprocess.run(["scancel", job], env=env, timeout=30)
        proc.wait(timeout=120)
        if "node2 stopped answering" not in job_log(run_dir):
            raise SystemExit("the job log does not name node2:\n" + job_log(run_dir))
        return named - lost, ended - lost


def job_state(env, job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                         text=True, timeout=30).stdout.strip()
    return out or "GONE"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--timeout-s", type=int, default=15, help="collective_timeout_s of the loss runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_multihost: needs root (network namespaces, Slurm daemons)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-multihost-") as tmp:
        work = Path(tmp)
        print(f"{'hosts':>5} {'ranks':>5} {'sbatch->step 1 s':>17} {'sbatch->end s':>14}")
        for hosts in args.hosts:
            first, end = launch(hosts, work)
            print(f"{hosts:>5} {4 * hosts:>5} {first:>17.1f} {end:>14.1f}", flush=True)
        print(f"\nhost loss on 2 hosts, collective_timeout_s = {args.timeout_s}:")
        print(f"{'how':>8} {'loss->host named s':>19} {'loss->start end s':>18}")
        for how in ("killed", "stalled"):
            named, ended = host_loss(how, args.timeout_s, work)
            print(f"{how:>8} {named:>19.1f} {ended:>18.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
