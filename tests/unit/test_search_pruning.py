"""The search's prunings (planner._search_shape) against the exhaustive search: the same best
layout, the same estimate of every layout both keep, and every fitting layout the pruned search
skips is a heavier recompute of one it keeps that fits without offload and is at least as fast."""
import dataclasses

import pytest

from llmlaunch.topology.hardware import Cluster, gpu
from llmlaunch.topology.planner import PlanOptions, Pins, search
from llmlaunch.topology.shapes import preset, spec_from_params

RECOMPUTE_ORDER = ("none", "selective", "full")

CASES = {
    # DeepSpeed on 8 GPUs: ZeRO 0-3, offload where memory alone rules a layout out
    "7b-deepspeed-8": (spec_from_params(6.7e9), Cluster(8, 8, gpu("a100-40gb")),
                       PlanOptions(global_batch=64, seq_len=2048), Pins()),
    # pipelines: micro-batches bounded by pp
    "175b-1024": (spec_from_params(175e9), Cluster(1024, 8, gpu("a100-80gb")),
                  PlanOptions(global_batch=1536, seq_len=2048), Pins(tp=8)),
    # MoE under Megatron-Core at FP8: expert degrees, sequence parallelism on
    "mixtral-32-megatron-core": (preset("mixtral-8x7b"), Cluster(32, 8, gpu("h100-80gb")),
                                 PlanOptions(global_batch=64, seq_len=4096, precision="fp8",
                                             engine="megatron-core"), Pins(tp=2)),
    # long sequence: context parallelism in both forms, FSDP accounting
    "llama3-8b-32k-fsdp": (preset("llama3-8b"), Cluster(32, 8, gpu("h100-80gb")),
                           PlanOptions(global_batch=32, seq_len=32768, engine="fsdp"), Pins(tp=2)),
}


def _key(cand):
    return dataclasses.astuple(dataclasses.replace(cand.layout, recompute="none"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_search_agrees_with_the_exhaustive_one(name):
    spec, cluster, options, pins = CASES[name]
    pruned = search(spec, cluster, options, pins)
    full = search(spec, cluster, options, pins, exhaustive=True)
    assert full.candidates and pruned.evaluated < full.evaluated
    assert pruned.candidates[0].layout == full.candidates[0].layout
    assert pruned.candidates[0].tokens_per_s == full.candidates[0].tokens_per_s

    kept = {c.layout: c for c in pruned.candidates}
    every = {c.layout: c for c in full.candidates}
    assert kept.keys() <= every.keys()
    for layout, cand in kept.items():
        assert cand.tokens_per_s == every[layout].tokens_per_s
        assert cand.worst_stage.total == every[layout].worst_stage.total

    skipped = [c for layout, c in every.items() if layout not in kept]
    for cand in skipped:
        lighter = [k for k in kept.values() if _key(k) == _key(cand) and k.layout.offload == "none"
                   and RECOMPUTE_ORDER.index(k.layout.recompute)
                   < RECOMPUTE_ORDER.index(cand.layout.recompute)]
        assert lighter, f"{cand.layout} fits but the pruned search lost it"
        # at least as fast; where the step is communication-bound the recompute only fills the
        # overlap window and both come out equal, to rounding
        assert all(k.tokens_per_s >= cand.tokens_per_s * (1 - 1e-12) for k in lighter)
