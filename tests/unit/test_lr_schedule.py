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


def test_a_changed_schedule_continues_from_the_checkpoints_rate():
    from llmlaunch.launcher.lr_schedule import Schedule, continued

    saved = Schedule(lr=3e-3, min_lr=3e-4, warmup_steps=3, steps=30)
    raised = Schedule(lr=3e-3, min_lr=3e-4, warmup_steps=3, steps=40)
    # resumed after step 20 of 30, train.steps now 40: step 20's rate, then a cosine to the floor
    schedule, line = continued(saved, raised, 20)
    rate = 3e-4 + 2.7e-3 * (1 + math.cos(math.pi * 17 / 27)) / 2
    assert rate == pytest.approx(0.00111529232, rel=1e-8)
    assert (schedule.restart_step, schedule.restart_lr) == (20, pytest.approx(rate))
    assert schedule.lr_at(20) == pytest.approx(rate)            # the curve starts at that rate
    assert schedule.lr_at(30) == pytest.approx(3e-4 + (rate - 3e-4) / 2)   # half way: cos(pi/2)
    assert schedule.lr_at(40) == pytest.approx(3e-4)
    assert saved.lr_at(21) - schedule.lr_at(21) < 0.02 * rate  # no jump (the old would fall faster)
    assert "train.steps 30 -> 40" in line and "continues from step 20's 0.001115" in line
    # the continued schedule is what the next checkpoint records: resuming it again changes nothing
    again, quiet = continued(schedule, raised, 25)
    assert again == schedule and quiet is None
    # inside the warmup, a new end only changes the cosine to come: nothing to re-anchor
    early, note = continued(saved, raised, 2)
    assert early == raised and "inside the warmup" in note
    assert continued(saved, saved, 20) == (saved, None)
