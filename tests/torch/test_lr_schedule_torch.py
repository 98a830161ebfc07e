"""The learning-rate schedule as a torch scheduler: what the optimizer applies step by step."""
import pytest
import torch

from llmlaunch.config import RunConfig
from llmlaunch.launcher.lr_schedule import lr_at_step, lr_scheduler_factory, schedule_of

TINY = dict(lr=0.003, min_lr=0.0003, warmup_steps=3, total_steps=30)


def test_deepspeed_applies_the_schedule_step_by_step():
    config = RunConfig()
    config.train.lr, config.train.min_lr, config.train.warmup_steps, config.train.steps = \
        0.003, 0.0003, 3, 30
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=config.train.lr)
    scheduler = lr_scheduler_factory(schedule_of(config.train))(optimizer)
    applied = []
    for _ in range(5):
        applied.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert applied == pytest.approx([lr_at_step(k, **TINY) for k in range(1, 6)])
