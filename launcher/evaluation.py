"""Evaluation during training (train.eval_every, train.eval_batches): the mean loss over the same
train.eval_batches global batches of the evaluation data each time, under either engine.

- pipeline: DeepSpeed's `PipelineEngine.eval_batch` (its inference schedule under no_grad, the loss
  averaged over micro-batches and data-parallel replicas and broadcast along the pipeline), one
  call per global batch of grad_accum micro-batches;
- plain: the engine's forward under `torch.no_grad`, per micro-batch, averaged, then all-reduced
  over DeepSpeed's data-parallel group (dp x cp under context parallelism: each rank's loss is the
  mean over its chunks).

It reads its own iterator (never the training one) and restores torch's RNG states afterwards, so
the training data position and randomness are untouched: a run that evaluates resumes bit-exactly.
"""
from __future__ import annotations

from typing import Iterator


def evaluate(run, batches: Iterator, global_batches: int) -> float:
    """Mean loss over `global_batches` global batches of `batches` (this replica's micro-batches,
    as (inputs, labels) tensors); every rank returns the same value."""
    import torch
    import torch.distributed as dist

    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    engine = run.engine
    try:
        if run.kind == "pipeline":
            losses = [float(engine.eval_batch(data_iter=batches)) for _ in range(global_batches)]
            return sum(losses) / len(losses)
        micro = engine.gradient_accumulation_steps() * global_batches
        engine.eval()
        total = torch.zeros(1, device=engine.device)
        with torch.no_grad():
            for _ in range(micro):
                inputs, labels = next(batches)
                total += engine(inputs.to(engine.device), labels.to(engine.device)).detach().float()
        engine.train()
        total /= micro
        if run.replicas > 1:     # dp x cp: each rank's loss is the mean over its s/cp tokens
            dist.all_reduce(total, group=run.groups.get_data_parallel_group())
            total /= run.replicas
        return float(total)
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
