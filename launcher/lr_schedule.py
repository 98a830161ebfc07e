"""The learning-rate schedule: linear warmup, then cosine decay to a floor (train.* in run.yaml).

Step k (1-based: the k-th optimizer step) trains at

    lr_k = lr * k / W                                          for k <= W  (W = warmup_steps)
    lr_k = min_lr + (lr - min_lr) * (1 + cos(pi * (k - W) / (S - W))) / 2    for W < k <= S

so step 1 applies lr / W, step W the peak, and the last step S the floor (GPT-3, Brown et al. 2020
Appendix B: linear warmup then cosine decay; Chinchilla, Hoffmann et al. 2022, decays to a tenth).
W = 0 starts at the peak. DeepSpeed's own WarmupCosineLR was not used: it applies lr 0 to the first
two steps and never the peak (its warmup ratio is (k - 2)/W at step k).

DeepSpeed steps the scheduler after every optimizer step; LambdaLR's epoch e is the number of steps
taken, so its multiplier at epoch e is the one for step k = e + 1.
"""
from __future__ import annotations

import math


def lr_factor(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """lr_k / lr for optimizer step `step` (1-based): k / W in the warmup, then the cosine from 1 to
    min_lr / lr (exactly 1 at k = W, so the peak is applied as given)."""
    if step < 1:
        raise ValueError(f"optimizer steps count from 1, got {step}")
    if warmup_steps and step <= warmup_steps:
        return step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    floor = min_lr / lr if lr else 0.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at_step(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate optimizer step `step` (1-based) applies."""
    return lr * lr_factor(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                          total_steps=total_steps)


def lr_multiplier(epoch: int, *, lr: float, min_lr: float, warmup_steps: int,
                  total_steps: int) -> float:
    """LambdaLR's factor of the peak lr after `epoch` scheduler steps (for step epoch + 1)."""
    return lr_factor(epoch + 1, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                     total_steps=total_steps)


def lr_scheduler_factory(train):
    """A callable DeepSpeed calls with the basic optimizer (deepspeed.initialize(lr_scheduler=...))
    to build the schedule of run.yaml's `train` section."""
    import functools

    from torch.optim.lr_scheduler import LambdaLR

    factor = functools.partial(lr_multiplier, lr=train.lr, min_lr=train.min_lr,
                               warmup_steps=train.warmup_steps, total_steps=train.steps)
    return lambda optimizer: LambdaLR(optimizer, factor)
