"""A checkpoint moves between context-parallel and sequence-parallel layouts and one process (issue
25), through `llmlaunch train` (the trainer's own data loader: each cp rank keeps its chunks of its
replica's samples).

Two uninterrupted runs of STEPS steps with a checkpoint at step K, one process and cp 2 x tp 2 with
sequence parallelism (4 ranks), train the same losses (fp32, relative 1e-5); each run's step-K
checkpoint resumes on the other layout and trains on to STEPS with the uninterrupted runs' losses.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from train_job import Job, losses  # noqa: E402

STEPS, K = 6, 3
RTOL = 1e-5
COMMON = [f"train.steps={STEPS}", f"checkpoint.every={K}", "checkpoint.keep=5",
          "train.log_every=1", "layout.micro_batch=2", "layout.grad_accum=4", "layout.dp=1",
          "layout.pp=1", "layout.zero_stage=0",
          # llama with grouped-query attention and RoPE
          "model.arch=llama", "model.layers=2", "model.hidden=64", "model.heads=4",
          "model.kv_heads=2", "model.vocab=1024", "model.seq_len=64"]
LAYOUTS = {
    "one process": ["layout.tp=1", "layout.cp=1", "layout.sequence_parallel=false"],
    "cp2 tp2 sp": ["layout.tp=2", "layout.cp=2", "layout.sequence_parallel=true"],
}
TAG = f"step{K:08d}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """layout name -> run directory of its uninterrupted run."""
    out = {}
    for name, sets in LAYOUTS.items():
        run_dir = tmp_path_factory.mktemp(name.replace(" ", "_")) / "run"
        job = Job(run_dir, *COMMON, *sets)
        assert job.wait(timeout=600) == 0, (name, job.output()[-3000:])
        out[name] = run_dir
    return out


def test_both_layouts_train_the_same_losses(uninterrupted):
    want = losses(uninterrupted["one process"])
    got = losses(uninterrupted["cp2 tp2 sp"])
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
    assert want[-1][1] < want[0][1]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=RTOL)
    record = json.loads((uninterrupted["cp2 tp2 sp"] / "checkpoints" / TAG / "manifest.json")
                        .read_text())
    assert (record["layout"]["tp"], record["layout"]["cp"],
            record["layout"]["sequence_parallel"]) == (2, 2, True)


@pytest.mark.parametrize("source, target", [("cp2 tp2 sp", "one process"),
                                            ("one process", "cp2 tp2 sp")])
def test_a_checkpoint_resumes_on_the_other_layout(tmp_path, uninterrupted, source, target):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copytree(uninterrupted[source] / "checkpoints" / TAG, ckpt / TAG)
    (ckpt / "latest").write_text(TAG)
    shutil.copytree(uninterrupted[source] / "data", run_dir / "data")
    job = Job(run_dir, *COMMON, *LAYOUTS[target])
    assert job.wait(timeout=600) == 0, (source, target, job.output()[-3000:])
    assert "resharded" in (run_dir / "logs" / "rank00000.log").read_text()
    got = losses(run_dir)
    assert [s for s, _ in got] == list(range(K + 1, STEPS + 1))
    for reference in uninterrupted.values():
        want = [loss for step, loss in losses(reference) if step > K]
        assert [loss for _, loss in got] == pytest.approx(want, rel=RTOL), (source, target)
