"""Context parallelism: the cp axis of the layout (Megatron-Core's order tp-cp-dp-pp), its rules,
and the traffic terms of topology/context_parallel.py pinned to hand-computed values."""
import dataclasses
import itertools

import pytest

from llmlaunch.topology.context_parallel import (cp_block_time_s, cp_collectives_per_block,
                                                 kv_allgather_bytes, ulysses_alltoall_bytes)
from llmlaunch.topology.layout import Layout
from llmlaunch.topology.layout_rules import CP_MIN_TOKENS_PER_RANK, searched_cp_degrees
from llmlaunch.topology.shapes import preset

LLAMA3_8B = preset("llama3-8b")     # h 4096, 32 heads, 8 KV heads of 128, seq 8192


@pytest.mark.parametrize("dp,pp,tp", [(4, 3, 2), (2, 2, 2), (1, 4, 1), (3, 1, 4), (8, 2, 8)])
def test_cp_1_leaves_every_rank_where_it_was(dp, pp, tp):
    """With cp = 1 the rank of (pipe, data, tensor) is DeepSpeed's (p dp + d) tp + t, as before the
    context axis existed, and every group is unchanged."""
    lay = Layout(dp=dp, pp=pp, tp=tp)
    for p, d, t in itertools.product(range(pp), range(dp), range(tp)):
        rank = (p * dp + d) * tp + t
        assert lay.rank_of(pp=p, dp=d, tp=t) == rank
        assert lay.coords(rank) == {"pp": p, "dp": d, "tp": t, "cp": 0}
    assert lay.groups("cp") == [[r] for r in range(lay.world_size)]
    assert lay.groups("dp") == [[(p * dp + d) * tp + t for d in range(dp)]
                                for p in range(pp) for t in range(tp)]


def test_megatron_order_tp_cp_dp_pp_hand_groups():
    """tp 2 x cp 2 x dp 2 x pp 2 = 16 ranks, rank = ((p dp + d) cp + c) tp + t (Megatron-Core's
    RankGenerator order 'tp-cp-ep-dp-pp'): context groups pair ranks 2 apart, data groups 4 apart,
    pipeline groups 8 apart."""
    lay = Layout(dp=2, pp=2, tp=2, cp=2)
    assert lay.world_size == 16
    assert lay.rank_of(pp=1, dp=1, cp=1, tp=1) == 15
    assert lay.rank_of(pp=0, dp=1, cp=0, tp=1) == 5
    assert lay.coords(6) == {"tp": 0, "cp": 1, "dp": 1, "pp": 0}
    assert lay.groups("tp")[:2] == [[0, 1], [2, 3]]
    assert sorted(lay.groups("cp")) == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11],
                                        [12, 14], [13, 15]]
    assert sorted(lay.groups("dp")) == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13],
                                        [10, 14], [11, 15]]
    assert sorted(lay.groups("pp")) == [[r, r + 8] for r in range(8)]
    assert lay.strides() == {"tp": 1, "cp": 2, "dp": 4, "pp": 8}


def test_context_reasons():
    """2 cp must divide the sequence (two load-balanced chunks a rank); the all-to-all form needs
    cp to divide the heads and the KV heads each TP rank holds."""
    assert Layout(dp=1, pp=1, tp=1, cp=4).context_reasons(LLAMA3_8B) == []
    odd = Layout(dp=1, pp=1, tp=1, cp=3).context_reasons(LLAMA3_8B)
    assert len(odd) == 1 and "divisible by 2*cp = 6" in odd[0]
    # 8 KV heads over tp 2: 4 a rank, which cp 8 cannot split (32 query heads / 2 = 16 can)
    a2a = Layout(dp=1, pp=1, tp=2, cp=8, cp_kind="alltoall").context_reasons(LLAMA3_8B)
    assert a2a == ["cp=8 does not divide the 4 KV heads per tp rank; use cp_kind allgather or cp in "
                   "1, 2, 4"]
    assert Layout(dp=1, pp=1, tp=2, cp=8).context_reasons(LLAMA3_8B) == []
    # sequence parallelism splits each cp rank's s/cp tokens over tp
    short = dataclasses.replace(LLAMA3_8B, seq_len=12)
    sp = Layout(dp=1, pp=1, tp=4, cp=1, sequence_parallel=True).context_reasons(
        dataclasses.replace(LLAMA3_8B, seq_len=10))
    assert sp == ["sequence parallelism with tp=4 needs the sequence (10) divisible by tp"]
    sp = Layout(dp=1, pp=1, tp=4, cp=2, sequence_parallel=True).context_reasons(short)
    assert sp == ["sequence parallelism with tp=4 needs the 6 tokens per cp rank divisible by tp"]
    with pytest.raises(ValueError, match="cp_kind must be one of allgather, alltoall"):
        Layout(dp=1, pp=1, tp=1, cp=2, cp_kind="ring")


def test_searched_cp_degrees():
    """Divisors c of the ranks left after tp with s / c >= 4096 tokens a rank (8k: 1, 2); a pin is
    tried alone, nothing where it does not divide the ranks."""
    assert CP_MIN_TOKENS_PER_RANK == 4096
    assert searched_cp_degrees(LLAMA3_8B, 8) == [1, 2]
    long = dataclasses.replace(LLAMA3_8B, seq_len=131072)
    assert searched_cp_degrees(long, 64) == [1, 2, 4, 8, 16, 32]
    assert searched_cp_degrees(LLAMA3_8B, 8, pinned=4) == [4]
    assert searched_cp_degrees(LLAMA3_8B, 6, pinned=4) == []


def test_kv_allgather_and_ulysses_bytes_hand_values():
    """Llama 3 8B, b 1, s 8192, bf16: the gathered K and V of a block are 2 x 8192 x (8 x 128) x 2
    bytes = 33.55 MB; Ulysses at cp 2 exchanges Q, K, V of its 4096 tokens, (4096 + 2 x 1024) x
    4096 x 2 = 50.33 MB, and the output, 4096 x 4096 x 2 = 33.55 MB."""
    assert kv_allgather_bytes(LLAMA3_8B, micro_batch=1, seq_len=8192, tp=1, cp=2, act=2) == 33554432
    assert kv_allgather_bytes(LLAMA3_8B, micro_batch=1, seq_len=8192, tp=2, cp=2, act=2) == 16777216
    assert ulysses_alltoall_bytes(LLAMA3_8B, micro_batch=1, seq_len=8192, tp=1, cp=2, act=2) == (
        50331648, 33554432)


def test_collectives_per_block():
    assert cp_collectives_per_block("allgather", "none") == (1, 2)    # gather; gather + reduce-scatter
    assert cp_collectives_per_block("allgather", "full") == (2, 2)    # the forward's again
    assert cp_collectives_per_block("alltoall", "selective") == (1, 1)
    with pytest.raises(ValueError, match="not allgather or alltoall"):
        cp_collectives_per_block("p2p", "none")


def test_cp_block_time_hand_values():
    """A collective priced at 1 s a GB: the all-gather form moves 3 x 33.55 MB per block (forward
    gather, backward gather and reduce-scatter) = 0.1007 s; overlapped with 10 ms / 20 ms of
    attention, what exceeds it shows: 0.0236 + 0.0471 s; the all-to-all form's four exchanges
    (50.33 + 33.55 MB, forward and backward) 0.1678 s. cp = 1: nothing."""
    per_gb = lambda nbytes: nbytes / 1e9          # noqa: E731
    args = dict(micro_batch=1, seq_len=8192, tp=1, cp=2, act=2, recompute="none",
                collective=per_gb)
    one = 33554432 / 1e9
    assert cp_block_time_s(LLAMA3_8B, kind="allgather", **args) == pytest.approx(3 * one)
    assert cp_block_time_s(LLAMA3_8B, kind="allgather", overlap=True, attention_s=(0.01, 0.02),
                           **args) == pytest.approx((one - 0.01) + (2 * one - 0.02))
    assert cp_block_time_s(LLAMA3_8B, kind="allgather", overlap=True, attention_s=(0.05, 0.08),
                           **args) == 0.0
    assert cp_block_time_s(LLAMA3_8B, kind="alltoall", **args) == pytest.approx(
        2 * (50331648 + 33554432) / 1e9)
    assert cp_block_time_s(LLAMA3_8B, kind="allgather", **{**args, "cp": 1}) == 0.0


def test_rank_map_and_plan_page_show_the_context_axis(tmp_path):
    """The page's rank map carries the axes in Megatron-Core's order with their strides and where
    the context groups lie; the plan page states the rank rule with cp; at cp = 1 both read as
    before (DeepSpeed's rule)."""
    from llmlaunch.cli import build_parser
    from llmlaunch.cli.plan import resolve_inputs
    from llmlaunch.report import plan_page
    from llmlaunch.report.rank_map import rank_map
    from llmlaunch.topology import planner

    rm = rank_map(Layout(dp=2, pp=2, tp=2, cp=2), 8)
    assert [(a["name"], a["size"], a["stride"]) for a in rm["axes"]] == [
        ("tp", 2, 1), ("cp", 2, 2), ("dp", 2, 4), ("pp", 2, 8)]
    assert (rm["cp"], rm["cp_kind"], rm["cp_stride"], rm["cp_crosses_nodes"]) == (2, "allgather", 2, False)
    assert rank_map(Layout(dp=1, pp=1, tp=8, cp=2), 8)["cp_crosses_nodes"] is True
    assert [a["name"] for a in rank_map(Layout(dp=2, pp=2, tp=2), 8)["axes"]] == ["tp", "cp", "dp", "pp"]

    for cp, rule in ((2, "Rank = ((stage × dp + replica) × cp + context rank) × tp + tensor rank"),
                     (1, "Rank = (stage × dp + replica) × tp + tensor rank (DeepSpeed's topology")):
        args = build_parser().parse_args(["plan", "--model", "llama3-8b", "--gpus", "8", "--gpu",
                                          "h100-80gb", "--cp", str(cp), "--top", "1"])
        inputs = resolve_inputs(args)
        result = planner.search(inputs.spec, inputs.cluster, inputs.options, inputs.pins)
        out = tmp_path / f"cp{cp}.html"
        plan_page.write_plan_report(out, inputs, result, result.candidates[0])
        assert rule in out.read_text()
