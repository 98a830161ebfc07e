"""A 3D-parallel layout and the rank-to-group math of DeepSpeed's pipeline topology."""
from __future__ import annotations

from dataclasses import asdict, dataclass

RECOMPUTE_MODES = ("none", "selective", "full")
ZERO_STAGES = (0, 1, 2, 3)
# What DeepSpeed's PipelineEngine accepts (see Layout.runnable); ZeRO-2/3 are estimates only.
RUNNABLE_ZERO_STAGES = (0, 1)


@dataclass(frozen=True)
class Layout:
    """How world_size = dp * pp * tp GPUs split one training step. Validated once, on construction."""

    dp: int
    """Data-parallel degree: model replicas, each seeing 1/dp of the global batch."""
    pp: int
    """Pipeline-parallel degree: stages, each holding a contiguous slice of the blocks."""
    tp: int
    """Tensor-parallel degree: ranks splitting every weight matrix (Megatron-style)."""
    micro_batch: int = 1
    """Sequences per micro-batch on one pipeline (b)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on one replica (m, also the pipeline's micro-batch count)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage: 1 shards optimizer states over dp, 2 also gradients, 3 also weights."""
    recompute: str = "none"
    """Activation recomputation: none, selective (attention core), full (whole block)."""
    sequence_parallel: bool = False
    """Megatron-LM sequence parallelism (Korthikanti et al. 2022): norms and dropout run on s/t
    of the sequence per TP rank. Estimator only: llmlaunch's model does not implement it."""
    virtual_stages: int = 1
    """Model chunks per pipeline rank in Megatron-LM's interleaved 1F1B schedule (v; 1 = plain
    1F1B). Estimator only: DeepSpeed's pipeline engine runs plain 1F1B."""

    def __post_init__(self):
        for field in ("dp", "pp", "tp", "micro_batch", "grad_accum"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"layout {field} must be a positive integer, got {value!r}")
        if self.zero_stage not in ZERO_STAGES:
            raise ValueError(f"layout zero_stage must be one of 0, 1, 2, 3, got {self.zero_stage!r}")
        if isinstance(self.virtual_stages, bool) or not isinstance(self.virtual_stages, int) \
                or self.virtual_stages < 1:
            raise ValueError(f"layout virtual_stages must be a positive integer, got {self.virtual_stages!r}")
        if self.virtual_stages > 1 and self.pp == 1:
            raise ValueError("an interleaved schedule (virtual_stages > 1) needs a pipeline (pp > 1)")
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"layout recompute must be one of {', '.join(RECOMPUTE_MODES)}, "
                             f"got {self.recompute!r}")

    @property
    def runnable(self) -> bool:
        """Whether llmlaunch's model on DeepSpeed can run it: no SP, no interleaving, and ZeRO 0 or 1
        (llmlaunch's model is a PipelineModule even at pp = 1, and DeepSpeed's PipelineEngine, which
        runs every PipelineModule, asserts ZeRO < 2)."""
        return (not self.sequence_parallel and self.virtual_stages == 1
                and self.zero_stage in RUNNABLE_ZERO_STAGES)

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: micro_batch * grad_accum * dp (DeepSpeed's train_batch_size)."""
        return self.micro_batch * self.grad_accum * self.dp

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def dp_enabled(self) -> bool:
        return self.dp > 1

    def check_world_size(self, world_size: int) -> None:
        if self.world_size != world_size:
            raise ValueError(f"dp*pp*tp = {self.dp}*{self.pp}*{self.tp} = {self.world_size} "
                             f"!= world size {world_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def rank_coords(rank: int, dp: int, pp: int, tp: int) -> tuple[int, int, int]:
    """(pipe, data, tensor) coordinates of a global rank, in the order of DeepSpeed's
    PipeModelDataParallelTopology (axes pipe, data, model; model fastest):
    rank = (pipe * dp + data) * tp + tensor.
    """
    if not 0 <= rank < dp * pp * tp:
        raise ValueError(f"rank {rank} outside world size {dp * pp * tp}")
    tensor = rank % tp
    data = (rank // tp) % dp
    pipe = rank // (tp * dp)
    return pipe, data, tensor


def parallel_groups(dp: int, pp: int, tp: int) -> dict[str, list[list[int]]]:
    """The global ranks of every TP, PP and DP group.

    Ranks are laid out tensor-fastest, then data, then pipe, as DeepSpeed's
    PipeModelDataParallelTopology does, so a TP group is tp consecutive ranks and stays inside a
    node whenever tp divides gpus_per_node. Worked example, 16 GPUs as dp=2, pp=2, tp=4 on two
    nodes of 8:

        tp groups: [0,1,2,3] [4,5,6,7] [8,9,10,11] [12,13,14,15]    (4 consecutive ranks)
        dp groups: [0,4] [1,5] [2,6] [3,7] [8,12] [9,13] [10,14] [11,15]   (stride tp)
        pp groups: [0,8] [1,9] [2,10] [3,11] [4,12] [5,13] [6,14] [7,15]   (stride tp*dp)

    Node 0 holds stage 0 (ranks 0-7), node 1 stage 1: pipeline sends cross the network, TP
    all-reduces never do.
    """
    world = dp * pp * tp
    tp_groups = [list(range(start, start + tp)) for start in range(0, world, tp)]
    dp_groups = [[(p * dp + d) * tp + t for d in range(dp)] for p in range(pp) for t in range(tp)]
    pp_groups = [[(p * dp + d) * tp + t for p in range(pp)] for d in range(dp) for t in range(tp)]
    return {"tp": tp_groups, "pp": pp_groups, "dp": dp_groups}


def node_of(rank: int, gpus_per_node: int) -> int:
    return rank // gpus_per_node


def group_spans_nodes(group: list[int], gpus_per_node: int) -> bool:
    return node_of(min(group), gpus_per_node) != node_of(max(group), gpus_per_node)


def axis_spans_nodes(axis: str, dp: int, pp: int, tp: int, gpus_per_node: int) -> bool:
    """Whether any group of one axis ('tp', 'pp', 'dp') crosses a node boundary.

    A group is the ranks start + k*stride (k < size) inside an aligned block of stride*size ranks.
    When the node size is a multiple of the block, blocks are node-aligned: no group crosses. When
    the block is a multiple of the node size (and size > 1), every group crosses. Otherwise (odd
    node sizes) the groups are listed and checked one by one.
    """
    stride = {"tp": 1, "dp": tp, "pp": tp * dp}[axis]
    size = {"tp": tp, "dp": dp, "pp": pp}[axis]
    block = stride * size
    if size == 1 or gpus_per_node % block == 0:
        return False
    if block % gpus_per_node == 0:
        return True
    return any(group_spans_nodes(g, gpus_per_node) for g in parallel_groups(dp, pp, tp)[axis])
