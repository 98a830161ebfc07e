"""Communication and schedule formulas."""
import pytest

from llmlaunch.topology.step_time import (allgather_time_s, allreduce_time_s, bubble_fraction,
                                          bubble_ratio, pipeline_time_s)


def test_ring_allreduce_hand_value():
    # 1 GB over 8 GPUs at 100 GB/s bus bandwidth: 2 * 7/8 * 1 / 100 = 17.5 ms
    assert allreduce_time_s(1e9, 8, 100) == pytest.approx(0.0175)
    assert allgather_time_s(1e9, 8, 100) == pytest.approx(0.00875)
    assert allreduce_time_s(1e9, 1, 100) == 0.0


def test_bubble_fraction_and_narayanan_ratio():
    # p = 8 stages, m = 96 micro-batches: idle 7/103 of the step; (p-1)/m = 7/96 of ideal time
    assert bubble_fraction(8, 96) == pytest.approx(7 / 103)
    assert bubble_ratio(8, 96) == pytest.approx(7 / 96)
    assert bubble_fraction(1, 10) == 0.0


def test_pipeline_time_equal_stages_is_m_plus_p_minus_1():
    assert pipeline_time_s([2.0] * 4, 8) == pytest.approx((8 + 4 - 1) * 2.0)
    # a slow stage dominates the steady state
    assert pipeline_time_s([1.0, 3.0], 5) == pytest.approx(4 * 3.0 + 4.0)


def test_interleaving_shrinks_the_bubble_v_fold():
    # Narayanan et al. 2021, Section 2.2.2: bubble ratio (p - 1)/(v m)
    assert bubble_ratio(8, 96, 4) == pytest.approx(7 / (4 * 96))
    assert bubble_fraction(8, 96, 4) == pytest.approx(7 / (4 * 96 + 7))
    # equal stages: (m + (p - 1)/v) T
    assert pipeline_time_s([2.0] * 4, 8, 3) == pytest.approx((8 + 3 / 3) * 2.0)


def test_alpha_beta_latency_terms_hand_values():
    from llmlaunch.topology.step_time import p2p_time_s

    # 8 GPUs, alpha 2 us: a ring all-reduce takes 2 * 7 = 14 messages -> 28 us on top of the bytes
    assert allreduce_time_s(1e9, 8, 100, 2e-6) == pytest.approx(0.0175 + 28e-6)
    assert allgather_time_s(1e9, 8, 100, 2e-6) == pytest.approx(0.00875 + 14e-6)
    # a 4-byte all-reduce is all latency
    assert allreduce_time_s(4, 2, 100, 1e-4) == pytest.approx(2e-4, rel=1e-6)
    assert allreduce_time_s(4, 1, 100, 1e-4) == 0.0
    # one send: alpha + N / B
    assert p2p_time_s(1e6, 1, 5e-5) == pytest.approx(5e-5 + 1e-3)


def test_host_and_device_overlap_on_gpu_add_on_cpu():
    from llmlaunch.topology.step_time import host_time_s, pass_time_s

    assert host_time_s(1000, 6e-6) == pytest.approx(6e-3)
    assert pass_time_s(device_s=2e-3, host_s=6e-3, async_dispatch=True) == pytest.approx(6e-3)
    assert pass_time_s(device_s=9e-3, host_s=6e-3, async_dispatch=True) == pytest.approx(9e-3)
    assert pass_time_s(device_s=2e-3, host_s=6e-3, async_dispatch=False) == pytest.approx(8e-3)


def test_small_model_on_a_big_gpu_is_host_bound_and_a_big_one_is_not():
    """GPT-3 125M at micro-batch 1 (s = 2048) on one H100: 1299 ops at 6 us (7.8 ms) outlast
    ~1.5 TFLOP of GEMMs at 593 TFLOP/s (2.6 ms); GPT-3
    175B's stage at the same micro-batch is device-bound, so its estimate is unchanged by the
    overhead term."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.shapes import preset
    from llmlaunch.topology.op_counts import stage_ops_per_micro_batch
    from llmlaunch.topology.step_time import stage_micro_batch_time

    h100 = gpu("h100-80gb")
    small = preset("gpt3-125m")
    kwargs = dict(first=True, last=True, tp=1, pp=1, micro_batch=1, recompute="none",
                  tp_spans_nodes=False, pp_spans_nodes=False)
    t = stage_micro_batch_time(small, h100, PRECISIONS["bf16"], blocks=small.layers, **kwargs)
    ops = stage_ops_per_micro_batch(small, blocks=small.layers, first=True, last=True, recompute="none")
    assert ops == 12 * 102 + 18 + 57
    assert t.compute_s == pytest.approx(ops * 6e-6) and t.host_bound
    big = preset("gpt3-175b")
    t_big = stage_micro_batch_time(big, h100, PRECISIONS["bf16"], blocks=12, **kwargs)
    no_overhead = stage_micro_batch_time(big, gpu("h100-80gb", op_overhead_us=0), PRECISIONS["bf16"],
                                         blocks=12, **kwargs)
    assert t_big.compute_s == no_overhead.compute_s and not t_big.host_bound
