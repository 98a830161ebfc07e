"""Expert parallelism (topology/experts.py, Layout.ep): groups, memory, all-to-all, GEMMs and the
search, pinned to hand-computed values for Mixtral-8x7B (Jiang et al. 2024: h 4096, 32 layers,
8 experts of f_e 14336, 2 per token, GQA 8 KV heads).

Hand values used below, per Mixtral block: attention (4096 + 2 x 1024) x 4096 + 4096 x 4096 =
41,943,040; norms 2 x 4096 = 8,192; router 4096 x 8 = 32,768; one expert 3 x 4096 x 14336 =
176,160,768, eight 1,409,286,144; the block 1,451,270,144 (x 32 + 2 x 32000 x 4096 + 4096 =
46,702,792,704, transformers' count)."""
import pytest

from llmlaunch.topology.experts import (alltoall_buffer_bytes, alltoall_bytes_sent, dispatch_buffer_bytes,
                                        alltoalls_per_moe_layer, expert_data_parallel,
                                        expert_params_held, routed_expert_params)
from llmlaunch.topology.flops import block_matmul_flops_per_token
from llmlaunch.topology.gemms import block_forward_gemms
from llmlaunch.topology.hardware import gpu
from llmlaunch.topology.layout import Layout
from llmlaunch.topology.memory import PRECISIONS, stage_memory, stage_params
from llmlaunch.topology.planner import expert_degrees
from llmlaunch.topology.shapes import preset
from llmlaunch.topology.step_time import expert_alltoall_time_s

MIXTRAL = preset("mixtral-8x7b")
EXPERTS_PER_LAYER = 1_409_286_144
BLOCK = 1_451_270_144


def test_expert_groups_are_consecutive_data_parallel_ranks():
    # 16 GPUs as tp=2, dp=4, pp=2: data groups [0,2,4,6] [1,3,5,7] [8,10,12,14] [9,11,13,15];
    # ep=2 splits each into consecutive pairs, and the ranks holding the same experts pair up
    lay = Layout(dp=4, pp=2, tp=2, ep=2)
    assert lay.groups("dp") == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    assert lay.groups("ep") == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert lay.groups("edp") == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13], [10, 14], [11, 15]]
    assert (lay.stride("ep"), lay.stride("edp"), lay.size("edp")) == (2, 4, 2)
    assert lay.group_span(5, "ep") == (5, 7) and lay.group_span(5, "edp") == (1, 5)
    # on nodes of 4: an expert group (block of 4 ranks) stays inside, an expert-data one crosses
    assert not lay.spans_nodes("ep", 4) and lay.spans_nodes("edp", 4)
    # ep = dp: the expert groups are the data groups; ep = 1: one rank each
    assert Layout(dp=4, pp=2, tp=2, ep=4).groups("ep") == lay.groups("dp")
    assert Layout(dp=4, pp=1, tp=1).groups("ep") == [[0], [1], [2], [3]]
    assert Layout(dp=2, pp=1, tp=1).describe() == "dp=2 pp=1 tp=1"
    assert lay.describe() == "dp=4 pp=2 tp=2 ep=2"


def test_expert_degree_errors_name_the_values_and_what_would_work():
    with pytest.raises(ValueError, match=r"ep=3 does not divide dp=4 .*ep can be 1, 2, 4"):
        Layout(dp=4, pp=1, tp=1, ep=3)
    with pytest.raises(ValueError, match="ep must be a positive integer"):
        Layout(dp=4, pp=1, tp=1, ep=0)
    assert Layout(dp=6, pp=1, tp=1, ep=3).model_reasons(MIXTRAL) == [
        "ep=3 does not divide experts=8; with dp=6 ep can be 1, 2"]
    assert Layout(dp=2, pp=1, tp=1, ep=2).model_reasons(preset("llama2-7b")) == [
        "ep=2 needs a Mixture-of-Experts model (llama2-7b is dense); use ep=1"]
    # tp splits every expert like a dense MLP: it must divide f_e (Qwen-MoE style 1408 here)
    narrow = MIXTRAL.replace(expert_ffn_hidden=1408)
    assert Layout(dp=1, pp=1, tp=3).expert_reasons(narrow) == [
        "tp=3 does not divide expert_ffn_hidden=1408"]
    assert Layout(dp=8, pp=1, tp=8, ep=8).model_reasons(MIXTRAL) == []


def test_experts_held_and_their_states_sharded_over_dp_over_ep():
    assert routed_expert_params(MIXTRAL) == EXPERTS_PER_LAYER
    assert routed_expert_params(MIXTRAL, tp=2) == EXPERTS_PER_LAYER / 2
    assert routed_expert_params(preset("llama2-7b")) == 0
    assert expert_params_held(MIXTRAL, blocks=8, tp=1, ep=4) == 2_818_572_288   # 8 x E/4
    assert expert_data_parallel(8, 4) == 2
    with pytest.raises(ValueError, match="ep=3 must be a positive divisor of dp=8"):
        expert_data_parallel(8, 3)
    # a middle stage of 8 blocks at dp=8, ep=4: 8 x 41,984,000 dense + 2,818,572,288 expert
    assert stage_params(MIXTRAL, stage=1, pp=4, tp=1, blocks=8, ep=4) == 3_154_444_288
    assert stage_params(MIXTRAL, stage=1, pp=4, tp=1, blocks=8) == 8 * BLOCK
    args = dict(stage=1, blocks=8, dp=8, pp=4, tp=1, micro_batch=1, micro_batches=8, zero_stage=1,
                recompute="full", precision=PRECISIONS["bf16"], framework_bytes=0)
    split, whole = stage_memory(MIXTRAL, **args, ep=4), stage_memory(MIXTRAL, **args)
    assert split.expert_params == 2_818_572_288
    assert split.weights == 6_308_888_576                  # 3,154,444,288 x 2 bytes
    assert split.gradients == 18_926_665_728               # x (4 fp32 + 2 bf16), not sharded at ZeRO-1
    # ZeRO-1: dense 335,872,000 x 12 / 8 + experts 2,818,572,288 x 12 / (8/4) = 17,415,241,728,
    # the same as without expert parallelism (8 x BLOCK x 12 / 8): DeepSpeed-MoE's point
    assert split.optimizer == 17_415_241_728 == whole.optimizer
    assert whole.weights == 8 * BLOCK * 2


def test_alltoall_bytes_and_count():
    # one micro-batch of 8192 tokens, k=2, h=4096, bf16: 8192 x 2 x 4096 x 2 = 128 MiB exchanged
    assert alltoall_buffer_bytes(MIXTRAL, 8192, 2) == 134_217_728
    assert alltoall_bytes_sent(MIXTRAL, 8192, 2, ep=4) == 100_663_296          # 3/4 of it leaves
    assert alltoall_bytes_sent(MIXTRAL, 8192, 2, ep=4, capacity_factor=1.25) == 125_829_120
    assert alltoall_bytes_sent(MIXTRAL, 8192, 2, ep=1) == 0
    with pytest.raises(ValueError, match="capacity factor must be at least 1.0"):
        alltoall_buffer_bytes(MIXTRAL, 8192, 2, capacity_factor=0.5)
    assert [alltoalls_per_moe_layer(r) for r in ("none", "selective", "full")] == [4, 4, 6]


def test_the_dispatch_buffer_is_in_the_stage_memory_once():
    """Issue 26: the all-to-all buffer validate measures (launcher/validate.py) is in the planner's
    memory, once per stage (one MoE layer exchanges at a time), only where there is an exchange."""
    # micro-batch 1 of 8192 tokens (the preset's), k=2, h=4096, bf16: 8192 x 2 x 4096 x 2 = 128 MiB
    assert dispatch_buffer_bytes(MIXTRAL, 8, 4, 1, None, 1, 2) == 134_217_728
    assert dispatch_buffer_bytes(MIXTRAL, 8, 4, 1, 8192, 2, 2) == 67_108_864    # cp 2: s/2 each
    assert dispatch_buffer_bytes(MIXTRAL, 8, 1, 1, None, 1, 2) == 0             # ep 1: no exchange
    assert dispatch_buffer_bytes(MIXTRAL, 0, 4, 1, None, 1, 2) == 0             # no MoE block here
    assert dispatch_buffer_bytes(preset("llama2-7b"), 8, 4, 1, None, 1, 2) == 0
    args = dict(stage=1, blocks=8, dp=8, pp=4, tp=1, micro_batch=1, micro_batches=8, zero_stage=1,
                recompute="full", precision=PRECISIONS["bf16"], framework_bytes=0)
    split, whole = stage_memory(MIXTRAL, **args, ep=4), stage_memory(MIXTRAL, **args)
    assert split.activations - whole.activations == 134_217_728


def test_alltoall_time_inside_and_across_nodes():
    a100 = gpu("a100-80gb")
    args = dict(blocks=8, tokens=8192, act=2, ep=4, recompute="none", gpu=a100)
    # inside a node: 32 all-to-alls x 3/4 x 128 MiB at the measured 176.92 GB/s of a 128 MiB buffer
    assert expert_alltoall_time_s(MIXTRAL, **args, spans_nodes=False) == pytest.approx(
        0.018207243, rel=1e-6)
    # across nodes: 32 x (3 x 2 us + 100,663,296 B / 22 GB/s)
    assert expert_alltoall_time_s(MIXTRAL, **args, spans_nodes=True) == pytest.approx(
        0.146611340, rel=1e-6)
    assert expert_alltoall_time_s(MIXTRAL, **dict(args, recompute="full"), spans_nodes=True) == \
        pytest.approx(0.219917009, rel=1e-6)
    assert expert_alltoall_time_s(MIXTRAL, **dict(args, ep=1), spans_nodes=True) == 0


def test_expert_gemms_compute_k_experts_of_f_e_and_the_router():
    fwd = block_forward_gemms(MIXTRAL, micro_batch=1, seq_len=8192, tp=2, ep=4)
    by_name = {g.name: g for g in fwd}
    # 2 local experts of 8192 x 2 x 4 / 8 = 8192 rows each, f_e / tp = 7168 wide
    up = by_name["mlp-up"]
    assert (up.m, up.n, up.k, up.batch) == (8192, 7168, 4096, 2)
    assert (by_name["router"].m, by_name["router"].n) == (8192, 8)
    # at c = 1 the block's weight GEMMs are the active parameters' FLOPs (flops.py), split by tp
    # except the router (replicated): per token 2 x 4096 x 8 of it
    linear = sum(g.flops for g in fwd if not g.name.startswith("attention"))
    router = 2 * 4096 * 8 * 8192
    assert linear - router == (block_matmul_flops_per_token(MIXTRAL) * 8192 - router) / 2
    # a capacity factor of 1.25 pads every expert's rows
    padded = {g.name: g for g in block_forward_gemms(MIXTRAL, micro_batch=1, seq_len=8192, tp=2,
                                                     ep=4, capacity_factor=1.25)}
    assert padded["mlp-down"].m == 10240


def test_search_tries_expert_degrees_dividing_dp_and_experts():
    assert expert_degrees(MIXTRAL, 16) == [1, 2, 4, 8]
    assert expert_degrees(MIXTRAL, 12) == [1, 2, 4]
    assert expert_degrees(preset("llama2-7b"), 16) == [1]
    assert expert_degrees(MIXTRAL, 12, pinned=8) == []
    assert expert_degrees(MIXTRAL, 16, pinned=8) == [8]


def test_tp_must_divide_the_widths_the_model_uses():
    # an MoE model without dense layers never runs an MLP of ffn_hidden: only the experts' widths
    moe = MIXTRAL.replace(ffn_hidden=1004, expert_ffn_hidden=1024)
    assert Layout(dp=1, pp=1, tp=8).model_reasons(moe) == []
    assert Layout(dp=1, pp=1, tp=8).model_reasons(moe.replace(expert_ffn_hidden=1004)) == [
        "tp=8 does not divide expert_ffn_hidden=1004"]
    # with dense layers (DeepSeek's first k) ffn_hidden is checked, once where the widths agree
    dense_first = moe.replace(dense_layers=1, expert_ffn_hidden=1004)
    assert Layout(dp=1, pp=1, tp=8).model_reasons(dense_first) == [
        "tp=8 does not divide ffn_hidden=1004"]
    assert Layout(dp=1, pp=1, tp=8).model_reasons(preset("llama2-7b").replace(ffn_hidden=1004)) == [
        "tp=8 does not divide ffn_hidden=1004"]
