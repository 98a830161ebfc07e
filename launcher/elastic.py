"""Elastic starts: a job emitted with `plan --emit --min-nodes K` asks Slurm for K..N nodes
(`#SBATCH --nodes=K-N`); each start takes the allocation it got and trains on the layout that fits
it. The rule (one pure function, `layout_for_world`):

- tp and pp stay as planned (tp inside one host: it must divide the ranks per host);
- dp = world / (pp * tp): the data-parallel degree shrinks or grows with the hosts;
- the global batch stays (micro_batch * grad_accum * dp), so grad_accum = global batch /
  (micro_batch * dp): the loss curve is the planned run's, whatever the allocation.

The trainer moves the last checkpoint onto the new layout when it differs (launcher/checkpoints/,
checkpoint.reshard auto). `python3 -m llmlaunch.launcher.elastic --config RUN.yaml --world W
--tasks-per-node T [--set k=v ...]` prints the `--set` overrides for this start (nothing when the
planned layout fits), or one error line (exit 2) when no layout fits.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

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


def main(argv: list[str] | None = None) -> int:
    from llmlaunch.config import ConfigError, load_run_config

    parser = argparse.ArgumentParser(prog="python3 -m llmlaunch.launcher.elastic")
    parser.add_argument("--config", required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--tasks-per-node", type=int, required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        planned = load_run_config(args.config, args.set).layout_obj()
        effective = layout_for_world(planned, args.world, args.tasks_per_node)
    except (ConfigError, ValueError) as exc:
        print(f"llmlaunch: error: elastic start: {exc}", file=sys.stderr)
        return 2
    for item in overrides(planned, effective):
        print(item)
    if effective != planned:
        print(f"llmlaunch: elastic start on {args.world // args.tasks_per_node} host(s): "
              f"{planned.describe()} -> {effective.describe()}, grad_accum {planned.grad_accum} -> "
              f"{effective.grad_accum} (global batch {effective.global_batch} kept)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
