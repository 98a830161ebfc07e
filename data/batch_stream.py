"""A data-parallel replica's micro-batches from a sample index (data/sample_index.py), numpy only.

Step t trains on global samples [t * B, (t + 1) * B) (B the global batch), as rows in that order;
replica r of dp takes rows [r * B / dp, (r + 1) * B / dp), in micro-batches of micro_batch rows
(the convention of model/batches.py). So the rows of a step, gathered over the replicas, are the
same whatever dp and micro_batch are, and a run resumed at step k on another layout reads what an
uninterrupted run reads at step k: the step is the whole state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .vocab_check import check_batch


def replica_rows(global_batch: int, dp: int, dp_rank: int, micro_batch: int) -> list[range]:
    """The rows of a step's global batch that replica dp_rank reads, one range per micro-batch."""
    if global_batch % (dp * micro_batch):
        raise ValueError(f"a global batch of {global_batch} does not split into {dp} replicas of "
                         f"micro-batches of {micro_batch}")
    per_replica = global_batch // dp
    first = dp_rank * per_replica
    return [range(first + m, first + m + micro_batch) for m in range(0, per_replica, micro_batch)]


class ReplicaBatches:
    """Endless int64 micro-batches [micro_batch, seq_len + 1] of one replica from `start_step` on;
    with `vocab`, each checked to hold only ids below it."""

    def __init__(self, index, *, global_batch: int, micro_batch: int, dp: int = 1, dp_rank: int = 0,
                 start_step: int = 0, vocab: int | None = None, label: str = "data"):
        self.index, self.global_batch = index, global_batch
        self.rows = replica_rows(global_batch, dp, dp_rank, micro_batch)
        self.step, self.vocab, self.label = start_step, vocab, label

    def step_batches(self, step: int) -> list[np.ndarray]:
        """This replica's micro-batches of `step`."""
        first = step * self.global_batch
        out = []
        for rows in self.rows:
            batch = self.index.samples(first + rows.start, len(rows))
            if self.vocab is not None:
                check_batch(batch, Path(self.label), self.vocab)
            out.append(batch)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            for batch in self.step_batches(self.step):
                yield batch
            self.step += 1


def eval_batches(index, *, batches: int, global_batch: int, micro_batch: int, dp: int = 1,
                 dp_rank: int = 0) -> Iterator[np.ndarray]:
    """This replica's micro-batches of the first `batches` global batches of an (unshuffled)
    evaluation index: the same samples at every evaluation."""
    stream = ReplicaBatches(index, global_batch=global_batch, micro_batch=micro_batch, dp=dp,
                            dp_rank=dp_rank)
    for step in range(batches):
        yield from stream.step_batches(step)
