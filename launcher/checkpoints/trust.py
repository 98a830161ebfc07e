"""Which tags pruning may delete: never the newest trusted tag, nor any newer one.

A tag is *trusted* once training has continued from it for `checkpoint.healthy_steps` steps in a
row with a finite loss and gradient norm (rank 0 sees both: every rank's loss and norm are the
job's). Until then it is only *verified* (its bytes are the ones written), and a state that
verifies can still be poison: a diverging run, or a flip in memory before the save. So pruning
keeps the newest `checkpoint.keep` tags, and beyond them every tag from the newest trusted one on;
while no tag is trusted yet, it deletes no finished tag at all. A run that resumed from an older
tag than the trusted pointer names (the newer ones failed verification) keeps the one it resumed
from until a newer tag is trusted. `CKPT_DIR/trusted` names the newest trusted tag.
"""
from __future__ import annotations

import math
from pathlib import Path

from .tags import TRUSTED, read_pointer, step_of, tag_for_step, write_pointer


def prune_plan(complete: list[int], incomplete: list[int], keep: int, floor: int | None) -> list[int]:
    """Steps of the tags to delete: finished tags beyond the newest `keep`, except those at or
    after `floor` (None: every finished tag stays), and unfinished tags older than the newest
    finished one (saves that never completed)."""
    complete = sorted(complete)
    doomed = []
    if floor is not None and keep > 0:
        doomed = [s for s in complete[:-keep] if s < floor]
    if complete:
        doomed += [s for s in incomplete if s < complete[-1]]
    return sorted(doomed)


def finite(value) -> bool:
    return value is None or math.isfinite(float(value))


class Trust:
    """Rank 0's account of healthy steps since each tag of this process (module docstring)."""

    def __init__(self, ckpt_dir: Path, healthy_steps: int, resumed: int | None):
        self.ckpt_dir, self.healthy_steps, self.resumed = Path(ckpt_dir), healthy_steps, resumed
        tag, _ = read_pointer(self.ckpt_dir, TRUSTED)
        self.trusted = step_of(tag) if tag else None
        self.candidates = [resumed] if resumed is not None else []
        self.clean_from = resumed or 0
        self.unhealthy_streak = False

    def floor(self) -> int | None:
        """The oldest step pruning must keep (None: keep every finished tag)."""
        if self.trusted is None:
            return None
        if self.resumed is not None and self.trusted > self.resumed:
            return self.resumed
        return self.trusted

    def committed(self, step: int) -> None:
        self.candidates.append(step)

    def observe(self, step: int, loss, grad_norm, healthy: bool = True) -> tuple[str | None, bool]:
        """After optimizer step `step`: (a warning line to log or None, whether the trusted tag
        moved on). healthy=False: the guard judged the step unhealthy (a spike, a skip)."""
        if not (healthy and finite(loss) and finite(grad_norm)):
            self.clean_from = step
            warning = None
            if not self.unhealthy_streak:
                kept = tag_for_step(self.floor()) if self.floor() is not None else "every tag"
                what = (f"loss {loss} and gradient norm {grad_norm} are not both finite"
                        if healthy else "the guard judged the step unhealthy")
                warning = (f"step {step}: {what}; no checkpoint from here on is trusted until "
                           f"{self.healthy_steps} finite steps follow it, and pruning keeps {kept}"
                           " and every newer tag")
            self.unhealthy_streak = True
            return warning, False
        self.unhealthy_streak = False
        ready = [c for c in self.candidates
                 if c >= self.clean_from and step - c >= self.healthy_steps]
        if not ready:
            return None, False
        newest = max(ready)
        if self.floor() is not None and newest <= self.floor() and self.trusted == self.floor():
            return None, False
        self.trusted = newest
        self.resumed = None if newest >= (self.resumed or 0) else self.resumed
        write_pointer(self.ckpt_dir, TRUSTED, tag_for_step(newest))
        return None, True
