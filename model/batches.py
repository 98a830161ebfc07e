"""The batch convention of `engine.train_batch(data_iter)`.

DeepSpeed's pipeline engine pulls gradient_accumulation_steps items from `data_iter` per step on the
first stage (it uses item[0], the inputs) and on the last stage (item[1], the labels); every TP rank
of those stages reads the same items. An item is the tuple (input_ids [b, s], labels [b, s]), both
int64, where labels are the next tokens: a sample of s+1 tokens t gives inputs t[:-1] and labels
t[1:].

A step's global batch is [dp * grad_accum * micro_batch, s+1] tokens, the same for every layout:
data-parallel replica r takes the r-th contiguous 1/dp of the rows, in micro-batches of
micro_batch rows. The engine averages the per-micro-batch mean losses, and the replicas' gradients,
so a step's loss and gradient are the mean over the global batch whatever the layout.

Context parallelism: the cp ranks of a replica read the same samples and each keeps its two chunks
of every sequence (model/context_parallel.py), cut after the shift, so labels stay aligned with their
inputs: `context_parallel_batch`.
"""
from __future__ import annotations

import torch

from .context_parallel import split_for_rank


def next_token_batch(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [b, s+1] -> (input_ids [b, s], labels [b, s])."""
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def context_parallel_batch(batch: tuple[torch.Tensor, torch.Tensor], cp_rank: int,
                           cp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [b, s] -> this context-parallel rank's chunks of both, [b, s/cp]."""
    inputs, labels = batch
    return split_for_rank(inputs, cp_rank, cp), split_for_rank(labels, cp_rank, cp)


def replica_micro_batches(global_tokens: torch.Tensor, micro_batch: int, dp_rank: int,
                          dp: int, cp_rank: int = 0,
                          cp: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This replica's micro-batches of one step's global batch [B, s+1] (B = dp*grad_accum*b);
    under context parallelism this rank's chunks of them."""
    rows = global_tokens.shape[0]
    if rows % (dp * micro_batch):
        raise ValueError(f"a global batch of {rows} sequences does not split into {dp} replicas "
                         f"of micro-batches of {micro_batch}")
    per_replica = rows // dp
    mine = global_tokens[dp_rank * per_replica:(dp_rank + 1) * per_replica]
    return [context_parallel_batch(next_token_batch(chunk), cp_rank, cp)
            for chunk in mine.split(micro_batch)]
