"""``data prepare --tasks N --slurm``: the stages of data/prepare_tasks.py as Slurm jobs of the same
command, so that Slurm spreads them over hosts (no scheduler of llmlaunch's own):

    sbatch --array=0-(N-1)  ... data prepare ARGS --stage scan     (task = SLURM_ARRAY_TASK_ID)
    sbatch --array=0-(N-1) --dependency=afterok:SCAN  ... --stage dedup
    sbatch --dependency=afterok:DEDUP --wait  ... --stage finish

A failed task cancels the stages after it (``--kill-on-invalid-dep=yes``). The work folder and
``--out`` must be on a file system every host sees. Each task's log is WORK/slurm-STAGE-JOB_TASK.out.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from .errors import DataError


def stage_command(argv: list[str], stage: str) -> str:
    """The shell line one task runs: the same `llmlaunch data prepare` with --stage."""
    return shlex.join(["python3", "-m", "llmlaunch", "data", "prepare", *argv, "--stage", stage])


def submit(argv: list[str], tasks: int, work: Path, options: list[str], env=None,
           log=print) -> int:
    """Submit the three stages and wait for the last; returns its exit code."""
    work.mkdir(parents=True, exist_ok=True)
    previous = None
    for stage in ("scan", "dedup", "finish"):
        cmd = ["sbatch", "--parsable", f"--job-name=llmlaunch-prepare-{stage}",
               f"--output={work}/slurm-{stage}-%A_%a.out", "--kill-on-invalid-dep=yes", *options]
        if stage != "finish":
            cmd.append(f"--array=0-{tasks - 1}")
        if previous:
            cmd.append(f"--dependency=afterok:{previous}")
        if stage == "finish":
            cmd.append("--wait")
        cmd += ["--wrap", stage_command(argv, stage)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                 timeout=None if stage == "finish" else 60)
        except FileNotFoundError:
            raise DataError("data prepare --slurm needs sbatch on PATH (run it on a Slurm login "
                            "node, or drop --slurm to run the tasks here)") from None
        if stage != "finish" and run.returncode != 0:
            raise DataError(f"sbatch of stage {stage} failed: {run.stderr.strip()}")
        previous = run.stdout.strip().split(";")[0]
        log(f"data prepare: stage {stage}: Slurm job {previous}"
            + (f" ({tasks} array tasks)" if stage != "finish" else ""))
    if run.returncode != 0:
        log(f"data prepare: a stage failed (exit {run.returncode}); logs in {work}/slurm-*.out")
    return run.returncode
