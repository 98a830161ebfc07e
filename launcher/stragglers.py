"""Stragglers: which rank (or host) computes slower than the others.

A synchronous job runs at its slowest rank's pace, so every rank's *wall* step time is the same;
what differs is the time a rank spends computing rather than waiting for its peers. Each rank
times its model's forward passes (a pre- and post-hook on the root module: the forward of each
micro-batch, after a pipeline stage has received its input and before it sends its output, so no
wait on a peer is inside it; the backward runs on the same hardware at about twice the cost). Every
`train.stragglers.every` steps the ranks all-gather their forward seconds per step over the period
(a start's first step, which allocates and builds, left out) and their host names; a rank slower than the median rank by more than `train.stragglers.margin` is
named in one log line on rank 0 and in the metrics.jsonl record of that step (`stragglers`), which
the run page lists; when every rank of a host is slow, the host is named.

Tests slow a rank through LLMLAUNCH_STRAGGLER_INJECT=RANK:SECONDS (a sleep in each forward).
"""
from __future__ import annotations

import logging
import os
import statistics
import time

log = logging.getLogger("llmlaunch.rank")
INJECT_ENV = "LLMLAUNCH_STRAGGLER_INJECT"


def slow_ranks(seconds: list[float], hosts: list[str], peers: list, margin: float) -> list[dict]:
    """[{rank, host, seconds, ratio}] of the ranks slower than the median of the ranks doing the
    same work (the same `peers` key: pipeline stage and TP rank, so the dp replicas) by more than
    `margin` (a fraction), slowest first."""
    slow = []
    for key in set(peers):
        group = [r for r, k in enumerate(peers) if k == key]
        median = statistics.median(seconds[r] for r in group)
        if len(group) < 2 or median <= 0:
            continue
        slow += [{"rank": r, "host": hosts[r], "seconds": seconds[r], "ratio": seconds[r] / median}
                 for r in group if seconds[r] > median * (1 + margin)]
    return sorted(slow, key=lambda x: -x["ratio"])


def slow_hosts(slow: list[dict], hosts: list[str]) -> list[str]:
    """Hosts all of whose ranks are slow (when the job spans more than one host)."""
    if len(set(hosts)) < 2:
        return []
    named = {s["rank"] for s in slow}
    return sorted(h for h in set(hosts) if all(r in named for r, x in enumerate(hosts) if x == h))


def describe(slow: list[dict], hosts_slow: list[str], first: int, last: int) -> str:
    """The log line naming them."""
    who = (f"host {', '.join(hosts_slow)} (all its ranks); " if hosts_slow else "")
    ranks = ", ".join(f"rank {s['rank']} on {s['host']} {s['ratio']:.1f}x ({s['seconds']:.4f} s "
                      "per step)" for s in slow)
    return (f"stragglers over steps {first}-{last}: {who}{ranks} the forward time of the median "
            "rank doing the same work: their compute is slow, not the link (the forward's time "
            "excludes waiting on peers)")


class StragglerWatch:
    """One rank's forward timer and the periodic comparison."""

    def __init__(self, settings, module, rank: int, peers):
        from .hostnet import host_name

        self.every, self.margin, self.rank, self.peers = settings.every, settings.margin, rank, peers
        self.host = host_name()
        self.busy, self.steps, self.first, self.warm = 0.0, 0, None, False
        self._started = 0.0
        self.sleep = 0.0
        inject = os.environ.get(INJECT_ENV, "")
        if inject:
            who, _, seconds = inject.partition(":")
            self.sleep = float(seconds) if int(who) == rank else 0.0
        if self.every:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)

    def _enter(self, module, args):
        self._started = time.perf_counter()
        if self.sleep:
            time.sleep(self.sleep)

    def _leave(self, module, args, output):
        self.busy += time.perf_counter() - self._started

    def after_step(self, step: int) -> list[dict] | None:
        """Every rank after each step; every `every` steps a collective, and (rank 0) the slow
        ranks when there are any (None otherwise)."""
        if not self.every:
            return None
        if not self.warm:   # a start's first step allocates and builds: not a rank's pace
            self.warm, self.busy = True, 0.0
            return None
        self.steps += 1
        self.first = self.first or step
        if step % self.every:
            return None
        import torch.distributed as dist

        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.busy / max(self.steps, 1), self.host, self.peers))
        first, self.busy, self.steps, self.first = self.first, 0.0, 0, None
        if self.rank != 0:
            return None
        seconds, hosts = [g[0] for g in gathered], [g[1] for g in gathered]
        slow = slow_ranks(seconds, hosts, [tuple(g[2]) for g in gathered], self.margin)
        if not slow:
            return None
        log.warning("%s", describe(slow, slow_hosts(slow, hosts), first, step))
        return [{**s, "seconds": round(s["seconds"], 6), "ratio": round(s["ratio"], 3)}
                for s in slow]
