"""Damaged checkpoints under real ranks (issue 22's fault tests): `llmlaunch train` on tiny-cpu
(dp 2 x pp 2, the pipeline engine, ZeRO-1). One source run writes tags every 2 steps; each test
resumes a copy of it after doing one kind of harm.

- A flipped bit in an Adam moment, a truncated file and a deleted file in the newest tags: the run
  passes over each with one line naming the tag and the file, resumes from the newest tag that
  verifies (here one written before checksums existed) and its losses equal the source run's.
- A state that verifies but is poison (a NaN weight, signed again as if it had been saved so):
  the steps after it are not finite, and pruning keeps the trusted tag before it.
- A tag of llmlaunch 0.1 (DeepSpeed's files and the marker, no layout-free state) still resumes,
  through DeepSpeed's own load (this file is also the driver that writes one from a run's tag).
- A raised train.steps continues the learning rate without a jump; a save into a full file system
  (a small tmpfs) names the path, the space a tag needs and the space free.
(Another model shape and another global batch are refused before any engine is built: the torch
tier's tests/torch/test_checkpoint_store.py runs the same store.choose in one process.)
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # as a driver, too
from checkpoint_tags import flip_bit_in_tensor, make_legacy, resign, truncate  # noqa: E402
from train_job import Job, losses  # noqa: E402

STEPS, EVERY = 8, 2
COMMON = [f"train.steps={STEPS}", f"checkpoint.every={EVERY}", "train.log_every=1"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("source") / "run"
    job = Job(run_dir, *COMMON, "checkpoint.keep=10")
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    return run_dir


def copy_of(source, run_dir, tags=None):
    """The source run directory (data, metrics, checkpoints; only `tags` when given)."""
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("logs", "*.out"))
    if tags is not None:
        for tag_dir in (run_dir / "checkpoints").glob("step*"):
            if tag_dir.name not in tags:
                shutil.rmtree(tag_dir)
    return run_dir / "checkpoints"


def rank0_log(run_dir) -> str:
    return (run_dir / "logs" / "rank00000.log").read_text()


def test_every_save_is_one_verified_tag_of_the_size_preflight_expects(source):
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.launcher.checkpoints.space import directory_bytes
    from llmlaunch.launcher.checkpoints.tools import inspect
    from llmlaunch.launcher.preflight import checkpoint_bytes

    report = inspect(source / "checkpoints", verify=True)
    assert [t["tag"] for t in report["tags"]] == [f"step{s:08d}" for s in (2, 4, 6, 8)]
    assert all(t["verified"] for t in report["tags"]) and report["latest"] == "step00000008"
    assert sorted(p.name for p in (source / "checkpoints" / "step00000008").iterdir()) == [
        "canonical", "manifest.json"]                     # one copy: no DeepSpeed files beside it
    written = directory_bytes(source / "checkpoints" / "step00000008")
    estimate = checkpoint_bytes(load_run_dir_config(source), "fp32")
    assert written <= estimate <= written * 1.005, (written, estimate)
    log = rank0_log(source)
    assert log.count("saved (52 files, 3.18 MiB; the loop stalled") == 4, log


def test_damaged_tags_fall_back_to_the_newest_that_verifies(tmp_path, source):
    from llmlaunch.launcher.checkpoints.canonical import tensor_file

    run_dir = tmp_path / "run"
    ckpt = copy_of(source, run_dir)
    flip_bit_in_tensor(tensor_file(ckpt / "step00000008", "blocks.2.mlp.fc1.weight", 0), "exp_avg_sq")
    truncate(tensor_file(ckpt / "step00000006", "blocks.0.attn.qkv.weight", 0))
    tensor_file(ckpt / "step00000004", "embed.position.weight", 0).unlink()
    make_legacy(ckpt / "step00000002")            # llmlaunch 0.2's records: no checksums
    job = Job(run_dir, *COMMON, "checkpoint.keep=2", "checkpoint.healthy_steps=2")
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    log = rank0_log(run_dir)
    for tag, file, why in [
            (8, "blocks.2.mlp.fc1.weight", "sha256 differs from the manifest's"),
            (6, "blocks.0.attn.qkv.weight", "bytes, the manifest says"),
            (4, "embed.position.weight", "missing")]:
        [line] = [x for x in log.splitlines() if f"checkpoint step{tag:08d} failed verification" in x]
        assert f"canonical/{file}/tp0.pt: " in line and why in line, line
        assert line.endswith("resuming from step00000002, the newest verified tag")
    assert log.count("carry no checksums") == 1
    assert f"resumed from {ckpt / 'step00000002'} (step 2)" in log
    assert losses(run_dir) == losses(source)      # bit for bit, from step 3 on
    # the damaged tags were written again; pruning kept the newest trusted (6) and what is newer
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000006", "step00000008"]
    assert (ckpt / "trusted").read_text() == "step00000006"


def test_poison_that_verifies_keeps_the_trusted_tag(tmp_path, source):
    """A NaN saved into the newest tag (it verifies: it was hashed with the NaN): the store keeps the
    trusted tag, and the guard (launcher/guard.py) rolls back to the poisoned tag once, finds the
    run bad again from it, and goes on from the trusted one instead of training NaN to the end."""
    from llmlaunch.launcher.checkpoints.canonical import tensor_file

    run_dir = tmp_path / "run"
    ckpt = copy_of(source, run_dir, tags={"step00000002", "step00000004"})
    (ckpt / "latest").write_text("step00000004")
    (ckpt / "trusted").write_text("step00000002")
    weights = tensor_file(ckpt / "step00000004", "final_norm.weight", 0)
    state = torch.load(weights, weights_only=True)
    state["param"][3] = float("nan")
    torch.save(state, weights)
    resign(ckpt / "step00000004")                  # as if the NaN had been saved
    job = Job(run_dir, "train.steps=16", f"checkpoint.every={EVERY}", "train.log_every=1",
              "checkpoint.keep=1", "checkpoint.healthy_steps=2")
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    log = rank0_log(run_dir)
    assert f"resumed from {ckpt / 'step00000004'} (step 4)" in log
    [warning] = [x for x in log.splitlines() if "the guard judged the step unhealthy" in x][:1]
    assert "step 5:" in warning and "pruning keeps step00000002" in warning
    assert "rolling back to step00000004" in log and "rolling back to step00000002" in log
    assert not (ckpt / "step00000004").exists()    # the poisoned branch is deleted
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 16 and math.isfinite(records[-1]["loss"])
    assert (ckpt / "trusted").read_text() not in ("step00000004", "")


def test_raised_steps_continue_the_learning_rate(tmp_path, source):
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.launcher.lr_schedule import continued, schedule_of

    run_dir = tmp_path / "run"
    copy_of(source, run_dir, tags={"step00000006"})          # mid-way down the 8-step cosine
    job = Job(run_dir, "train.steps=12", f"checkpoint.every={EVERY}", "train.log_every=1")
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    rates = {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                               .splitlines())}
    saved = schedule_of(load_run_dir_config(source).train)
    wanted = schedule_of(load_run_dir_config(run_dir).train)
    schedule, line = continued(saved, wanted, 6)
    assert line.startswith("train.steps 8 -> 12 since the checkpoint (step 6): the learning rate "
                           "continues from step 6's") and line in rank0_log(run_dir)
    assert [rates[k] for k in range(7, 13)] == pytest.approx([schedule.lr_at(k) for k in range(7, 13)])
    assert rates[12] == pytest.approx(wanted.min_lr)
    # no jump: step 7 falls from step 6's rate, by less than the 8-step schedule would have (the
    # 12-step one from scratch would have gone up, to its own step 7)
    assert 0 < rates[6] - rates[7] < rates[6] - saved.lr_at(7)
    assert wanted.lr_at(7) > rates[6]


@pytest.fixture
def small_disk(tmp_path):
    from llmlaunch.config import load_run_config
    from llmlaunch.launcher.checkpoints.space import tag_bytes
    from paths import TINY_CONFIG

    config = load_run_config(str(TINY_CONFIG))
    size = int(tag_bytes(config.model_spec(), config.layout.tp) * 1.5)
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_save_into_a_full_disk_names_the_path_and_the_space(tmp_path, source, small_disk):
    run_dir = tmp_path / "run"
    shutil.copytree(source / "data", run_dir / "data")
    ckpt = small_disk / "checkpoints"
    job = Job(run_dir, "train.steps=6", f"checkpoint.every={EVERY}", f"checkpoint.dir={ckpt}")
    assert job.wait(timeout=300) != 0
    out = job.output()
    lines = [x for x in out.splitlines() if "checkpoint step00000004 not saved" in x]
    assert lines and all(
        f"no space left on device writing {ckpt / 'step00000004' / 'canonical'}" in x
        and "a tag needs 3.2 MiB" in x and "is free on" in x
        and "step00000002 stays the latest checkpoint" in x for x in lines), out[-3000:]
    assert "Traceback" not in out and "enforce fail" not in out
    assert (ckpt / "latest").read_text() == "step00000002"
    assert not (ckpt / "step00000004").exists()


# ---------------------------------------------------------------------------------------------
# a tag of llmlaunch 0.1: DeepSpeed's files only

def driver_main():
    """On 4 ranks: resume RUN_DIR's tag and write it as DeepSpeed's own checkpoint into OUT."""
    from rank_harness import finish_test_distributed, write_rank_result

    from llmlaunch.config import load_run_dir_config
    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.launcher.engine import build_engine, rank_context

    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = load_run_dir_config(args.run_dir)
    ctx = rank_context(config)
    store = CheckpointStore.of_run(config, args.run_dir, ctx)
    ctx.start(60)
    store.choose()
    run = build_engine(config, ctx, kind=store.engine_for(ctx.layout), schedule=store.schedule())
    step = store.resume(run)
    run.engine.save_checkpoint(str(args.out), tag=f"step{step:08d}", client_state={"step": step},
                               save_latest=False)
    write_rank_result({"step": step})
    finish_test_distributed()


def test_a_tag_of_llmlaunch_0_1_resumes_through_deepspeeds_files(tmp_path, source):
    from rank_harness import run_ranks

    run_dir = tmp_path / "run"
    ckpt = copy_of(source, run_dir, tags={"step00000006"})
    written = tmp_path / "deepspeed"
    run_ranks(__file__, 4, ["--run-dir", run_dir, "--out", written], timeout_s=300,
              results_dir=tmp_path / "results").check()
    shutil.rmtree(ckpt / "step00000006")
    shutil.copytree(written / "step00000006", ckpt / "step00000006")
    layout = {"dp": 2, "pp": 2, "tp": 1, "micro_batch": 2, "grad_accum": 4, "zero_stage": 1,
              "recompute": "none"}
    (ckpt / "step00000006" / "llmlaunch_complete.json").write_text(json.dumps(
        {"tag": "step00000006", "step": 6, "layout": layout, "consumed_samples": 6 * 16}))
    job = Job(run_dir, *COMMON)
    assert job.wait(timeout=300) == 0, job.output()[-3000:]
    log = rank0_log(run_dir)
    assert "step00000006 was written by llmlaunch 0.1, DeepSpeed's files only: its files carry " \
           "no checksums" in log
    assert f"resumed from {ckpt / 'step00000006'} (step 6)" in log
    assert losses(run_dir) == losses(source)


if __name__ == "__main__":
    driver_main()
