"""Issue 27: the `plan --emit --env-setup FILE` and `--container IMAGE` variants of a job, submitted
as written to a one-host local Slurm cluster. The env-setup file is sourced by the batch script and
by every task of every step (preflight and ranks); the container variant runs in its documented dry
run (LLMLAUNCH_CONTAINER_DRY_RUN=1: this cluster has no pyxis), which names the srun options it
would pass and runs the tasks on the host."""
import subprocess

import pytest
from slurm_cluster import local_cluster
from slurm_jobs import emit, job_log, sbatch
from train_job import losses

PLAN = ["--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "4", "--layers", "4", "--hidden", "64",
        "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "4", "--pp", "1", "--tp", "1",
        "--zero", "0", "--precision", "fp32", "--global-batch", "8", "--micro-batch", "2",
        "--tokens", "1024"]   # 1024 tokens = 2 steps of 8 x 64


@pytest.fixture(scope="module")
def slurm():
    with local_cluster(1, "environments") as (env, _state):
        yield env


def test_env_setup_is_sourced_by_the_job_and_every_task(slurm, tmp_path):
    run_dir = tmp_path / "env"
    setup = tmp_path / "setup.sh"
    setup.write_text(f'echo "step=${{SLURM_STEP_ID:-batch}} task=${{SLURM_PROCID:-}}" >> '
                     f'{tmp_path / "sourced.log"}\nexport LLMLAUNCH_SETUP_DONE=1\n')
    emit(run_dir, *PLAN, "--env-setup", str(setup))
    assert subprocess.run(["bash", "-n", str(run_dir / "train.sbatch")]).returncode == 0
    proc, _ = sbatch(slurm, run_dir)
    assert proc.wait(timeout=400) == 0, job_log(run_dir)
    assert "training finished" in job_log(run_dir)
    assert [s for s, _ in losses(run_dir)] == [1, 2]
    lines = (tmp_path / "sourced.log").read_text().splitlines()
    steps = {}
    for line in lines:
        step, task = (field.split("=", 1)[1] for field in line.split())
        steps.setdefault(step, set()).add(task)
    # the batch script once, then the preflight's and the ranks' steps: four tasks each
    assert "batch" in steps, lines
    task_steps = [tasks for step, tasks in steps.items() if step != "batch"]
    assert len(task_steps) == 2 and all(tasks == {"0", "1", "2", "3"} for tasks in task_steps), lines


def test_container_dry_run_names_the_pyxis_options_and_runs(slurm, tmp_path):
    run_dir = tmp_path / "container"
    emit(run_dir, *PLAN, "--container", "stand-in/image:1")
    assert subprocess.run(["bash", "-n", str(run_dir / "train.sbatch")]).returncode == 0
    env = dict(slurm, LLMLAUNCH_CONTAINER_DRY_RUN="1", LLMLAUNCH_PREFLIGHT="0")
    proc, _ = sbatch(env, run_dir)
    assert proc.wait(timeout=400) == 0, job_log(run_dir)
    log = job_log(run_dir)
    mount = f"{run_dir}:{run_dir}"
    assert ("container dry run (LLMLAUNCH_CONTAINER_DRY_RUN=1): srun would get "
            f"--container-image=stand-in/image:1 --container-mounts={mount}") in log, log
    assert "training finished" in log and [s for s, _ in losses(run_dir)] == [1, 2]
