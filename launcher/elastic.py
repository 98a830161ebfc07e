"""Elastic starts: a job emitted with `plan --emit --min-nodes K` asks Slurm for K..N nodes
(`#SBATCH --nodes=K-N`); each start takes the allocation it got and trains on the layout that fits
it. The rule (one pure function, `layout_for_world`):

- tp and pp stay as planned (tp inside one host: it must divide the ranks per host);
- dp = world / (pp * tp): the data-parallel degree shrinks or grows with the hosts;
- the global batch stays (micro_batch * grad_accum * dp), so grad_accum = global batch /
  (micro_batch * dp): the loss curve is the planned run's, whatever the allocation.

The trainer moves the last checkpoint onto the new layout when it differs (launcher/checkpoints/,
checkpoint.reshard auto). The supervisor (launcher/job.py) derives the layout at each start of an
elastic job (LLMLAUNCH_ELASTIC set) and hands the ranks `overrides` as --set arguments.
"""
from __future__ import annotations

import dataclasses

from llmlaunch.topology.layout import Layout


def layout_for_world(planned: Layout, world: int, tasks_per_node: int) -> Layout:
    """The planned layout adapted to `world` ranks on hosts of `tasks_per_node` ranks (see the
    module docstring). ValueError naming the allocation and what would fit when none does."""
    model_ranks = planned.pp * planned.tp
    if tasks_per_node < 1 or world < 1 or world % tasks_per_node:
        raise ValueError(f"an allocation of {world} ranks is not whole hosts of {tasks_per_node}")
    if tasks_per_node % planned.tp:
        raise ValueError(f"tp={planned.tp} does not fit inside a host of {tasks_per_node} ranks")
    if world % model_ranks:
        raise ValueError(f"{world} ranks do not split into pipelines of pp*tp = {planned.pp}*"
                         f"{planned.tp} = {model_ranks} ranks: the job needs a multiple of "
                         f"{model_ranks} ranks (hosts of {tasks_per_node})")
    dp = world // model_ranks
    per_accum = planned.micro_batch * dp
    if planned.global_batch % per_accum:
        fits = [d for d in range(1, planned.global_batch + 1)
                if planned.global_batch % (planned.micro_batch * d) == 0]
        raise ValueError(f"dp={dp} ({world} ranks) cannot keep the global batch of "
                         f"{planned.global_batch} sequences with micro-batch "
                         f"{planned.micro_batch}: it needs dp in {fits}")
    return dataclasses.replace(planned, dp=dp, grad_accum=planned.global_batch // per_accum)


def overrides(planned: Layout, effective: Layout) -> list[str]:
    """The run config --set items that turn `planned` into `effective` (empty when equal)."""
    return [f"layout.{key}={getattr(effective, key)}" for key in ("dp", "grad_accum")
            if getattr(effective, key) != getattr(planned, key)]


def describe_change(planned: Layout, effective: Layout, hosts: int) -> str:
    """The line a start prints when its hosts change the layout."""
    return (f"elastic start on {hosts} host(s): {planned.describe()} -> {effective.describe()}, "
            f"grad_accum {planned.grad_accum} -> {effective.grad_accum} (global batch "
            f"{effective.global_batch} kept)")
