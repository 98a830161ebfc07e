"""Mixture-of-Experts training under DeepSpeed's engines with expert parallelism: the losses and
gradient norms of every layout equal the one-process run over several steps (fp32, dropless, with
gradient accumulation, clipping and the router's auxiliary loss in the training loss).

Two tiny models: a Mixtral-shaped one (4 experts, top-2) and a Qwen3-MoE-shaped one (QK-norm, 8
experts, top-4, a shared expert). Layouts (the issue's list): ep 2 over dp 2 (ZeRO 0 and ZeRO 2,
plain engine); ep 2 x tp 2 (dp 2, plain engine); ep 2 x pp 2 x tp 2 (8 ranks, dp 2, the pipeline
engine). Each rank also reports the expert groups it ran with (the layout's `groups("ep")` /
`groups("edp")`, the planner's: a twin-truth check), the experts it holds and the step's router
statistics (launcher/moe_metrics.py), the per-expert load the report quotes.

The engines are built the way a training rank builds them (launcher/engine.build_engine from a
RunConfig). This file is also the driver the ranks run, one launch per world size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from rank_harness import run_ranks  # noqa: E402

STEPS = 4
GLOBAL_BATCH = 8
MICRO_BATCH = 2
SEED = 1234
CLIP = 0.8
RTOL = 1e-5        # the bar for losses
NORM_RTOL = 1e-4   # gradient norms: sums of squares over another order of ranks drift more
MODELS = {
    "mixtral": {"arch": "mixtral", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                "ffn_hidden": 48, "vocab": 128, "seq_len": 16, "rope_theta": 10000.0,
                "experts": 4, "experts_per_token": 2, "expert_ffn_hidden": 48,
                "router_aux_loss_coef": 0.02},
    "qwen3_moe": {"arch": "qwen3_moe", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                  "head_dim": 8, "ffn_hidden": 48, "vocab": 128, "seq_len": 16,
                  "rope_theta": 10000.0, "experts": 8, "experts_per_token": 4,
                  "expert_ffn_hidden": 16, "shared_expert_ffn_hidden": 32,
                  "norm_topk_prob": False, "router_aux_loss_coef": 0.02,
                  "router_z_loss_coef": 0.001},
}
# world size -> cases: (name, dp, pp, tp, ep, zero stage)
LAYOUTS = {
    1: [("one process", 1, 1, 1, 1, 0)],
    2: [("ep2 dp2 zero0", 2, 1, 1, 2, 0), ("ep2 dp2 zero2", 2, 1, 1, 2, 2)],
    4: [("ep2 dp2 tp2", 2, 1, 2, 2, 0)],
    8: [("ep2 dp2 pp2 tp2", 2, 2, 2, 2, 0)],
}


def global_batch(step: int, vocab: int, seq_len: int) -> torch.Tensor:
    """Step `step`'s global batch [GLOBAL_BATCH, s+1], the same for every layout."""
    generator = torch.Generator().manual_seed(20_000 + step)
    start = torch.randint(0, vocab, (GLOBAL_BATCH, 1), generator=generator)
    stride = torch.randint(1, 5, (GLOBAL_BATCH, 1), generator=generator)
    return (start + stride * torch.arange(seq_len + 1)) % vocab


def run_config(model: dict, dp: int, pp: int, tp: int, ep: int, zero: int):
    from llmlaunch.config import from_dict

    return from_dict({
        "model": model,
        "layout": {"dp": dp, "pp": pp, "tp": tp, "ep": ep, "micro_batch": MICRO_BATCH,
                   "grad_accum": GLOBAL_BATCH // (MICRO_BATCH * dp), "zero_stage": zero},
        "train": {"steps": STEPS, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1,
                  "grad_clip": CLIP, "seed": SEED, "precision": "fp32",
                  "collective_timeout_s": 60},
    })


def train_case(model: dict, dp: int, pp: int, tp: int, ep: int, zero: int) -> dict:
    import torch.distributed as dist

    from llmlaunch.launcher.engine import build_engine
    from llmlaunch.launcher.moe_metrics import step_moe_stats
    from llmlaunch.model import replica_micro_batches
    from llmlaunch.model.sharding import canonical_named_parameters, expert_of

    run = build_engine(run_config(model, dp, pp, tp, ep, zero))
    module = run.engine.module
    losses, norms, stats = [], [], []
    for step in range(STEPS):
        tokens = global_batch(step, model["vocab"], model["seq_len"])
        batches = iter(replica_micro_batches(tokens, MICRO_BATCH, run.dp_rank, dp))
        losses.append(run.train_step(batches))
        norms.append(run.grad_norm)
        stats.append(step_moe_stats(run))
    held = {expert_of(name) for name, _ in canonical_named_parameters(module)}
    out = {"losses": losses, "norms": norms, "stats": stats, "kind": run.kind,
           "experts_held": sorted(held - {None})}
    if ep > 1:
        from deepspeed.utils import groups

        name = f"ep_size_{ep}"
        out["ep_group"] = list(groups._get_expert_parallel_group_ranks(name))
        out["edp_group"] = list(groups._get_expert_data_parallel_group_ranks(name))
    dist.barrier()
    return out


def driver_main():
    from rank_harness import finish_test_distributed, write_rank_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, required=True)
    args = parser.parse_args()
    results = {}
    for model_name, model in MODELS.items():
        for name, dp, pp, tp, ep, zero in LAYOUTS[args.world]:
            results[f"{model_name} {name}"] = train_case(model, dp, pp, tp, ep, zero)
    write_rank_result(results)
    finish_test_distributed()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for world in LAYOUTS:
        run = run_ranks(__file__, world, ["--world", str(world)], timeout_s=400,
                        results_dir=tmp_path_factory.mktemp(f"world{world}")).check()
        assert sorted(run.results) == list(range(world))
        out[world] = run.results
    return out


def test_every_expert_parallel_layout_equals_one_process(runs):
    for model_name in MODELS:
        baseline = runs[1][0][f"{model_name} one process"]
        assert baseline["losses"][-1] < baseline["losses"][0], baseline["losses"]
        clipped = [n > CLIP for n in baseline["norms"]]
        assert any(clipped), baseline["norms"]      # the clipped norm counts every expert once
        compared = 0
        for world, by_rank in runs.items():
            for rank, cases in by_rank.items():
                for name, got in cases.items():
                    if not name.startswith(model_name):
                        continue
                    assert got["losses"] == pytest.approx(baseline["losses"], rel=RTOL), (name, rank)
                    assert got["norms"] == pytest.approx(baseline["norms"], rel=NORM_RTOL), (name,
                                                                                             rank)
                    compared += 1
        assert compared == 1 + 2 * 2 + 4 + 8


def test_router_statistics_equal_one_process(runs):
    """The auxiliary loss and every layer's per-expert load are the same whatever the layout."""
    for model_name, model in MODELS.items():
        baseline = runs[1][0][f"{model_name} one process"]["stats"]
        for step in baseline:
            assert step["aux_loss"] > 0 and len(step["expert_load"]) == model["layers"]
            assert step["expert_load_max_over_mean"] >= 1.0 and step["dropped_fraction"] == 0.0
        for world, by_rank in runs.items():
            for cases in by_rank.values():
                for name, got in cases.items():
                    if name.startswith(model_name):
                        for mine, want in zip(got["stats"], baseline):
                            assert mine["aux_loss"] == pytest.approx(want["aux_loss"], rel=RTOL)
                            assert mine["expert_load"] == pytest.approx(want["expert_load"])


def test_each_rank_holds_its_experts_in_the_planners_groups(runs):
    from llmlaunch.topology.layout import Layout

    for world in (2, 4, 8):
        for rank, cases in runs[world].items():
            for model_name, model in MODELS.items():
                for name, dp, pp, tp, ep, zero in LAYOUTS[world]:
                    got = cases[f"{model_name} {name}"]
                    layout = Layout(dp=dp, pp=pp, tp=tp, ep=ep, zero_stage=zero)
                    assert got["kind"] == ("pipeline" if pp > 1 else "plain")
                    assert got["ep_group"] == next(g for g in layout.groups("ep") if rank in g)
                    assert got["edp_group"] == next(g for g in layout.groups("edp") if rank in g)
                    per_rank = model["experts"] // ep
                    first = layout.expert_coords(rank)["ep"] * per_rank
                    assert got["experts_held"] == list(range(first, first + per_rank))


if __name__ == "__main__":
    driver_main()
