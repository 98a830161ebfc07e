"""Damaged checkpoints under real ranks (issue 22's fault tests): `llmlaunch train` on tiny-cpu
(dp 2 x pp 2, the pipeline engine, ZeRO-1). One source run writes tags every 2 steps; each test
resumes a copy of it after doing one kind of harm.

- A flipped bit in an Adam moment, a truncated file and a deleted file in the newest tags: the run
  passes over each with one line naming the tag and the file, resumes from the newest tag that
  verifies (here one written before checksums existed) and its losses equal the source run's.
- A state that verifies but is poison (a NaN weight, signed again as if it had been saved so):
  the steps after it are not finite, and pruning keeps the trusted tag before it.
- Another model shape and another global batch are refused in one line naming what differs; a
  raised train.steps continues the learning rate without a jump; a save into a full file system
  (a small tmpfs) names the path, the space a tag needs and the space free.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from checkpoint_tags import file_listing, flip_bit_in_tensor, make_legacy, resign, truncate
from train_job import Job, losses

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
    job = Job(run_dir, "train.steps=10", f"checkpoint.every={EVERY}", "train.log_every=1",
              "checkpoint.keep=1", "checkpoint.healthy_steps=2")
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    log = rank0_log(run_dir)
    assert f"resumed from {ckpt / 'step00000004'} (step 4)" in log
    [warning] = [x for x in log.splitlines() if "are not both finite" in x]
    assert "step 5: loss nan" in warning and "pruning keeps step00000002" in warning
    assert sorted(p.name for p in ckpt.glob("step*")) == [f"step{s:08d}" for s in (2, 4, 6, 8, 10)]
    assert (ckpt / "trusted").read_text() == "step00000002"


def test_another_shape_or_global_batch_is_refused_naming_what_differs(tmp_path, source):
    run_dir = tmp_path / "run"
    ckpt = copy_of(source, run_dir)
    before = file_listing(ckpt)
    job = Job(run_dir, *COMMON, "model.hidden=128")
    assert job.wait(timeout=300) != 0
    out = job.output()
    assert ("checkpoint step00000008 holds another model: embed.token.weight is [1024, 64] in the "
            "checkpoint and [1024, 128] in the model (model.hidden 64 -> 128, model.ffn_hidden 256 "
            "-> 512") in out, out[-3000:]
    assert "Error(s) in loading state_dict" not in out and "Traceback" not in out
    job = Job(run_dir, *COMMON, "layout.grad_accum=8")
    assert job.wait(timeout=300) != 0
    out = job.output()
    assert ("checkpoint step00000008 trained with a global batch of 16 sequences (micro_batch 2 x "
            "grad_accum 4 x dp 2), the run has 32 (micro_batch 2 x grad_accum 8 x dp 2)") in out
    assert "set layout.grad_accum=4" in out
    assert file_listing(ckpt) == before


def test_raised_steps_continue_the_learning_rate(tmp_path, source):
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.launcher.lr_schedule import continued, schedule_of

    run_dir = tmp_path / "run"
    copy_of(source, run_dir)
    job = Job(run_dir, "train.steps=12", f"checkpoint.every={EVERY}", "train.log_every=1")
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    rates = {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                               .splitlines())}
    train = load_run_dir_config(source).train
    saved = schedule_of(train)
    schedule, line = continued(saved, schedule_of(load_run_dir_config(run_dir).train), STEPS)
    assert f"train.steps 8 -> 12 since the checkpoint (step 8): the learning rate continues" \
        in rank0_log(run_dir) and line in rank0_log(run_dir)
    assert [rates[k] for k in range(9, 13)] == pytest.approx([schedule.lr_at(k) for k in range(9, 13)])
    assert rates[12] == pytest.approx(train.min_lr)
    assert rates[8] - rates[9] < rates[7] - rates[8]          # no jump: it falls as it fell


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
