"""MoE token routing as Megatron-Core's dispatchers move it (topology/experts.py,
step_time.expert_alltoall_time_s): the tokens a rank routes under sequence parallelism, DeepSeek-V3's
node-limited routing and DeepEP's measured bandwidths, pinned to hand-computed values."""
import dataclasses

import pytest

from llmlaunch.topology.engines import ENGINES
from llmlaunch.topology.experts import (DEEPEP_COMBINE_GB_PER_S, DEEPEP_DISPATCH_GB_PER_S,
                                        deepep_internode_time_s, dispatch_tokens_per_gpu,
                                        nodes_per_token)
from llmlaunch.topology.hardware import gpu
from llmlaunch.topology.shapes import preset
from llmlaunch.topology.step_time import expert_alltoall_time_s

V3 = preset("deepseek-v3")


def test_a_rank_routes_its_own_sequence_parallel_share():
    # b 1, s 4096: all of it at t 1 or without SP; 2048 each of t 2 under SP; cp splits first
    assert dispatch_tokens_per_gpu(1, 4096, 1, 1, False) == 4096
    assert dispatch_tokens_per_gpu(1, 4096, 1, 2, False) == 4096
    assert dispatch_tokens_per_gpu(1, 4096, 1, 2, True) == 2048
    assert dispatch_tokens_per_gpu(2, 8192, 2, 4, True) == 2048


def test_node_limited_routing_bounds_the_nodes_a_token_reaches():
    assert V3.expert_groups_per_token == 4 and nodes_per_token(V3) == 4
    assert nodes_per_token(dataclasses.replace(V3, expert_groups_per_token=0)) == 8   # k
    assert nodes_per_token(preset("mixtral-8x7b")) == 2
    with pytest.raises(ValueError):
        dataclasses.replace(V3, expert_groups_per_token=-1)


def test_deepep_dispatch_and_combine_at_the_measured_bandwidths():
    # DeepEP docs/legacy.md, EP 64: dispatch 51, combine 50 GB/s (logical, own node counted)
    assert (DEEPEP_DISPATCH_GB_PER_S, DEEPEP_COMBINE_GB_PER_S) == (51.0, 50.0)
    # 2048 tokens x 4 nodes x 7168 x 2 bytes = 117,440,512 B; / 51 GB/s = 2.302755 ms
    assert deepep_internode_time_s(V3, 2048, 2, 51.0) == pytest.approx(2.302755e-3, rel=1e-6)
    # a stage of 8 MoE blocks, no recompute: 8 x 2 pairs x (117,440,512 / 51e9 + / 50e9) = 74.425 ms
    h100 = gpu("h100-80gb")
    args = dict(blocks=8, tokens=2048, act=2, ep=64, recompute="none", gpu=h100, spans_nodes=True)
    assert expert_alltoall_time_s(V3, **args, dispatcher="deepep") == pytest.approx(
        0.0744250, rel=1e-6)
    # full recompute adds the forward pair again: x 3/2
    assert expert_alltoall_time_s(V3, **dict(args, recompute="full"), dispatcher="deepep") == \
        pytest.approx(0.1116376, rel=1e-6)
    # NCCL's all-to-all sends all k copies: 8 x 4 x (63 x 2 us + 63/64 x 2048 x 8 x 7168 x 2 / 45 GB/s)
    assert expert_alltoall_time_s(V3, **args) == pytest.approx(0.1684487, rel=1e-6)
    # inside a node DeepEP is priced as the all-to-all
    inside = dict(args, ep=8, spans_nodes=False)
    assert expert_alltoall_time_s(V3, **inside, dispatcher="deepep") == \
        expert_alltoall_time_s(V3, **inside)


def test_the_deepep_engine_is_megatron_core_with_the_flex_dispatcher():
    core, deepep = ENGINES["megatron-core"], ENGINES["megatron-core-deepep"]
    assert (core.moe_dispatcher, deepep.moe_dispatcher) == ("alltoall", "deepep")
    assert dataclasses.replace(deepep, name=core.name, moe_dispatcher="alltoall",
                               source=core.source) == core
