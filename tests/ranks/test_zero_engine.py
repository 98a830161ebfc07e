"""pp = 1 runs on DeepSpeed's plain engine (engine(inputs, labels), engine.backward, engine.step)
with every ZeRO stage, tensor parallelism and offload: the losses and gradient norms of each layout
equal the one-process run over several steps with gradient accumulation and clipping (fp32).

The engines are built the way a training rank builds them (launcher/engine.build_engine from a
RunConfig: its DeepSpeed config, its LR schedule, its model) and stepped through
RunEngine.train_step. This file is also the driver the ranks run, one launch per world size, each
case in turn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from rank_harness import run_ranks  # noqa: E402

STEPS = 6
GLOBAL_BATCH = 8
MICRO_BATCH = 2
SEED = 1234
CLIP = 1.5
RTOL = 1e-5        # the bar for losses
NORM_RTOL = 1e-4   # gradient norms: a sum of squares over 10^5 elements in another order drifts more
MODEL = {"arch": "llama", "layers": 3, "hidden": 64, "heads": 4, "kv_heads": 2, "vocab": 200,
         "seq_len": 16, "rope_theta": 500000.0}
# world size -> cases: (name, dp, tp, zero stage, offload)
CASES = {
    1: [("one process", 1, 1, 0, "none")],
    2: [("dp2 zero0", 2, 1, 0, "none"), ("dp2 zero1", 2, 1, 1, "none"),
        ("dp2 zero2", 2, 1, 2, "none"), ("dp2 zero3", 2, 1, 3, "none"),
        ("dp2 zero2 offload", 2, 1, 2, "optimizer"),
        ("dp2 zero3 offload", 2, 1, 3, "optimizer+params")],
    4: [("dp2 tp2 zero2", 2, 2, 2, "none"), ("dp2 tp2 zero3", 2, 2, 3, "none"),
        ("dp2 tp2 zero3 offload", 2, 2, 3, "optimizer+params")],
}


def global_batch(step: int) -> torch.Tensor:
    """Step `step`'s global batch [GLOBAL_BATCH, s+1], the same for every layout."""
    generator = torch.Generator().manual_seed(10_000 + step)
    start = torch.randint(0, MODEL["vocab"], (GLOBAL_BATCH, 1), generator=generator)
    stride = torch.randint(1, 4, (GLOBAL_BATCH, 1), generator=generator)
    return (start + stride * torch.arange(MODEL["seq_len"] + 1)) % MODEL["vocab"]


def run_config(dp: int, tp: int, zero: int, offload: str):
    from llmlaunch.config import from_dict

    return from_dict({
        "model": MODEL,
        "layout": {"dp": dp, "pp": 1, "tp": tp, "micro_batch": MICRO_BATCH,
                   "grad_accum": GLOBAL_BATCH // (MICRO_BATCH * dp), "zero_stage": zero,
                   "offload": offload},
        "train": {"steps": STEPS, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
                  "grad_clip": CLIP, "seed": SEED, "precision": "fp32",
                  "collective_timeout_s": 60},
    })


def train_case(dp: int, tp: int, zero: int, offload: str) -> dict:
    from llmlaunch.launcher.engine import build_engine
    from llmlaunch.model import replica_micro_batches

    run = build_engine(run_config(dp, tp, zero, offload))
    assert run.kind == "plain"
    losses, norms = [], []
    for step in range(STEPS):
        batches = iter(replica_micro_batches(global_batch(step), MICRO_BATCH, run.dp_rank, dp))
        losses.append(run.train_step(batches))
        norms.append(run.grad_norm)
    return {"losses": losses, "norms": norms, "optimizer": type(run.engine.optimizer).__name__}


def driver_main():
    from rank_harness import finish_test_distributed, write_rank_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, required=True)
    args = parser.parse_args()
    results = {}
    for name, dp, tp, zero, offload in CASES[args.world]:
        results[name] = train_case(dp, tp, zero, offload)
    write_rank_result(results)
    finish_test_distributed()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for world in CASES:
        run = run_ranks(__file__, world, ["--world", str(world)], timeout_s=400,
                        results_dir=tmp_path_factory.mktemp(f"world{world}")).check()
        assert sorted(run.results) == list(range(world))
        out[world] = run.results
    return out


def test_every_zero_stage_and_offload_equals_one_process(runs):
    baseline = runs[1][0]["one process"]
    assert len(baseline["losses"]) == STEPS and baseline["losses"][-1] < baseline["losses"][0]
    clipped = [n > CLIP for n in baseline["norms"]]
    assert any(clipped) and not all(clipped), baseline["norms"]   # clipping matters in some steps
    for world, by_rank in runs.items():
        for rank, cases in by_rank.items():
            for name, got in cases.items():
                assert got["losses"] == pytest.approx(baseline["losses"], rel=RTOL), (name, rank)
                assert got["norms"] == pytest.approx(baseline["norms"], rel=NORM_RTOL), (name, rank)


def test_zero_stages_run_deepspeeds_own_optimizers(runs):
    wrappers = {name: got["optimizer"] for name, got in runs[2][0].items()}
    assert wrappers["dp2 zero2"] == "DeepSpeedZeroOptimizer"
    assert wrappers["dp2 zero3"] == wrappers["dp2 zero3 offload"] == "DeepSpeedZeroOptimizer_Stage3"


if __name__ == "__main__":
    driver_main()
