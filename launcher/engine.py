"""The DeepSpeed engine of a run: process groups, the model, deepspeed.initialize. Training ranks and
`llmlaunch validate` build it here, the same way. Two engines (Layout.engine):

- pipeline (pp > 1): model/'s LMPipeline, a DeepSpeed PipelineModule, under the PipelineEngine: one
  `train_batch` call runs a whole optimizer step (grad_accum micro-batches through 1F1B, the
  gradient reduction, the optimizer). ZeRO 0 and 1.
- plain (pp = 1): model/dense.DenseLM, one module, tensor-parallel over groups of our own
  (model/parallel_groups.py, handed to DeepSpeed as its mpu), under DeepSpeed's plain engine: per
  micro-batch engine(inputs, labels), engine.backward, engine.step, the engine accumulating and
  stepping the optimizer at the boundary. ZeRO 0-3 and offload.

A run resuming a checkpoint the other engine wrote at its own layout keeps that engine (0.1's pp = 1
checkpoints are pipeline ones): DeepSpeed's files are engine-specific.
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
from .entry import start_heartbeat
from .lr_schedule import lr_scheduler_factory


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

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel replica."""
        if self.kind == "plain":
            return self.groups.get_data_parallel_rank()
        return self.engine.grid.get_data_parallel_id()

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

        losses = []
        for _ in range(self.engine.gradient_accumulation_steps()):
            inputs, labels = next(batches)
            loss = self.engine(inputs.to(self.engine.device), labels.to(self.engine.device))
            self.engine.backward(loss)
            self.engine.step()   # the optimizer steps at the accumulation boundary only
            losses.append(loss.detach().float())
        mean = torch.stack(losses).mean()
        if self.layout.dp > 1:
            dist.all_reduce(mean, group=self.groups.get_data_parallel_group())
            mean /= self.layout.dp
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


def build_engine(config: RunConfig, kind: str | None = None) -> RunEngine:
    """Process groups (every group with the run's collective timeout), the model at the run's
    layout and precision (seeded, or from checkpoint.init_hf), and the DeepSpeed engine with the
    config derived from run.yaml. `kind` ('pipeline' or 'plain') overrides the layout's engine: a
    pp = 1 run resuming a pipeline checkpoint. Needs RANK/WORLD_SIZE/MASTER_* in the environment
    (entry.py)."""
    import deepspeed
    import torch

    from llmlaunch.model import build_pipeline_model, init_distributed

    layout = config.layout_obj()
    spec = config.model_spec()
    kind = kind or layout.engine
    if kind == "pipeline" and not layout.zero_stage <= 1:
        raise ValueError(f"the pipeline engine runs ZeRO 0 and 1, not {layout.zero_stage}")
    init_distributed(timeout_s=config.train.collective_timeout_s)
    start_heartbeat()   # from here a failed collective names the ranks that stopped answering
    on_gpu = torch.cuda.is_available()
    precision = run_precision(config, on_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)
    hf_dir = config.checkpoint.init_hf or None
    groups = None
    if kind == "pipeline":
        model = build_pipeline_model(spec, pp=layout.pp, tp=layout.tp, dp=layout.dp,
                                     recompute=layout.recompute, seed=config.train.seed,
                                     dtype=dtype, hf_dir=hf_dir)
    else:
        from llmlaunch.model.dense import build_dense_model
        from llmlaunch.model.parallel_groups import ParallelGroups

        groups = ParallelGroups(layout)
        model = build_dense_model(spec, groups, recompute=layout.recompute,
                                  seed=config.train.seed, dtype=dtype, hf_dir=hf_dir)
        if layout.zero_stage == 3:
            model.register_zero3_external_parameters()
    check_build_locks()
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(config, precision, on_gpu=on_gpu),
        lr_scheduler=lr_scheduler_factory(config.train), mpu=groups)
    run = RunEngine(engine=engine, precision=precision, dtype=dtype, spec=spec, layout=layout,
                    kind=kind, groups=groups)
    if layout.zero_stage == 0 and precision == "fp32" and config.train.grad_clip > 0:
        record_fp32_clip_norms(run)
    return run


def record_fp32_clip_norms(run: RunEngine) -> None:
    """Without ZeRO, DeepSpeed's fp32 path clips with runtime/utils.clip_grad_norm_ and drops the
    norm it computed (get_global_grad_norm() stays None): run the very same call and keep it."""
    from deepspeed.runtime.utils import clip_grad_norm_

    engine = run.engine

    def clip_and_record():
        norm = clip_grad_norm_(parameters=engine.module.parameters(),
                               max_norm=engine.gradient_clipping(), mpu=engine.mpu)
        run._clip_norms.append(float(norm))

    engine.clip_fp32_gradients = clip_and_record
