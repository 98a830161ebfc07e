"""The DeepSpeed engine of a run: process groups, the model, deepspeed.initialize. Training ranks and
`llmlaunch validate` build it here, the same way.

The model is model/'s LMPipeline (a DeepSpeed PipelineModule at any pp), so the engine is DeepSpeed's
PipelineEngine: one `train_batch` call runs a whole optimizer step (grad_accum micro-batches through
1F1B, the gradient reduction, the optimizer).
"""
from __future__ import annotations

from dataclasses import dataclass
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
    """deepspeed's PipelineEngine."""
    precision: str
    """'bf16' or 'fp32', auto resolved."""
    dtype: Any
    """torch.bfloat16 or torch.float32: the weights' and activations' dtype."""
    spec: ModelSpec
    layout: Layout

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel replica."""
        return self.engine.grid.get_data_parallel_id()

    @property
    def stage(self) -> int:
        return self.engine.stage_id

    @property
    def device(self):
        return self.engine.device

    def train_step(self, batches: Iterator) -> float:
        """One optimizer step over grad_accum micro-batches from `batches`; returns the mean loss."""
        return float(self.engine.train_batch(data_iter=batches))

    @property
    def lr(self) -> float:
        """The learning rate the next step applies."""
        return self.engine.optimizer.param_groups[0]["lr"]


def build_engine(config: RunConfig) -> RunEngine:
    """Process groups (every group with the run's collective timeout), the model at the run's
    layout and precision (seeded, or from checkpoint.init_hf), and the DeepSpeed engine with the
    config derived from run.yaml. Needs RANK/WORLD_SIZE/MASTER_* in the environment (entry.py)."""
    import deepspeed
    import torch

    from llmlaunch.model import build_pipeline_model, init_distributed

    layout = config.layout_obj()
    spec = config.model_spec()
    init_distributed(timeout_s=config.train.collective_timeout_s)
    start_heartbeat()   # from here a failed collective names the ranks that stopped answering
    precision = run_precision(config, torch.cuda.is_available())
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)
    model = build_pipeline_model(spec, pp=layout.pp, tp=layout.tp, dp=layout.dp,
                                 recompute=layout.recompute, seed=config.train.seed, dtype=dtype,
                                 hf_dir=config.checkpoint.init_hf or None)
    check_build_locks()
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(config, precision, on_gpu=torch.cuda.is_available()),
        lr_scheduler=lr_scheduler_factory(config.train))
    return RunEngine(engine=engine, precision=precision, dtype=dtype, spec=spec, layout=layout)
