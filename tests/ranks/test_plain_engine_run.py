"""A pp = 1 run on DeepSpeed's plain engine with ZeRO-3 does what a pipeline run does: starts from
Hugging Face weights, checkpoints, stops on USR1 and resumes to the uninterrupted losses, and
exports to Hugging Face (`llmlaunch train`, real ranks, fp32)."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from train_job import Job, losses  # tests/helpers

from llmlaunch.topology.model_spec import ModelSpec

SPEC = ModelSpec(arch="llama", layers=2, hidden=64, heads=8, kv_heads=4, vocab=1024, seq_len=64,
                 ffn_hidden=128)
MODEL = [f"model.{k}={v}" for k, v in (("arch", "llama"), ("layers", 2), ("hidden", 64),
                                        ("heads", 8), ("kv_heads", 4), ("ffn_hidden", 128))]
ZERO3 = ["layout.dp=2", "layout.pp=1", "layout.tp=2", "layout.zero_stage=3", "layout.grad_accum=4"]
PIPELINE = ["layout.dp=2", "layout.pp=2", "layout.tp=1", "layout.zero_stage=1",
            "layout.grad_accum=4"]
STEPS = 12


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from hf_models import make_random_hf_model

    return make_random_hf_model(SPEC, tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, hf_dir):
    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    job = Job(run_dir, *MODEL, *ZERO3, f"checkpoint.init_hf={hf_dir}", f"train.steps={STEPS}",
              "checkpoint.every=4", "train.log_every=1")
    assert job.wait(timeout=600) == 0, job.output()[-3000:]
    return run_dir


def test_zero3_starts_from_hf_weights_like_the_pipeline(tmp_path, hf_dir, zero3_run):
    """Step 1's loss depends only on the initial weights and the first batch: the plain engine
    and the pipeline engine, both importing the same HF directory, agree."""
    run_dir = tmp_path / "pipeline"
    job = Job(run_dir, *MODEL, *PIPELINE, f"checkpoint.init_hf={hf_dir}", "train.steps=1",
              "checkpoint.every=0")
    assert job.wait(timeout=600) == 0, job.output()[-3000:]
    assert losses(run_dir)[0][1] == pytest.approx(losses(zero3_run)[0][1], rel=1e-5)


def test_zero3_signal_checkpoints_and_resumes_to_the_same_losses(tmp_path, hf_dir, zero3_run):
    run_dir = tmp_path / "run"
    sets = [*MODEL, *ZERO3, f"checkpoint.init_hf={hf_dir}", f"train.steps={STEPS}",
            "checkpoint.every=4", "train.log_every=1"]
    job = Job(run_dir, *sets)
    job.wait_for_steps(6)
    os.kill(job.proc.pid, signal.SIGUSR1)
    assert job.wait(timeout=300) == 75, job.output()[-3000:]
    stopped = json.loads((run_dir / "stopped.json").read_text())["step"]
    assert 6 <= stopped < STEPS
    resumed = Job(run_dir, *sets)
    assert resumed.wait(timeout=600) == 0, resumed.output()[-3000:]
    assert "resumed from" in (run_dir / "logs" / "rank00000.log").read_text()
    assert losses(run_dir) == losses(zero3_run)          # the ZeRO-3 state at its own layout: bit for bit


def test_export_hf_of_a_zero3_checkpoint_holds_its_master_weights(tmp_path, zero3_run):
    from transformers import AutoModelForCausalLM

    from llmlaunch.cli import main
    from llmlaunch.launcher.checkpoints.canonical import CanonicalReader
    from llmlaunch.launcher.checkpoints.manifest import read_manifest
    from llmlaunch.model.hf_mapping import canonical_to_hf

    out = tmp_path / "hf"
    assert main(["export-hf", str(zero3_run / "checkpoints"), str(out)]) == 0
    tag_dir = zero3_run / "checkpoints" / f"step{STEPS:08d}"
    reader = CanonicalReader(tag_dir, read_manifest(tag_dir))
    want = canonical_to_hf(reader.spec, {n: reader.full(n)["param"] for n in reader.tensors})
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert set(want) <= set(got)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
