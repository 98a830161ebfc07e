"""A rank's place in the job, built once per rank and passed down (torchtitan's ParallelDims is the
anchor): the layout, this rank and the world, its coordinates on every axis, and the process groups
once they exist. Nothing below the trainer rebuilds a layout from run.yaml: the engine, the model,
the checkpoint store and the step monitor all take this object.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from llmlaunch.topology.layout import Layout


@dataclass
class RankContext:
    layout: Layout
    rank: int
    world: int
    local_rank: int = 0
    groups: object = field(default=None, repr=False)
    """The TP, CP and DP groups of a pp = 1 layout (model/parallel_groups.ParallelGroups, DeepSpeed's
    mpu), made by `plain_groups`; the pipeline engine's grid makes its own (and the model its CP
    groups)."""

    def __post_init__(self):
        self.layout.check_world_size(self.world)
        self.coords = self.layout.coords(self.rank)

    @classmethod
    def from_environment(cls, layout: Layout, environ=os.environ) -> "RankContext":
        """From RANK, WORLD_SIZE and LOCAL_RANK (what torchrun sets, or launcher/entry.py maps from
        Slurm's variables)."""
        return cls(layout=layout, rank=int(environ["RANK"]), world=int(environ["WORLD_SIZE"]),
                   local_rank=int(environ.get("LOCAL_RANK", 0)))

    @property
    def dp_rank(self) -> int:
        return self.coords["dp"]

    @property
    def tp_rank(self) -> int:
        return self.coords["tp"]

    @property
    def cp_rank(self) -> int:
        return self.coords["cp"]

    @property
    def stage(self) -> int:
        return self.coords["pp"]

    @property
    def is_first(self) -> bool:
        """Rank 0: the one that writes the job's shared records."""
        return self.rank == 0

    def start(self, timeout_s: float, backend: str | None = None) -> "RankContext":
        """torch.distributed's world group (model/distributed.py), once. On GPUs the rank's device
        is set first (DeepSpeed sets the same one later, in its engine): the collectives that run
        before the engine exists (the checkpoint store's) need it under NCCL."""
        import torch
        import torch.distributed as dist

        from .distributed import init_distributed

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            init_distributed(backend=backend, timeout_s=timeout_s)
        return self

    def plain_groups(self):
        """The TP and DP groups of a pp = 1 layout, created on first use (collective: every rank
        calls it at the same point)."""
        if self.groups is None:
            from .parallel_groups import ParallelGroups

            self.groups = ParallelGroups(self.layout)
        return self.groups
