"""The training guard: every step, before the optimizer applies it, all ranks agree whether the step
is healthy; an unhealthy step is skipped, a run of them rolls the run back to a verified checkpoint
and skips the batches that followed it (PaLM §5.1's recipe), and a run that cannot be saved that way
stops with one line. docs/launch.md ("The guard") is the user's account; this module holds the
pure parts: the verdict on one step, the decision after it, and the record of skipped steps.

What is judged (the step's loss is the mean over the global batch, the norm DeepSpeed's):
- not finite: the loss or the gradient norm is NaN or infinite;
- diverged: the loss exceeds `max_loss_ratio` x ln(vocab), the loss of a uniform guess (a model
  that does much worse than guessing has diverged; LLM Foundry's loss cap is the same idea);
- spike: once `min_history` healthy losses are in the window of the last `window`, the loss exceeds
  median + max(spike_mads x sigma, spike_min_rise x median), sigma = 1.4826 x MAD (the median
  absolute deviation scaled to a normal's standard deviation). Median and MAD ignore the very
  outliers they are meant to find, where a mean and standard deviation over the same window are
  pulled up by the spike's first steps; the relative floor keeps a flat, low-noise curve from
  flagging ordinary noise.

The record (RUN_DIR/skipped.json) holds every step whose batch was consumed without an update: the
guard's skips, DeepSpeed's own overflow skips, and the ranges a rollback abandoned. The step
counter is the data position (step t reads global batch t); the learning-rate schedule and the
optimizer advance only on applied steps, so their position after step t is t minus the skipped
steps up to t (`applied_steps`). A requeued run reads the record and skips the same batches.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llmlaunch.atomic import write_text_atomic
from llmlaunch.run_files import SKIPPED

MAD_TO_SIGMA = 1.4826   # 1 / Phi^-1(3/4): MAD x this estimates a normal's standard deviation

OK, SKIP, ROLLBACK, STOP = "ok", "skip", "rollback", "stop"


def spike_threshold(history: list[float], spike_mads: float, spike_min_rise: float) -> float:
    """The loss above which a step is a spike: median + max(k x 1.4826 x MAD, rise x median)."""
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    return median + max(spike_mads * MAD_TO_SIGMA * mad, spike_min_rise * abs(median))


def judge(loss: float, grad_norm: float | None, history: list[float], guard, vocab: int) -> str | None:
    """Why a step is unhealthy (one phrase), or None when it is healthy. `guard` a GuardSection."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    if guard.max_loss_ratio > 0 and loss > guard.max_loss_ratio * math.log(vocab):
        return (f"loss {loss:.4g} exceeds {guard.max_loss_ratio:g} x ln(vocab) = "
                f"{guard.max_loss_ratio * math.log(vocab):.4g} (diverged)")
    if len(history) >= max(guard.min_history, 1):
        limit = spike_threshold(history[-guard.window:], guard.spike_mads, guard.spike_min_rise)
        if loss > limit:
            return (f"loss spike: {loss:.4g} > {limit:.4g} (median + spread of the last "
                    f"{min(len(history), guard.window)} healthy steps)")
    return None


@dataclass
class Decision:
    action: str                     # OK, SKIP, ROLLBACK or STOP
    reason: str = ""                # why the step was unhealthy ("" when OK)
    bad_from: int = 0               # the first step of the current run of unhealthy steps

    def line(self, step: int, rollback_tag: str | None = None) -> str:
        if self.action == SKIP:
            return f"guard: step {step} skipped ({self.reason}); its batch is consumed, no update"
        if self.action == ROLLBACK:
            return (f"guard: steps {self.bad_from}-{step} unhealthy ({self.reason}); rolling back to "
                    f"{rollback_tag} and skipping the batches after it through step {step}")
        if self.action == STOP:
            return f"guard: training stopped at step {step}: {self.reason}"
        return ""


def conclude(streak: int, bad_from: int, reason: str | None, bad_steps: int, can_roll_back: bool,
             rollbacks_left: int) -> Decision:
    """After a step: OK, or what to do about it (`streak` unhealthy steps in a row including this
    one, the first at `bad_from`)."""
    if reason is None:
        return Decision(OK)
    if streak < bad_steps:
        return Decision(SKIP, reason, bad_from)
    if rollbacks_left <= 0:
        return Decision(STOP, f"{streak} unhealthy steps in a row from step {bad_from} ({reason}) "
                              "and no rollback left (train.guard.rollbacks)", bad_from)
    if not can_roll_back:
        return Decision(STOP, f"{streak} unhealthy steps in a row from step {bad_from} ({reason}) "
                              f"and no verified checkpoint before step {bad_from} to roll back to",
                        bad_from)
    return Decision(ROLLBACK, reason, bad_from)


@dataclass
class SkipRecord:
    """RUN_DIR/skipped.json: {"ranges": [[first, last], ...] (inclusive, sorted, merged),
    "events": [{"step", "action", "reason"}], "rollbacks": n}."""

    ranges: list = field(default_factory=list)
    events: list = field(default_factory=list)
    rollbacks: int = 0

    @classmethod
    def read(cls, run_dir: Path) -> "SkipRecord":
        path = Path(run_dir) / SKIPPED
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            ranges = [[int(a), int(b)] for a, b in raw.get("ranges", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a skip record ({exc}): fix it or move it away") from None
        return cls(merge(ranges), list(raw.get("events", [])), int(raw.get("rollbacks", 0)))

    def write(self, run_dir: Path) -> None:
        write_text_atomic(Path(run_dir) / SKIPPED, json.dumps(
            {"ranges": self.ranges, "events": self.events, "rollbacks": self.rollbacks},
            indent=1) + "\n")

    def add(self, first: int, last: int, action: str, reason: str, to: int | None = None) -> None:
        self.ranges = merge(self.ranges + [[first, last]])
        self.events.append({"step": last, "action": action, "reason": reason,
                            **({} if to is None else {"to": to})})

    def rollback_targets(self) -> frozenset:
        """The steps of the tags earlier rollbacks returned to (never returned to twice)."""
        return frozenset(e["to"] for e in self.events
                         if e.get("action") == ROLLBACK and e.get("to") is not None)

    def skipped(self, step: int) -> bool:
        return any(a <= step <= b for a, b in self.ranges)

    def applied_steps(self, step: int) -> int:
        """Optimizer steps applied after `step` batches: step minus the skipped ones up to it."""
        return step - sum(max(0, min(b, step) - a + 1) for a, b in self.ranges)

    def skip_to(self, step: int) -> int:
        """After `step`: the last step of the skipped range holding step + 1 (its batches are not
        trained again), else `step` itself."""
        for a, b in self.ranges:
            if a <= step + 1 <= b:
                return b
        return step


def merge(ranges: list) -> list:
    """Inclusive [first, last] ranges sorted, overlapping and adjacent ones joined."""
    out: list = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
