"""A blend of sources at fixed weights, followed exactly over any window of the run.

Megatron-LM's BlendedDataset (megatron/core/datasets/blended_dataset.py and its helpers'
``build_blending_indices``) chooses the source of sample i by the deficit-first rule: the source
whose weight * max(i, 1) minus the samples it has had so far is largest (the first such on a tie).
Every source's count then stays within one sample of weight * i at every i, so any window of n
consecutive samples holds weight * n of each source to within two samples.

llmlaunch builds that sequence once for a *period* of P samples (a whole number of global batches, at
least 2^16) and repeats it: the source of global sample g is ``order[g mod P]``, its position in its
source ``(g div P) * per_period[s] + (samples of s before g mod P)``, the latter from a running count
kept every COUNT_EVERY samples plus a count over at most COUNT_EVERY entries. Repeating adds at
most one sample of error per source at each period boundary, never accumulating inside a window of
fewer than P samples. Memory on disk: 1 byte per sample of the period.
"""
from __future__ import annotations

import numpy as np

MIN_PERIOD = 1 << 16
COUNT_EVERY = 1024
MAX_SOURCES = 255


def normalized(weights) -> list[float]:
    total = float(sum(weights))
    if not weights or any(w <= 0 for w in weights) or total <= 0:
        raise ValueError(f"blend weights must be positive, got {list(weights)}")
    return [float(w) / total for w in weights]


def blend_period(global_batch: int, minimum: int = MIN_PERIOD) -> int:
    """The blend's period: the smallest multiple of the global batch that is at least `minimum`
    (a step's batch never straddles two periods)."""
    return -(-minimum // global_batch) * global_batch


def deficit_first(weights, count: int) -> np.ndarray:
    """Source of each of `count` samples by the deficit-first rule (module docstring), uint8."""
    weights = normalized(weights)
    if len(weights) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources in a blend")
    order = np.empty(count, np.uint8)
    had = [0] * len(weights)
    sources = range(len(weights))
    for i in range(count):
        at = i if i > 1 else 1
        best = max(sources, key=lambda k: (weights[k] * at - had[k], -k))
        order[i] = best
        had[best] += 1
    return order


def running_counts(order: np.ndarray, sources: int) -> np.ndarray:
    """counts[c, s]: samples of source s among order[:c * COUNT_EVERY] (int64)."""
    blocks = -(-len(order) // COUNT_EVERY)
    counts = np.zeros((blocks + 1, sources), np.int64)
    for s in range(sources):
        per_block = np.add.reduceat((order == s).astype(np.int64),
                                    np.arange(0, len(order), COUNT_EVERY)) if len(order) else []
        counts[1:, s] = np.cumsum(per_block)
    return counts


class Blend:
    """Global sample -> (source, its position in that source), from a period's order and counts."""

    def __init__(self, order: np.ndarray, counts: np.ndarray):
        self.order, self.counts = order, counts
        self.period = len(order)
        self.sources = counts.shape[1]
        self.per_period = np.asarray(counts[-1], np.int64) if self.period % COUNT_EVERY == 0 else \
            np.array([int(np.count_nonzero(np.asarray(order) == s)) for s in range(self.sources)])

    def before(self, r: int) -> np.ndarray:
        """Samples of each source among the first r of a period."""
        block = r // COUNT_EVERY
        tail = np.asarray(self.order[block * COUNT_EVERY:r])
        return np.asarray(self.counts[block], np.int64) + np.bincount(tail, minlength=self.sources)

    def locate(self, g: int) -> tuple[int, int]:
        q, r = divmod(int(g), self.period)
        s = int(self.order[r])
        return s, q * int(self.per_period[s]) + int(self.before(r)[s])

    def samples_by_source(self, end: int) -> np.ndarray:
        """Samples of each source among global samples [0, end)."""
        q, r = divmod(int(end), self.period)
        return q * self.per_period + self.before(r)
