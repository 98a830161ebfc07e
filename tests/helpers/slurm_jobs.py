"""Emitted jobs on a local Slurm cluster: `plan --emit`, sbatch, their logs and progress."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def emit(run_dir: Path, *plan_args: str, **train) -> str:
    """`llmlaunch plan ... --emit RUN_DIR` (its printed report), then the run shortened: train.*
    and checkpoint.* keys from `train` (run.yaml is the emitted one otherwise)."""
    out = subprocess.run([sys.executable, "-m", "llmlaunch", "plan", *plan_args, "--emit",
                          str(run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    for key, value in train.items():
        section, name = key.split("__")
        config[section][name] = value
    (run_dir / "run.yaml").write_text(yaml.safe_dump(config))
    return out.stdout


def sbatch(env, run_dir: Path, wait=True):
    """sbatch [--wait] RUN_DIR/train.sbatch from RUN_DIR's parent; (Popen, job id)."""
    cmd = ["sbatch", "--wait"] if wait else ["sbatch"]
    proc = subprocess.Popen(cmd + [str(run_dir / "train.sbatch")], cwd=run_dir.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("Submitted batch job"), first + proc.stderr.read()
    return proc, first.split()[-1]


def job_log(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in run_dir.parent.glob("slurm-*.out"))


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def assert_losses_equal_one_process(run_dir: Path, work: Path, *, grad_accum: int, steps: int):
    """The job's per-step losses equal one process's (dp = pp = tp = cp = ep = 1, no sequence
    parallelism, the same global batch through `grad_accum`, the job's own run.yaml), fp32, relative
    1e-5."""
    import pytest
    from train_job import Job, losses

    one = Job(work, "layout.dp=1", "layout.pp=1", "layout.tp=1", "layout.cp=1", "layout.ep=1",
              "layout.sequence_parallel=false", f"layout.grad_accum={grad_accum}",
              config=run_dir / "run.yaml", nproc=1)
    assert one.wait(timeout=300) == 0, one.output()[-3000:]
    got, want = losses(run_dir), losses(work)
    assert [s for s, _ in got] == list(range(1, steps + 1)) == [s for s, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)
