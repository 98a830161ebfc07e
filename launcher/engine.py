"""The DeepSpeed engine of a run: process groups, the model, deepspeed.initialize. Training ranks and
`llmlaunch validate` build it here, the same way. Two engines (Layout.engine):

- pipeline (pp > 1): model/'s LMPipeline, a DeepSpeed PipelineModule, under the PipelineEngine: one
  `train_batch` call runs a whole optimizer step (grad_accum micro-batches through 1F1B, the
  gradient reduction, the optimizer). ZeRO 0 and 1.
- plain (pp = 1): model/dense.DenseLM, one module, tensor-parallel over groups of our own
  (model/parallel_groups.py, handed to DeepSpeed as its mpu), under DeepSpeed's plain engine: per
  micro-batch engine(inputs, labels), engine.backward, engine.step, the engine accumulating and
  stepping the optimizer at the boundary. ZeRO 0-3 and offload.

Both run sequence and context parallelism (Layout.sequence_parallel, Layout.cp; the model does the
work, model/tp.py and model/context_parallel.py). Under context parallelism a rank reads its dp
replica's samples (`dp_rank`) and keeps its chunks of them (`local_batch`); DeepSpeed's
data-parallel group is dp x cp (`replica_rank`, `replicas`: what ZeRO partitions and the checkpoint
store shares out over), so it averages losses and gradients over the whole sequence.

The engine is built for the rank's context (model/rank_context.py: the layout, this rank, its
groups), made once by the trainer; the checkpoint store says which engine a resumed run needs
(checkpoints/store.py: `engine_for`) and which learning-rate schedule it continues.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from llmlaunch.config import RunConfig
from llmlaunch.topology.layout import Layout
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.plan_inputs import resolve_precision

from .build_locks import check_build_locks
from .ds_config import deepspeed_config
from .entry import rank_environment, start_heartbeat
from .lr_schedule import Schedule, lr_scheduler_factory, schedule_of


def rank_context(config: RunConfig):
    """This rank's identity exported (RANK, LOCAL_RANK, WORLD_SIZE: entry.rank_environment) and its
    context (model/rank_context.py), built once: the layout checked against the world size, the
    coordinates, later the groups. The trainer and validate pass it down."""
    import os

    from llmlaunch.model.rank_context import RankContext

    os.environ.update(rank_environment())
    return RankContext.from_environment(config.layout_obj())


def run_precision(config: RunConfig, on_gpu: bool) -> str:
    """train.precision with 'auto' resolved for the hardware the rank runs on (bf16 on a GPU, fp32
    on a CPU)."""
    return resolve_precision(config.train.precision, "bf16" if on_gpu else "fp32")


@dataclass
class RunEngine:
    """A built engine with what the run resolved on the way."""

    engine: Any
    """deepspeed's PipelineEngine or DeepSpeedEngine."""
    precision: str
    """'bf16' or 'fp32', auto resolved."""
    dtype: Any
    """torch.bfloat16 or torch.float32: the weights' and activations' dtype."""
    spec: ModelSpec
    layout: Layout
    kind: str = "pipeline"
    """'pipeline' or 'plain' (module docstring)."""
    groups: Any = None
    """The plain engine's ParallelGroups (its mpu); None for the pipeline engine."""
    schedule: Schedule | None = None
    """The learning-rate schedule the engine's LambdaLR follows."""

    ctx: Any = None
    """The rank's context (model/rank_context.py)."""

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel replica: which 1/dp of every global batch it reads."""
        return self.ctx.coords["dp"]

    @property
    def cp_rank(self) -> int:
        return self.ctx.coords["cp"]

    @property
    def replica_rank(self) -> int:
        """This rank's index in DeepSpeed's data-parallel group (dp x cp: every rank holding the
        same weights; ZeRO's partition index)."""
        if self.kind == "plain":
            return self.groups.get_data_parallel_rank()
        return self.engine.grid.get_data_parallel_id()

    @property
    def replicas(self) -> int:
        """The size of DeepSpeed's data-parallel group, dp x cp."""
        return self.layout.dp * self.layout.cp

    def local_batch(self, batch):
        """(inputs, labels) [b, s] of whole samples -> this rank's context-parallel chunks
        [b, s/cp] of both (model/context_parallel.py); unchanged at cp = 1."""
        from llmlaunch.model.batches import context_parallel_batch

        return context_parallel_batch(batch, self.cp_rank, self.layout.cp)

    @property
    def stage(self) -> int:
        return self.engine.stage_id if self.kind == "pipeline" else 0

    @property
    def device(self):
        return self.engine.device

    def train_step(self, batches: Iterator) -> float:
        """One optimizer step over grad_accum micro-batches from `batches`; returns the mean loss
        over the step's global batch (every rank gets the same value)."""
        if self.kind == "pipeline":
            return float(self.engine.train_batch(data_iter=batches))
        import torch
        import torch.distributed as dist

        losses = self.micro_losses = []   # the guard reads them inside the optimizer's step
        for _ in range(self.engine.gradient_accumulation_steps()):
            inputs, labels = next(batches)
            loss = self.engine(inputs.to(self.engine.device), labels.to(self.engine.device))
            self.engine.backward(loss)
            losses.append(loss.detach().float())
            self.engine.step()   # the optimizer steps at the accumulation boundary only
        mean = torch.stack(losses).mean()
        if self.replicas > 1:    # every rank's loss is the mean over its s/cp tokens
            dist.all_reduce(mean, group=self.groups.get_data_parallel_group())
            mean /= self.replicas
        return float(mean)

    @property
    def grad_norm(self) -> float | None:
        """The global gradient norm of the last step, before clipping (every rank the same)."""
        norm = self.engine.get_global_grad_norm()
        if norm is None and self._clip_norms:
            norm = self._clip_norms[-1]
        return None if norm is None else float(norm)

    _clip_norms: list = field(default_factory=list)

    @property
    def lr(self) -> float:
        """The learning rate the next step applies."""
        return self.engine.optimizer.param_groups[0]["lr"]


def build_engine(config: RunConfig, ctx=None, kind: str | None = None,
                 schedule: Schedule | None = None) -> RunEngine:
    """Process groups (every group with the run's collective timeout), the model at the rank's
    layout and precision (seeded, or from checkpoint.init_hf), and the DeepSpeed engine with the
    config derived from run.yaml. `ctx`: the rank's context (model/rank_context.py; made from the
    environment when not given). `kind` ('pipeline' or 'plain') overrides the layout's engine: a
    pp = 1 run resuming a pipeline checkpoint of llmlaunch 0.1. `schedule`: the learning-rate
    schedule (run.yaml's by default; a resumed run's continued one). Needs RANK/WORLD_SIZE/MASTER_*
    in the environment (entry.py)."""
    import deepspeed
    import torch

    from llmlaunch.model.pipeline import LMPipeline
    from llmlaunch.model.rank_context import RankContext

    from .optimizers import client_optimizer

    ctx = ctx or RankContext.from_environment(config.layout_obj())
    layout = ctx.layout
    spec = config.model_spec()
    kind = kind or layout.engine
    schedule = schedule or schedule_of(config.train)
    if kind == "pipeline" and not layout.zero_stage <= 1:
        raise ValueError(f"the pipeline engine runs ZeRO 0 and 1, not {layout.zero_stage}")
    ctx.start(config.train.collective_timeout_s)
    start_heartbeat()   # from here a failed collective names the ranks that stopped answering
    on_gpu = torch.cuda.is_available()
    precision = run_precision(config, on_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)
    hf_dir = config.checkpoint.init_hf or None
    groups = None
    if kind == "pipeline":
        model = LMPipeline(spec, layout, recompute=layout.recompute, seed=config.train.seed,
                           dtype=dtype, hf_dir=hf_dir)
    else:
        from llmlaunch.model.dense import build_dense_model

        groups = ctx.plain_groups()
        model = build_dense_model(spec, groups, recompute=layout.recompute,
                                  seed=config.train.seed, dtype=dtype, hf_dir=hf_dir)
        if layout.zero_stage == 3:
            model.register_zero3_external_parameters()
    check_build_locks()
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        optimizer=client_optimizer(config.train, model, spec),
        config=deepspeed_config(config, precision, on_gpu=on_gpu, layout=layout),
        lr_scheduler=lr_scheduler_factory(schedule), mpu=groups)
    run = RunEngine(engine=engine, precision=precision, dtype=dtype, spec=spec, layout=layout,
                    kind=kind, groups=groups, schedule=schedule, ctx=ctx)
    if layout.zero_stage == 0 and precision == "fp32" and config.train.grad_clip > 0:
        record_fp32_clip_norms(run)
    return run


def record_fp32_clip_norms(run: RunEngine) -> None:
    """Without ZeRO, DeepSpeed's fp32 path clips with runtime/utils.clip_grad_norm_ and drops the
    norm it computed (get_global_grad_norm() stays None): run the very same call and keep it. With
    expert parallelism that call would average the norm over ranks holding different experts: the
    norm that counts every expert once clips instead (model/expert_groups.py)."""
    from deepspeed.runtime.utils import clip_grad_norm_

    engine = run.engine
    experts = run.layout.ep > 1

    def clip_and_record():
        if experts:
            from llmlaunch.model.expert_groups import clip_grad_norm_with_experts

            norm = clip_grad_norm_with_experts(
                engine.module.parameters(), engine.gradient_clipping(), engine.mpu,
                engine.module.ep_group.process_group())
        else:
            norm = clip_grad_norm_(parameters=engine.module.parameters(),
                                   max_norm=engine.gradient_clipping(), mpu=engine.mpu)
        run._clip_norms.append(float(norm))

    engine.clip_fp32_gradients = clip_and_record
