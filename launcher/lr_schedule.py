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

A resumed run whose schedule differs from the one its checkpoint trained under (train.steps raised
or lowered, say) does not jump: past the warmup it continues from the rate its last step applied,
R = lr_r of the checkpoint's schedule at its step r, on a cosine to the new floor at the new end:

    lr_k = min_lr + (R - min_lr) * (1 + cos(pi * (k - r) / (S - r))) / 2     for r < k <= S

(`continued`). Inside the warmup nothing is re-anchored when lr and warmup_steps are unchanged: the
warmup does not depend on S, and the new cosine starts from the peak as the old one would have.
The checkpoint's manifest records the schedule its steps followed, re-anchored or not.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


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


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule: run.yaml's train section, re-anchored at restart_step with
    restart_lr when a resume changed it (restart_step 0: never)."""

    lr: float
    min_lr: float
    warmup_steps: int
    steps: int
    restart_step: int = 0
    restart_lr: float = 0.0

    def factor(self, step: int) -> float:
        """lr_k / lr for optimizer step `step` (1-based)."""
        r = self.restart_step
        if r and step >= r:
            span = self.steps - r
            progress = min(1.0, (step - r) / span) if span > 0 else 1.0
            rate = self.min_lr + (self.restart_lr - self.min_lr) * 0.5 * (1.0 + math.cos(
                math.pi * progress))
            return rate / self.lr if self.lr else 0.0
        return lr_factor(step, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                         total_steps=self.steps)

    def lr_at(self, step: int) -> float:
        """The learning rate optimizer step `step` (1-based) applies."""
        return self.lr * self.factor(step)

    def multiplier(self, epoch: int) -> float:
        """LambdaLR's factor of the peak lr after `epoch` scheduler steps (for step epoch + 1)."""
        return self.factor(epoch + 1)

    def to_dict(self) -> dict:
        return asdict(self)


def schedule_of(train) -> Schedule:
    """The schedule of run.yaml's train section."""
    return Schedule(lr=train.lr, min_lr=train.min_lr, warmup_steps=train.warmup_steps,
                    steps=train.steps)


def continued(saved: Schedule, wanted: Schedule, step: int) -> tuple[Schedule, str | None]:
    """The schedule a run resuming after `step` follows when its checkpoint trained under `saved`
    and run.yaml now says `wanted` (module docstring), and one line saying what changed (None when
    nothing did)."""
    base = Schedule(wanted.lr, wanted.min_lr, wanted.warmup_steps, wanted.steps)
    old = Schedule(saved.lr, saved.min_lr, saved.warmup_steps, saved.steps)
    if base == old or step >= wanted.steps:
        return Schedule(**{**base.to_dict(), **{k: getattr(saved, k) for k in
                                                ("restart_step", "restart_lr")}}), None
    changed = ", ".join(f"train.{key} {getattr(old, key):g} -> {getattr(base, key):g}"
                        for key in ("steps", "lr", "min_lr", "warmup_steps")
                        if getattr(old, key) != getattr(base, key))
    if step <= wanted.warmup_steps and (old.lr, old.warmup_steps) == (base.lr, base.warmup_steps):
        return base, (f"{changed} since the checkpoint (step {step}, inside the warmup): the warmup "
                      f"goes on unchanged, then the cosine reaches min_lr {base.min_lr:.3g} at "
                      f"step {base.steps}")
    rate = saved.lr_at(step) if step else base.lr_at(1)
    anchored = Schedule(**{**base.to_dict(), "restart_step": step, "restart_lr": rate})
    return anchored, (f"{changed} since the checkpoint (step {step}): the learning rate continues "
                      f"from step {step}'s {rate:.4g} on a cosine to min_lr {base.min_lr:.3g} at "
                      f"step {base.steps} (no jump)")


def lr_scheduler_factory(schedule: Schedule):
    """A callable DeepSpeed calls with the basic optimizer (deepspeed.initialize(lr_scheduler=...))
    to build the LambdaLR of `schedule`."""
    from torch.optim.lr_scheduler import LambdaLR

    return lambda optimizer: LambdaLR(optimizer, schedule.multiplier)
