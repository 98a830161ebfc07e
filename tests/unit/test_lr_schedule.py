"""The learning-rate schedule (launcher/lr_schedule.py), pinned to hand-computed values."""
import math

import pytest

from llmlaunch.launcher.lr_schedule import lr_at_step, lr_factor, lr_multiplier

TINY = dict(lr=0.003, min_lr=0.0003, warmup_steps=3, total_steps=30)


def test_warmup_starts_at_step_one_and_reaches_the_peak():
    # tiny-cpu: lr 3e-3, warmup 3: steps 1, 2, 3 train at 1e-3, 2e-3, 3e-3 (not 0, 0, 1e-3)
    assert [lr_at_step(k, **TINY) for k in (1, 2, 3)] == pytest.approx([0.001, 0.002, 0.003])
    assert lr_factor(3, **TINY) == 1.0                      # the peak exactly, not 1 - 1 ulp
    assert lr_at_step(3, **TINY) == 0.003


def test_cosine_decays_to_the_floor_at_the_last_step():
    # step 4: progress 1/27, 3e-4 + 2.7e-3 * (1 + cos(pi/27)) / 2
    assert lr_at_step(4, **TINY) == pytest.approx(3e-4 + 2.7e-3 * (1 + math.cos(math.pi / 27)) / 2)
    assert lr_at_step(4, **TINY) == pytest.approx(0.00299087178, rel=1e-9)
    assert lr_at_step(16, **TINY) == pytest.approx(3e-4 + 2.7e-3 * (1 + math.cos(math.pi * 13 / 27)) / 2)
    assert lr_at_step(30, **TINY) == pytest.approx(0.0003)
    assert lr_at_step(40, **TINY) == pytest.approx(0.0003)   # past the end: the floor
    lrs = [lr_at_step(k, **TINY) for k in range(3, 31)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_no_warmup_and_the_multiplier_is_one_step_behind():
    flat = dict(lr=1e-3, min_lr=1e-3, warmup_steps=0, total_steps=10)
    assert [lr_at_step(k, **flat) for k in (1, 5, 10)] == pytest.approx([1e-3] * 3)
    assert lr_multiplier(0, **TINY) == pytest.approx(1 / 3)   # LambdaLR epoch 0 -> step 1
    assert lr_multiplier(2, **TINY) == 1.0
    with pytest.raises(ValueError, match="count from 1"):
        lr_at_step(0, **TINY)
