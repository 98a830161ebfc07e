"""slurm/train.sh on a real single-node Slurm controller (slurm/local-cluster.sh starts it).

Needs root and Debian's slurmctld, slurmd, slurm-client and munge, which tests/setup.sh
installs. Jobs are tiny CPU runs of the tiny-cpu config; each test cancels its jobs when it ends."""
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from slurm_cluster import local_cluster
from slurm_jobs import (assert_losses_equal_one_process, emit, job_log as emitted_log,
                        sbatch as emitted_sbatch)

REPO = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO / "slurm" / "train.sh"
TINY = REPO / "llmlaunch" / "configs" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def slurm():
    with local_cluster(1, "single") as (env, _state):
        yield env


# Preflight (8 s a start here: every rank imports torch) is tested by the default job and the
# USR1-during-preflight case; the tests of stops and failures skip it, as other modules' do.
NO_PREFLIGHT = {"LLMLAUNCH_PREFLIGHT": "0"}


def submit(env, cwd, *args, wait=True):
    """sbatch [--wait] slurm/train.sh ARGS; returns (Popen, job id)."""
    cmd = ["sbatch", "--wait"] if wait else ["sbatch"]
    proc = subprocess.Popen(cmd + [str(TRAIN_SH), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("Submitted batch job"), first + proc.stderr.read()
    return proc, first.split()[-1]


def metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_steps(run_dir, count, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while len(metrics(run_dir)) < count:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.1)


def rank_processes(run_dir):
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "llmlaunch.launcher.rank" in " ".join(p.info["cmdline"])
            and str(run_dir) in " ".join(p.info["cmdline"])]


def job_log(cwd):
    return "\n".join(p.read_text() for p in Path(cwd).glob("slurm-*.out"))


@pytest.fixture(scope="module")
def default_run(slurm, tmp_path_factory):
    """`sbatch --wait slurm/train.sh` as it is: the tiny CPU run, 4 ranks, dp 2 x pp 2."""
    cwd = tmp_path_factory.mktemp("submit")
    proc, _ = submit(slurm, cwd)
    assert proc.wait(timeout=600) == 0, job_log(cwd)
    return cwd / "runs" / "tiny-cpu", cwd


def test_default_job_trains_with_four_ranks(default_run):
    run_dir, cwd = default_run
    steps = metrics(run_dir)
    assert [m["step"] for m in steps] == list(range(1, 31))
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000030"
    assert len(list((run_dir / "logs").glob("rank*.log"))) == 4
    assert "preflight: all ranks passed" in (run_dir / "logs").joinpath(
        next(p.name for p in (run_dir / "logs").glob("preflight-*-0.out"))).read_text()
    assert "training finished" in job_log(cwd)


def test_tensor_parallel_job(slurm, tmp_path):
    run_dir = tmp_path / "tp2"
    proc, _ = submit(slurm, tmp_path, str(TINY), str(run_dir), "layout.dp=2", "layout.pp=1",
                     "layout.tp=2", "train.steps=12", "checkpoint.every=6")
    assert proc.wait(timeout=600) == 0, job_log(tmp_path)
    steps = metrics(run_dir)
    assert len(steps) == 12 and steps[-1]["loss"] < steps[0]["loss"]
    assert (run_dir / "checkpoints" / "step00000012").is_dir()


def test_preemption_requeues_and_resumes_to_the_same_curve(slurm, tmp_path, default_run):
    run_dir = tmp_path / "preempted"
    proc, job = submit(dict(slurm, **NO_PREFLIGHT), tmp_path, str(TINY), str(run_dir))
    wait_for_steps(run_dir, 8, proc)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True, timeout=30)
    assert proc.wait(timeout=600) == 0, job_log(tmp_path)
    log = job_log(tmp_path)
    assert "requeueing job" in log and "restart 1" in log
    assert "resumed from" in (run_dir / "logs" / "rank00000.log").read_text()
    got = [(m["step"], m["loss"]) for m in metrics(run_dir)]
    want = [(m["step"], m["loss"]) for m in metrics(default_run[0])]
    assert got == want   # bit for bit


def processes(module, run_dir):
    """The tasks (python3 processes, not the srun that started them) running `module`."""
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and Path(p.info["cmdline"][0]).name.startswith("python")
            and module in " ".join(p.info["cmdline"]) and str(run_dir) in " ".join(p.info["cmdline"])]


@pytest.mark.parametrize("phase", ["preflight", "start-up"])
def test_usr1_before_training_requeues_and_the_job_finishes(slurm, tmp_path, phase):
    """USR1 while preflight runs, or while the ranks start (before their first step): the job stops
    without a new checkpoint, requeues itself, and the requeued job trains to the end."""
    run_dir = tmp_path / phase
    env = slurm if phase == "preflight" else dict(slurm, **NO_PREFLIGHT)
    proc, job = submit(env, tmp_path, str(TINY), str(run_dir), "train.steps=4",
                       "checkpoint.every=2")
    module = "llmlaunch.launcher.preflight" if phase == "preflight" else "llmlaunch.launcher.rank"
    deadline = time.monotonic() + 120
    while not processes(module, run_dir):
        assert proc.poll() is None and time.monotonic() < deadline, job_log(tmp_path)
        time.sleep(0.02)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True, timeout=30)
    assert proc.wait(timeout=600) == 0, job_log(tmp_path)
    log = job_log(tmp_path)
    assert "restart 1" in log, log
    assert ("before training started: no new checkpoint" in log
            or "before the first step, nothing to checkpoint" in log), log
    assert "training finished" in log
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3, 4]
    assert "died with SIGUSR1" not in log and "Traceback" not in log


def test_data_that_does_not_fit_fails_before_any_rank_starts(slurm, tmp_path):
    (tmp_path / "empty").mkdir()
    run_dir = tmp_path / "nodata"
    proc, _ = submit(slurm, tmp_path, str(TINY), str(run_dir), f"data.path={tmp_path / 'empty'}")
    assert proc.wait(timeout=300) != 0
    log = job_log(tmp_path)
    assert "is a directory without manifest.json" in log
    assert log.count("llmlaunch: error:") == 2, log   # the check's line and the body's
    assert not list((run_dir / "logs").glob("preflight-*")) and not list((run_dir / "logs").glob("train-*"))


def test_killed_rank_ends_the_job_within_a_minute(slurm, tmp_path):
    run_dir = tmp_path / "killed"
    no_requeue = dict(slurm, LLMLAUNCH_MAX_RESTARTS="0", **NO_PREFLIGHT)   # ends, rank named
    proc, _ = submit(no_requeue, tmp_path, str(TINY), str(run_dir), "train.steps=100000",
                     "checkpoint.every=0")
    wait_for_steps(run_dir, 3, proc)
    victim = rank_processes(run_dir)[-1]
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    rc = proc.wait(timeout=120)
    assert rc != 0
    assert time.monotonic() - killed_at < 60
    assert not rank_processes(run_dir)
    assert "not requeued: job" in job_log(tmp_path) and "stopped answering" in job_log(tmp_path)


def test_stalled_rank_ends_the_job_after_the_timeout(slurm, tmp_path):
    timeout_s = 15
    run_dir = tmp_path / "stalled"
    proc, _ = submit(dict(slurm, LLMLAUNCH_MAX_RESTARTS="0", **NO_PREFLIGHT), tmp_path, str(TINY),
                     str(run_dir), "train.steps=100000", "checkpoint.every=0",
                     f"train.collective_timeout_s={timeout_s}")
    wait_for_steps(run_dir, 3, proc)
    victim = rank_processes(run_dir)[-1]
    stalled_at = time.monotonic()
    victim.send_signal(signal.SIGSTOP)
    try:
        rc = proc.wait(timeout=timeout_s + 120)
    finally:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    assert rc != 0
    assert time.monotonic() - stalled_at < timeout_s + 60


def test_emitted_zero3_job_runs_to_completion(slurm, tmp_path):
    """Issue 13: `plan --emit` of a ZeRO-3 layout at pp = 1 (DeepSpeed's plain engine), submitted
    as written."""
    run_dir = tmp_path / "zero3"
    emit(run_dir, "--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "4", "--layers", "4",
         "--hidden", "64", "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "4",
         "--pp", "1", "--tp", "1", "--zero", "3", "--precision", "fp32", "--global-batch", "16",
         "--micro-batch", "2", "--tokens", "4096")   # 4096 tokens = 4 steps of 16 x 64
    assert "zero_stage: 3" in (run_dir / "run.yaml").read_text()
    proc, _ = emitted_sbatch(slurm, run_dir)
    assert proc.wait(timeout=400) == 0, emitted_log(run_dir)
    assert "training finished" in emitted_log(run_dir)
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3, 4]


def test_emitted_context_parallel_job_equals_one_process(slurm, tmp_path):
    """Issue 25: `plan --emit --cp 2` with tp 2 and sequence parallelism (gpt2: learned positions of
    the rank's chunks, the tied head), submitted as written: 4 ranks, the losses of one process."""
    run_dir = tmp_path / "cp2"
    emit(run_dir, "--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "4", "--layers", "2",
         "--hidden", "64", "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "1",
         "--pp", "1", "--tp", "2", "--cp", "2", "--sequence-parallel", "--zero", "1",
         "--precision", "fp32", "--global-batch", "16", "--micro-batch", "2", "--tokens", "4096")
    layout = yaml.safe_load((run_dir / "run.yaml").read_text())["layout"]
    assert (layout["cp"], layout["tp"], layout["sequence_parallel"]) == (2, 2, True)
    proc, _ = emitted_sbatch(slurm, run_dir)
    assert proc.wait(timeout=400) == 0, emitted_log(run_dir)
    assert "training finished" in emitted_log(run_dir)
    assert_losses_equal_one_process(run_dir, tmp_path / "one", grad_accum=8, steps=4)
