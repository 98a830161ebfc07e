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
