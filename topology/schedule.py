"""The pipeline schedule of one step, simulated op by op from the planner's per-stage times.

The planner prices a step with closed forms (step_time.pipeline_time_s); this module lays the same
per-stage micro-batch times (Candidate.stage_times) out in time, as the report draws them:

  1F1B (Narayanan et al. 2021 Section 2.2.1, PipeDream-Flush): stage i runs min(p - i - 1, m)
      warm-up forwards, then alternates one forward and one backward, then drains.
  interleaved 1F1B (Section 2.2.2): each rank holds v model chunks of 1/v of its blocks; it warms
      up 2 (p - i - 1) + (v - 1) p chunk forwards (Megatron-LM's schedule), forward step k running
      chunk (k // p) mod v of micro-batch (k // (p v)) p + k mod p, backward steps mirrored.

A forward waits for the previous stage's forward of the same micro-batch (and chunk; chunk c on
stage 0 for chunk c - 1 on the last stage); a backward for the next stage's backward (the loss, on
the last stage of the last chunk). With equal stages the simulated flush lands where the closed form
says: (m + p - 1) T, and (m + (p - 1)/v) T interleaved; unequal stages (the embedding on the first,
the LM head on the last) make the closed form an upper bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .planner import Candidate
from .step_time import StageTime

# Micro-batches drawn at most, and forward+backward bars at most (deep pipelines draw fewer).
MAX_DRAWN_MICRO_BATCHES = 32
MAX_SCHEDULE_OPS = 3000
# Share of a micro-batch's compute in its forward: 1/3 (the backward computes input and weight
# gradients, twice the forward's FLOPs); 1/4 with full recompute, whose backward re-runs the forward.
FORWARD_SHARE = 1 / 3
FORWARD_SHARE_FULL_RECOMPUTE = 1 / 4


class PipelineOp(NamedTuple):
    """One forward ('F') or backward ('B') of one micro-batch (and model chunk) on one stage."""

    stage: int
    kind: str
    micro_batch: int
    start_s: float
    duration_s: float
    chunk: int = 0


@dataclass(frozen=True)
class Schedule:
    """A simulated step: the pipeline's ops, the idle gaps, then the DP reduce and the optimizer."""

    stages: int
    micro_batches: int
    """m of the layout."""
    drawn: int
    """Micro-batches simulated (at most MAX_DRAWN_MICRO_BATCHES; all of m when drawn == m)."""
    virtual_stages: int
    ops: list
    """PipelineOp, in execution order per stage."""
    idle: list
    """(stage, start_s, duration_s) of every gap before the flush."""
    tail: list
    """(stage, kind 'dp' or 'optimizer', start_s, duration_s) after the flush."""
    pipeline_s: float
    """End of the last simulated op (the flush)."""
    fwd: list
    """Seconds of one micro-batch's forward per stage (all its chunks)."""
    bwd: list

    @property
    def end_s(self) -> float:
        """The simulated step: flush plus DP reduce and optimizer."""
        return max([self.pipeline_s] + [start + dur for _, _, start, dur in self.tail])


def forward_backward_times(times: list[StageTime], recompute: str) -> tuple[list[float], list[float]]:
    """Per-stage forward and backward seconds of one micro-batch: the forward share of compute and
    TP time (FORWARD_SHARE), the backward the rest; the activation send belongs to the forward, the
    gradient send to the backward."""
    share = FORWARD_SHARE_FULL_RECOMPUTE if recompute == "full" else FORWARD_SHARE
    pp = len(times)
    fwd, bwd = [], []
    for i, t in enumerate(times):
        sends = (0 if i == pp - 1 else 1) + (0 if i == 0 else 1)
        p2p = t.pp_comm_s / sends if sends else 0.0
        work = t.compute_s + t.tp_comm_s + t.ep_comm_s + t.cp_comm_s   # MoE, CP exchanges too
        fwd.append(share * work + (p2p if i < pp - 1 else 0.0))
        bwd.append((1 - share) * work + (p2p if i > 0 else 0.0))
    return fwd, bwd


def _orders_1f1b(p: int, m: int) -> list[list[tuple[str, int, int]]]:
    orders = []
    for i in range(p):
        warm = min(p - i - 1, m)
        seq = [("F", j, 0) for j in range(warm)]
        nf = warm
        for j in range(m):
            if nf < m:
                seq.append(("F", nf, 0))
                nf += 1
            seq.append(("B", j, 0))
        orders.append(seq)
    return orders


def _orders_interleaved(p: int, m: int, v: int) -> list[list[tuple[str, int, int]]]:
    """Megatron-LM's interleaved order per rank (m a multiple of p)."""
    total = m * v

    def forward_step(k: int) -> tuple[str, int, int]:
        return "F", (k // (p * v)) * p + k % p, (k // p) % v

    def backward_step(k: int) -> tuple[str, int, int]:
        return "B", (k // (p * v)) * p + k % p, v - 1 - (k // p) % v

    orders = []
    for i in range(p):
        warm = min(2 * (p - i - 1) + (v - 1) * p, total)
        seq = [forward_step(k) for k in range(warm)]
        nf = warm
        for k in range(total):
            if nf < total:
                seq.append(forward_step(nf))
                nf += 1
            seq.append(backward_step(k))
        orders.append(seq)
    return orders


def simulate(fwd: list[float], bwd: list[float], micro_batches: int,
             virtual_stages: int = 1) -> list[PipelineOp]:
    """Run the schedule (module docstring) with per-stage forward and backward seconds of one
    micro-batch; each of v chunks takes 1/v of them. Returns every op in execution order per stage."""
    p, m, v = len(fwd), micro_batches, virtual_stages
    if v > 1 and m % p:
        raise ValueError(f"the interleaved schedule needs micro-batches ({m}) divisible by pp={p}")
    orders = _orders_1f1b(p, m) if v == 1 else _orders_interleaved(p, m, v)
    end = {}  # (kind, stage, micro-batch, chunk) -> end time
    pos, free, ops = [0] * p, [0.0] * p, []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for i in range(p):
            while pos[i] < len(orders[i]):
                kind, j, c = orders[i][pos[i]]
                if kind == "F":
                    dep = (("F", i - 1, j, c) if i > 0 else ("F", p - 1, j, c - 1) if c > 0 else None)
                else:
                    dep = (("B", i + 1, j, c) if i < p - 1 else ("B", 0, j, c + 1) if c < v - 1
                           else ("F", i, j, c))
                if dep is not None and dep not in end:
                    break
                start = max(free[i], end[dep] if dep is not None else 0.0)
                duration = (fwd[i] if kind == "F" else bwd[i]) / v
                free[i] = start + duration
                end[(kind, i, j, c)] = free[i]
                ops.append(PipelineOp(i, kind, j, start, duration, c))
                pos[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # cannot happen for these orders; guards against an endless loop
            raise RuntimeError("pipeline schedule simulation deadlocked")
    return ops


def drawn_micro_batches(pp: int, m: int, virtual_stages: int = 1) -> int:
    """Micro-batches the schedule simulates: all up to MAX_DRAWN_MICRO_BATCHES, at most
    MAX_SCHEDULE_OPS bars in all (deep pipelines), a multiple of pp when interleaved."""
    drawn = max(1, min(m, MAX_DRAWN_MICRO_BATCHES,
                       max(2, MAX_SCHEDULE_OPS // (2 * pp * virtual_stages))))
    if virtual_stages > 1:
        drawn = max(pp, drawn - drawn % pp)
    return drawn


def candidate_schedule(cand: Candidate) -> Schedule:
    """The simulated step of a planned candidate, from its own per-stage times (the planner's one
    call), with its DP reduce and optimizer step after the flush (their durations from its StepTime)."""
    lay = cand.layout
    if not cand.stage_times:
        raise ValueError(f"{lay.describe()} has no estimate to draw")
    fwd, bwd = forward_backward_times(cand.stage_times, lay.recompute)
    drawn = drawn_micro_batches(lay.pp, lay.grad_accum, lay.virtual_stages)
    ops = simulate(fwd, bwd, drawn, lay.virtual_stages)
    flush = max(op.start_s + op.duration_s for op in ops)
    idle, cursor = [], [0.0] * lay.pp
    tiny = flush * 1e-6
    for op in sorted(ops, key=lambda o: (o.stage, o.start_s)):
        if op.start_s - cursor[op.stage] > tiny:
            idle.append((op.stage, cursor[op.stage], op.start_s - cursor[op.stage]))
        cursor[op.stage] = op.start_s + op.duration_s
    for stage in range(lay.pp):
        if flush - cursor[stage] > tiny:
            idle.append((stage, cursor[stage], flush - cursor[stage]))
    tail, t = [], flush
    for kind, seconds in (("dp", cand.step.dp_comm_s), ("optimizer", cand.step.optimizer_s)):
        if seconds > 0:
            tail.extend((stage, kind, t, seconds) for stage in range(lay.pp))
            t += seconds
    return Schedule(stages=lay.pp, micro_batches=lay.grad_accum, drawn=drawn,
                    virtual_stages=lay.virtual_stages, ops=ops, idle=idle, tail=tail,
                    pipeline_s=flush, fwd=fwd, bwd=bwd)
