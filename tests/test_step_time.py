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
