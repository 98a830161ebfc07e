"""Process-group start-up for training jobs."""
from __future__ import annotations

from datetime import timedelta

import torch.distributed.distributed_c10d as c10d

DEFAULT_TIMEOUT_S = 600


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """deepspeed.init_distributed with one timeout for every process group.

    The timeout given to init_distributed covers only the world group; the groups DeepSpeed's grid
    creates later (data, pipe, TP, model parallel) take torch's default of 30 minutes, so a rank
    stalled inside one of them would hang its peers that long. Setting torch's default first makes
    those groups time out too. backend: None lets DeepSpeed choose (nccl on GPU, gloo on CPU).
    """
    import deepspeed

    timeout = timedelta(seconds=timeout_s)
    c10d.default_pg_timeout = timeout
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)


def finish_distributed() -> None:
    """Leave together and tear the process groups down before the interpreter exits: gloo's
    threads, destroyed at exit in no particular order, were seen to abort a finished rank
    ("terminate called without an active exception"). Only on the success paths: after a failure
    the peers may be gone and a barrier would wait for the timeout."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
