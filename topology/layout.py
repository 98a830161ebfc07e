"""A 3D-parallel layout, validated once, and the rank-to-group maths every caller shares.

`Layout` is the one description of how a job splits: the planner searches Layouts, run.yaml holds
one, the model builds its process groups from one, the dry-run report and the rank map draw one.
Its checks (world size, what tp and pp must divide) and its rank maths live here only.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

from .model_spec import ModelSpec

RECOMPUTE_MODES = ("none", "selective", "full")
ZERO_STAGES = (0, 1, 2, 3)
# What DeepSpeed's PipelineEngine accepts (pp > 1); at pp = 1 the plain engine runs every stage.
PIPELINE_ZERO_STAGES = (0, 1)
RUNNABLE_ZERO_STAGES = PIPELINE_ZERO_STAGES  # name kept for callers of 0.1
# ZeRO-Offload (DeepSpeed's offload_optimizer / offload_param to CPU memory): what leaves the GPU.
OFFLOAD_MODES = ("none", "optimizer", "optimizer+params")
# Rank order, fastest-varying axis first, as Megatron-Core's RankGenerator lays ranks out (its
# default order "tp-cp-ep-dp-pp", megatron/core/parallel_state.py, Megatron-Core 0.20): rank =
# ((pp_coord * dp + dp_coord) * cp + cp_coord) * tp + tp_coord. With cp = 1 this is DeepSpeed's
# PipeModelDataParallelTopology (axes pipe, data, model with the last fastest): every rank map of a
# layout without context parallelism is what it was. A TP group is tp consecutive ranks, so it
# stays inside a node when tp divides it; a CP group strides tp.
AXES = ("tp", "cp", "dp", "pp")
AXIS_NAMES = {"tp": "tensor", "cp": "context", "dp": "data", "pp": "pipeline", "ep": "expert",
              "edp": "expert-data"}
# Context parallelism's two forms (topology/context_parallel.py): "allgather" (each rank all-gathers
# K and V for its load-balanced query chunks: Llama 3, Section 3.3.2) and "alltoall" (DeepSpeed-
# Ulysses: all-to-alls trade the sequence split for a head split around attention).
CP_KINDS = ("allgather", "alltoall")
# Expert parallelism splits the data-parallel axis in two, ep fastest: consecutive data-parallel
# ranks form an expert-parallel group (the E experts split over them), and the ranks holding the
# same experts form an expert-data-parallel group of dp/ep (Megatron-LM core's RankGenerator order
# "tp-ep-dp-pp" for experts; DeepSpeed-MoE's _create_expert_and_data_parallel). The same generic
# rank_groups computes both: rank = (((pp_coord * dp/ep + edp_coord) * ep + ep_coord) * cp + cp_coord)
# * tp + tp_coord.
EXPERT_AXES = ("tp", "cp", "ep", "edp", "pp")


def rank_groups(sizes: Sequence[int], grouped: Sequence[bool]) -> list[list[int]]:
    """The process groups of a mixed-radix rank layout (one generic function for every axis, as
    Megatron-LM's RankGenerator builds its groups from an axis order).

    `sizes` are the axis sizes, fastest-varying first, so a rank's coordinate on axis i is
    (rank // prod(sizes[:i])) % sizes[i]. A group is the ranks that differ only on the axes with
    `grouped[i]` set; groups are listed in the mixed-radix order of the other axes (fastest
    first), members in the order of the grouped axes.

    Worked example, 16 GPUs as tp=4, dp=2, pp=2 (sizes [4, 2, 2], strides 1, 4, 8):

        grouped tp:      [0,1,2,3] [4,5,6,7] [8,9,10,11] [12,13,14,15]
        grouped dp:      [0,4] [1,5] [2,6] [3,7] [8,12] [9,13] [10,14] [11,15]
        grouped pp:      [0,8] [1,9] [2,10] [3,11] [4,12] [5,13] [6,14] [7,15]
        grouped tp, dp:  [0..7] [8..15]   (a pipeline stage: DeepSpeed's model-parallel slice x dp)

    On two nodes of 8, node 0 holds stage 0: pipeline sends cross the network, TP all-reduces never.
    """
    if len(sizes) != len(grouped):
        raise ValueError(f"{len(sizes)} axis sizes but {len(grouped)} grouped flags")
    if any(size < 1 for size in sizes):
        raise ValueError(f"axis sizes must be positive, got {list(sizes)}")
    strides = [math.prod(sizes[:i]) for i in range(len(sizes))]
    inner = [i for i, g in enumerate(grouped) if g]
    outer = [i for i, g in enumerate(grouped) if not g]

    def offsets(axes: list[int]) -> list[int]:
        # itertools.product varies its last argument fastest: pass the axes slowest first
        ranges = [range(sizes[i]) for i in reversed(axes)]
        return [sum(c * strides[i] for c, i in zip(combo, reversed(axes)))
                for combo in itertools.product(*ranges)]

    members = offsets(inner)
    return [[base + m for m in members] for base in offsets(outer)]


@dataclass(frozen=True)
class Layout:
    """How world_size = dp * pp * tp * cp GPUs split one training step. Validated once, on
    construction.
    Expert parallelism (ep) is no fourth factor of the world size: it splits each data-parallel
    group into dp/ep groups of ep ranks that share out a Mixture-of-Experts layer's experts."""

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
    """Megatron-LM sequence parallelism (Korthikanti et al. 2022): norms, dropout and the residual run
    on s/t of the sequence per TP rank (model/tp.py); nothing changes at tp = 1."""
    virtual_stages: int = 1
    """Model chunks per pipeline rank in Megatron-LM's interleaved 1F1B schedule (v; 1 = plain
    1F1B). Estimator only: DeepSpeed's pipeline engine runs plain 1F1B."""
    offload: str = "none"
    """ZeRO-Offload to CPU memory: 'optimizer' (optimizer states and their fp32 master, ZeRO >= 1)
    or 'optimizer+params' (also the weights' partitions, ZeRO-3)."""
    ep: int = 1
    """Expert-parallel degree (Mixture-of-Experts only): consecutive data-parallel ranks that split
    the E experts of every MoE layer, E/ep each; divides dp (and E: model_reasons). 1: every rank
    holds every expert."""
    cp: int = 1
    """Context-parallel degree: ranks splitting every sequence into cp parts (2 cp load-balanced
    causal chunks); topology/context_parallel.py, model/context_parallel.py."""
    cp_kind: str = "allgather"
    """How the cp ranks exchange what attention needs (CP_KINDS); meaningless at cp = 1."""

    def __post_init__(self):
        for field in ("dp", "pp", "tp", "micro_batch", "grad_accum", "virtual_stages", "ep", "cp"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"layout {field} must be a positive integer, got {value!r}")
        if self.zero_stage not in ZERO_STAGES:
            raise ValueError(f"layout zero_stage must be one of 0, 1, 2, 3, got {self.zero_stage!r}")
        if self.dp % self.ep:
            fits = ", ".join(str(d) for d in range(1, self.dp + 1) if self.dp % d == 0)
            raise ValueError(f"layout ep={self.ep} does not divide dp={self.dp} (expert-parallel "
                             f"groups are sub-groups of a data-parallel group); ep can be {fits}")
        if self.virtual_stages > 1 and self.pp == 1:
            raise ValueError("an interleaved schedule (virtual_stages > 1) needs a pipeline (pp > 1)")
        if self.cp_kind not in CP_KINDS:
            raise ValueError(f"layout cp_kind must be one of {', '.join(CP_KINDS)}, got "
                             f"{self.cp_kind!r}")
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"layout recompute must be one of {', '.join(RECOMPUTE_MODES)}, "
                             f"got {self.recompute!r}")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"layout offload must be one of {', '.join(OFFLOAD_MODES)}, "
                             f"got {self.offload!r}")
        if self.offload != "none" and self.zero_stage == 0:
            raise ValueError("offload needs ZeRO (stage 1-3): DeepSpeed offloads the optimizer "
                             "partitions ZeRO keeps")
        if self.offload == "optimizer+params" and self.zero_stage != 3:
            raise ValueError(f"offloading parameters needs ZeRO-3 (they are partitioned only "
                             f"there), got zero_stage {self.zero_stage}")

    # ------------------------------------------------------------------------------------------
    # sizes and what DeepSpeed runs

    @property
    def engine(self) -> str:
        """The DeepSpeed engine that runs it: 'pipeline' (PipelineEngine over the PipelineModule,
        pp > 1) or 'plain' (DeepSpeedEngine over one module, pp = 1)."""
        return "pipeline" if self.pp > 1 else "plain"

    def not_runnable_reason(self) -> str | None:
        """Why llmlaunch's model on DeepSpeed cannot run it (None: it can). What DeepSpeed itself
        refuses comes first (ZeRO-2/3 or offload under a pipeline), then what only llmlaunch's model
        lacks (interleaving)."""
        if self.pp > 1 and (self.zero_stage not in PIPELINE_ZERO_STAGES or self.offload != "none"):
            return self.pipeline_zero_reason()
        if self.ep > 1 and (self.zero_stage == 3 or self.offload != "none"):
            what = "ZeRO-3" if self.zero_stage == 3 else f"offload {self.offload}"
            return (f"{what} with expert parallelism (ep={self.ep}): DeepSpeed partitions weights "
                    "over expert-data-parallel groups only for its own AutoEP layers, and its "
                    "offload is not run with expert groups here; use ZeRO 0-2 without offload, or "
                    "ep=1")
        if self.ep > 1 and (self.cp > 1 or self.sequence_parallel):
            return (f"expert parallelism (ep={self.ep}) with context or sequence parallelism is an "
                    "estimate: llmlaunch's model runs experts at cp = 1 without sequence "
                    "parallelism; pin cp=1 and sequence_parallel false, or ep=1")
        if self.virtual_stages > 1:
            return ("interleaved pipelines (virtual_stages > 1) are estimates only: DeepSpeed's "
                    "pipeline engine runs plain 1F1B; use virtual_stages 1")
        return None

    def pipeline_zero_reason(self) -> str:
        """Why DeepSpeed's pipeline engine refuses this ZeRO stage or offload (pp > 1)."""
        what = (f"ZeRO-{self.zero_stage}" if self.zero_stage not in PIPELINE_ZERO_STAGES
                else f"offload {self.offload}")
        return (f"{what} with a pipeline (pp={self.pp}): DeepSpeed's pipeline engine runs ZeRO "
                f"0 and 1 without offload; pin pp=1 (dp*tp = {self.world_size}, the plain "
                "engine runs every ZeRO stage and offload) or zero_stage 1")

    @property
    def runnable(self) -> bool:
        """Whether llmlaunch's model on DeepSpeed can run it (not_runnable_reason is None): at
        pp = 1 the plain engine runs ZeRO 0-3 and offload; a pipeline runs ZeRO 0 and 1."""
        return self.not_runnable_reason() is None

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp * self.cp

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: micro_batch * grad_accum * dp (DeepSpeed's train_batch_size)."""
        return self.micro_batch * self.grad_accum * self.dp

    def size(self, axis: str) -> int:
        """The degree of one axis ('tp', 'cp', 'dp' or 'pp'; or of the expert split of dp: 'ep',
        and 'edp' = dp/ep, the ranks holding the same experts)."""
        if axis == "edp":
            return self.dp // self.ep
        if axis not in AXES and axis != "ep":
            raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(AXES)}, ep, edp")
        return getattr(self, axis)

    def describe(self) -> str:
        """'dp=2 pp=2 tp=1' (and ' cp=2', ' ep=2' when sequences or experts are split): the
        degrees, as messages name them."""
        return (f"dp={self.dp} pp={self.pp} tp={self.tp}" + (f" cp={self.cp}" if self.cp > 1 else "")
                + (f" ep={self.ep}" if self.ep > 1 else ""))

    @property
    def product(self) -> str:
        """'dp*pp*tp = 2*2*1 = 4' ('dp*pp*tp*cp = ...' with context parallelism): the world size
        with its factors, as errors print it."""
        if self.cp > 1:
            return (f"dp*pp*tp*cp = {self.dp}*{self.pp}*{self.tp}*{self.cp} = {self.world_size}")
        return f"dp*pp*tp = {self.dp}*{self.pp}*{self.tp} = {self.world_size}"

    # ------------------------------------------------------------------------------------------
    # checks: every caller uses these instead of re-checking

    def check_world_size(self, world_size: int) -> None:
        """Raise ValueError unless dp * pp * tp equals the job's ranks (it prints the product)."""
        if self.world_size != world_size:
            raise ValueError(f"layout {self.product} but the job has {world_size} ranks")

    def model_reasons(self, spec: ModelSpec) -> list[str]:
        """Why this layout cannot split `spec` (empty when it can): tp must divide the query heads,
        the KV heads and the MLP width (each rank holds whole heads and an equal MLP slice), and
        every pipeline stage needs at least one block. (An MoE model's expert widths: expert_reasons;
        its ffn_hidden only where dense layers use it.)"""
        reasons = []
        checks = [("heads", spec.heads)]
        if not spec.moe or spec.dense_layers:
            checks.append(("ffn_hidden", spec.ffn_hidden))
        if spec.kv_heads != spec.heads:  # with multi-head attention the heads' check says it
            checks.insert(1, ("kv_heads", spec.kv_heads))
        for what, value in checks:
            if value % self.tp:
                reasons.append(f"tp={self.tp} does not divide {what}={value}")
        if self.pp > spec.layers:
            reasons.append(f"pp={self.pp} exceeds the {spec.layers} layers (every stage needs one)")
        return reasons + self.context_reasons(spec) + self.expert_reasons(spec)

    def context_reasons(self, spec: ModelSpec) -> list[str]:
        """Why the sequence split does not fit `spec`: each of the cp ranks holds two of 2 cp equal
        chunks (load-balanced causal attention: Megatron-Core and Llama 3 both split the sequence
        so), so 2 cp must divide the sequence; the all-to-all form splits the heads instead around
        attention, so cp must divide the query and KV heads each TP rank holds (DeepSpeed-Ulysses);
        sequence parallelism splits each rank's s/cp tokens over the tp ranks."""
        reasons = []
        local = spec.seq_len // self.cp
        if self.cp > 1 and spec.seq_len % (2 * self.cp):
            reasons.append(f"cp={self.cp} needs the sequence ({spec.seq_len}) divisible by 2*cp = "
                           f"{2 * self.cp} (two load-balanced chunks per rank)")
        elif self.sequence_parallel and self.tp > 1 and local % self.tp:
            per = f"the {local} tokens per cp rank" if self.cp > 1 else f"the sequence ({local})"
            reasons.append(f"sequence parallelism with tp={self.tp} needs {per} divisible by tp")
        if self.cp > 1 and self.cp_kind == "alltoall":
            for what, value in (("KV heads", spec.kv_heads), ("heads", spec.heads)):
                if value % self.tp == 0 and (value // self.tp) % self.cp:
                    per_rank = value // self.tp
                    fits = ", ".join(str(c) for c in range(1, per_rank + 1) if per_rank % c == 0)
                    reasons.append(f"cp={self.cp} does not divide the {per_rank} {what} per tp rank; "
                                   f"use cp_kind allgather or cp in {fits}")
                    break
        return reasons

    def expert_reasons(self, spec: ModelSpec) -> list[str]:
        """Why the expert split does not fit `spec`: ep > 1 needs an MoE model and must divide its
        E experts (each rank holds E/ep whole experts); tp splits every expert's MLP (and the
        shared expert's) like a dense one, so it must divide their widths."""
        if not spec.moe:
            return ([] if self.ep == 1 else
                    [f"ep={self.ep} needs a Mixture-of-Experts model ({spec.name or spec.arch} is "
                     "dense); use ep=1"])
        reasons = []
        if spec.experts % self.ep:
            fits = ", ".join(str(d) for d in range(1, spec.experts + 1)
                             if self.dp % d == 0 and spec.experts % d == 0)
            reasons.append(f"ep={self.ep} does not divide experts={spec.experts}; with "
                           f"dp={self.dp} ep can be {fits}")
        for what, value in (("expert_ffn_hidden", spec.expert_ffn_hidden),
                            ("shared_expert_ffn_hidden", spec.shared_expert_ffn_hidden)):
            if value % self.tp and not (spec.dense_layers and value == spec.ffn_hidden):
                reasons.append(f"tp={self.tp} does not divide {what}={value}")
        return reasons

    def check_model(self, spec: ModelSpec) -> None:
        """Raise ValueError with model_reasons when the layout cannot split `spec`."""
        reasons = self.model_reasons(spec)
        if reasons:
            raise ValueError("; ".join(reasons))

    # ------------------------------------------------------------------------------------------
    # rank maths (AXES order; rank_groups does the work)

    def sizes(self) -> tuple[int, ...]:
        """Axis sizes in AXES order (fastest first)."""
        return tuple(self.size(axis) for axis in AXES)

    def coords(self, rank: int) -> dict[str, int]:
        """{'tp': t, 'cp': c, 'dp': d, 'pp': p} of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world size {self.world_size}")
        out, rest = {}, rank
        for axis in AXES:
            rest, out[axis] = divmod(rest, self.size(axis))
        return out

    def expert_coords(self, rank: int) -> dict[str, int]:
        """{'ep': e, 'edp': r} of a global rank: its place in its expert-parallel group (which E/ep
        experts it holds) and in its expert-data-parallel group (EXPERT_AXES: ep is the fastest
        part of the data-parallel coordinate, dp = edp * ep + e)."""
        return dict(zip(("edp", "ep"), divmod(self.coords(rank)["dp"], self.ep)))

    def rank_of(self, *, tp: int = 0, dp: int = 0, pp: int = 0, cp: int = 0) -> int:
        """The global rank at these coordinates."""
        coords = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
        rank, stride = 0, 1
        for axis in AXES:
            if not 0 <= coords[axis] < self.size(axis):
                raise ValueError(f"{axis} coordinate {coords[axis]} outside 0..{self.size(axis) - 1}")
            rank += coords[axis] * stride
            stride *= self.size(axis)
        return rank

    def groups(self, *axes: str) -> list[list[int]]:
        """The groups of ranks that differ only along `axes` (one axis: its TP/CP/DP/PP groups;
        'ep': the expert-parallel groups, 'edp': the expert-data-parallel ones, over EXPERT_AXES)."""
        order = EXPERT_AXES if {"ep", "edp"} & set(axes) else AXES
        unknown = set(axes) - set(order)
        if unknown or not axes:
            raise ValueError(f"axes must be some of {', '.join(AXES)} or of {', '.join(EXPERT_AXES)}, "
                             f"got {axes!r}")
        return rank_groups([self.size(axis) for axis in order], [axis in axes for axis in order])

    def group_index(self, rank: int, axis: str) -> int:
        """Which of groups(axis) holds `rank` (their mixed-radix index over the other axes)."""
        coords = self.coords(rank)
        index, stride = 0, 1
        for other in AXES:
            if other != axis:
                index += coords[other] * stride
                stride *= self.size(other)
        return index

    def group_span(self, rank: int, axis: str) -> tuple[int, int]:
        """The first and last rank of the `axis` group that holds `rank` (any axis of size())."""
        stride = self.stride(axis)
        first = rank - (rank // stride) % self.size(axis) * stride
        return first, first + (self.size(axis) - 1) * stride

    def strides(self) -> dict[str, int]:
        """Rank distance between neighbours along each axis."""
        out, stride = {}, 1
        for axis in AXES:
            out[axis] = stride
            stride *= self.size(axis)
        return out

    def stride(self, axis: str) -> int:
        """Rank distance between neighbours along one axis of AXES or EXPERT_AXES (cp: tp,
        ep: tp * cp, edp: tp * cp * ep)."""
        order = EXPERT_AXES if axis in ("ep", "edp") else AXES
        if axis not in order:
            raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(AXES)}, ep, edp")
        return math.prod(self.size(a) for a in order[:order.index(axis)])

    def spans_nodes(self, axis: str, gpus_per_node: int) -> bool:
        """Whether any group of `axis` crosses a node boundary (nodes hold consecutive ranks).

        A group is start + k * stride (k < size) inside an aligned block of stride * size ranks.
        When the node size is a multiple of the block, no group crosses; when the block is a
        multiple of the node size (and size > 1), every group does; otherwise (odd node sizes) the
        groups are listed and checked one by one."""
        size, stride = self.size(axis), self.stride(axis)
        block = stride * size
        if size == 1 or gpus_per_node % block == 0:
            return False
        if block % gpus_per_node == 0:
            return True
        return any(min(g) // gpus_per_node != max(g) // gpus_per_node for g in self.groups(axis))

    def to_dict(self) -> dict:
        return asdict(self)
