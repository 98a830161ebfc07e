"""`llmlaunch train --nproc`: real DeepSpeed ranks on CPU (gloo) with the tiny config.

Each test starts the job in its own session and kills the whole process group when it ends, so no
rank outlives its test."""
import json
import os
import signal
import time

import pytest

from train_job import Job, losses  # tests/helpers (conftest puts it on sys.path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    job = Job(run_dir, "train.steps=40", "checkpoint.every=10", "train.monitors=[tensorboard,csv]",
              warnings=True)
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    return run_dir


def test_a_pipeline_run_prints_none_of_the_warnings_traced_to_their_source(uninterrupted):
    """docs/launch.md, "Warnings": the tied weights' broadcast no longer puts a collective into the
    autograd graph; DeepSpeed's deprecated all_gather call is hidden by its message."""
    output = (uninterrupted.parent / "run.out").read_text()
    assert "may lead to silently incorrect behavior" not in output
    assert "all_gather_into_tensor" not in output


def test_tiny_run_monitors_carry_the_jsonl_losses_and_one_predicted_step_time(uninterrupted):
    """train.monitors [tensorboard, csv]: TensorBoard's reader and the CSV give metrics.jsonl's
    losses; the step time the training log predicted is the one metrics.jsonl and the run page use."""
    import csv
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmlaunch.metrics_file import read_metrics
    from llmlaunch.report.run_page import predicted_step_time_s

    records = read_metrics(uninterrupted / "metrics.jsonl")
    acc = EventAccumulator(str(uninterrupted / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == \
        [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]
    with open(uninterrupted / "metrics.csv", newline="") as f:
        assert [float(row["loss"]) for row in csv.DictReader(f)] == [r["loss"] for r in records]
    log = (uninterrupted / "logs" / "rank00000.log").read_text()
    logged = float(re.search(r"planner predicts ([0-9.]+) s per step", log)[1])
    assert {round(r["step_time_predicted_s"], 3) for r in records} == {logged}
    assert round(predicted_step_time_s(records, None), 3) == logged


def test_tiny_run_learns_and_checkpoints(uninterrupted):
    curve = losses(uninterrupted)
    assert [s for s, _ in curve] == list(range(1, 41))
    first, last = curve[0][1], curve[-1][1]
    assert last < first - 0.5, curve
    # tiny-cpu warms up over 3 steps to lr 3e-3: step 1 at 1e-3, step 3 at the peak
    lrs = [json.loads(line)["lr"] for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert lrs[:3] == pytest.approx([0.001, 0.002, 0.003]) and lrs[2] == 0.003
    assert lrs[-1] == pytest.approx(0.0003, rel=0.01)
    record = json.loads((uninterrupted / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record) >= {"step", "loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "mfu",
                           "step_time_s", "memory_gib"}
    ckpt = uninterrupted / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000040"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000030", "step00000040"]
    assert (uninterrupted / "data" / "manifest.json").is_file()
    assert list((uninterrupted / "logs").glob("rank*.log"))


def test_signal_checkpoints_and_resume_equals_uninterrupted(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    job = Job(run_dir, "train.steps=40", "checkpoint.every=10")
    job.wait_for_steps(13)
    os.kill(job.proc.pid, signal.SIGUSR1)  # to `llmlaunch train`, which forwards it to the ranks
    assert job.wait(timeout=120) == 75, job.output()[-3000:]  # EX_TEMPFAIL: stopped, resumable
    assert "run the same command again to resume" in job.output()
    stopped = losses(run_dir)[-1][0]
    assert 13 <= stopped < 40
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{stopped:08d}"
    resumed = Job(run_dir, "train.steps=40", "checkpoint.every=10")
    assert resumed.wait(timeout=400) == 0, resumed.output()[-3000:]
    assert "resumed from" in (run_dir / "logs" / "rank00000.log").read_text()
    assert stopped % 10, "a stop between two checkpoints saves the step it stopped after"
    assert losses(run_dir) == losses(uninterrupted)   # bit for bit


def test_resume_right_after_a_checkpoint_is_bit_exact(tmp_path, uninterrupted):
    """A run stopped right after its step-30 checkpoint (its metrics cut there, as a crash leaves
    them) resumes to the same losses, grad norms and learning rates as the uninterrupted run."""
    import shutil

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(uninterrupted / "data", run_dir / "data")
    shutil.copytree(uninterrupted / "checkpoints" / "step00000030",
                    run_dir / "checkpoints" / "step00000030")
    (run_dir / "checkpoints" / "latest").write_text("step00000030")
    lines = (uninterrupted / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:30]) + "\n" + lines[30][:17])
    job = Job(run_dir, "train.steps=40", "checkpoint.every=10")
    assert job.wait(timeout=300) == 0, job.output()[-3000:]
    keys = ("step", "loss", "grad_norm", "lr")
    got = [[json.loads(line)[k] for k in keys] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    want = [[json.loads(line)[k] for k in keys] for line in lines]
    assert got == want


def test_stop_signal_in_the_first_second_is_not_lost(tmp_path):
    """USR1 while the command is still starting: nothing starts (or the ranks stop before their
    first step), exit 75, one line; no rank is left running."""
    job = Job(tmp_path / "run", "train.steps=50")
    time.sleep(0.3)
    os.kill(job.proc.pid, signal.SIGUSR1)
    assert job.wait(timeout=120) == 75, job.output()[-3000:]
    out = job.output()
    assert "stopped (SIGUSR1) before" in out and "run the same command again" in out
    assert "Traceback" not in out
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    assert not metrics_file.exists() or not metrics_file.read_text().strip()   # no step trained


def test_stop_signal_while_the_ranks_start_stops_before_the_first_step(tmp_path):
    job = Job(tmp_path / "run", "train.steps=50")
    deadline = time.monotonic() + 60
    while not job.ranks():       # the ranks exist: they are importing torch, building the engine
        assert time.monotonic() < deadline and job.proc.poll() is None, job.output()[-3000:]
        time.sleep(0.05)
    os.kill(job.proc.pid, signal.SIGUSR1)
    assert job.wait(timeout=120) == 75, job.output()[-3000:]
    record = json.loads((tmp_path / "run" / "stopped.json").read_text())
    assert record["checkpoint"] is None or record["step"] >= 1
    assert "stopped (SIGUSR1)" in job.output() and "Traceback" not in job.output()


def test_ctrl_c_checkpoints_and_exits_130_with_one_line(tmp_path):
    job = Job(tmp_path / "run", "train.steps=100000", "checkpoint.every=0")
    job.wait_for_steps(3)
    os.killpg(job.proc.pid, signal.SIGINT)   # what a terminal sends: the whole foreground group
    assert job.wait(timeout=120) == 130, job.output()[-3000:]
    out = job.output()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    [line] = [line for line in out.splitlines() if line.startswith("llmlaunch: interrupted")]
    record = json.loads((tmp_path / "run" / "stopped.json").read_text())
    assert record["signal"] == "SIGINT" and record["step"] >= 3
    assert f"checkpoint step{record['step']:08d}" in line
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == f"step{record['step']:08d}"


def test_resume_with_another_layout_is_refused_when_resharding_is_off(tmp_path, uninterrupted):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    job = Job(run_dir, "train.steps=50", "layout.dp=4", "layout.pp=1", "layout.grad_accum=2",
              "checkpoint.reshard=never")
    assert job.wait(timeout=300) != 0
    out = job.output()
    assert ("checkpoint step00000040 was written with dp=2 pp=2 tp=1, ZeRO-1, pipeline engine but "
            "the run uses dp=4 pp=1 tp=1, ZeRO-1, plain engine, and checkpoint.reshard is never") in out


def test_killed_rank_ends_the_job_fast(tmp_path):
    job = Job(tmp_path / "run", "train.steps=100000", "checkpoint.every=0")
    job.wait_for_steps(3)
    victim = job.ranks()[-1]
    victim_rank = int(victim.environ()["RANK"])
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    rc = job.wait(timeout=90)
    assert rc != 0
    assert time.monotonic() - killed_at < 60
    out = job.output()
    survivors = [line for line in out.splitlines() if line.startswith("llmlaunch: error on rank")]
    assert survivors and all(f"rank {victim_rank} on " in line and "stopped answering" in line
                             for line in survivors), out[-3000:]
    assert f"rank {victim_rank} failed first, killed by SIGKILL" in out


def test_stalled_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    timeout_s = 15
    job = Job(tmp_path / "run", "train.steps=100000", "checkpoint.every=0",
              f"train.collective_timeout_s={timeout_s}")
    job.wait_for_steps(3)
    victim = job.ranks()[-1]
    stalled_at = time.monotonic()
    victim.send_signal(signal.SIGSTOP)
    rc = job.wait(timeout=timeout_s + 100)
    assert rc != 0
    assert time.monotonic() - stalled_at < timeout_s + 60
