"""Published training runs (data/published_runs.yaml) evaluated with their layout pinned."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from .hardware import gpu
from .layout import Layout
from .model_spec import ModelSpec
from .plan_inputs import estimate_layout, layout_inputs
from .planner import Candidate

_RUNS = Path(__file__).parent / "data" / "published_runs.yaml"
# The runs trained with Megatron-LM's (or Megatron-DeepSpeed's) mixed precision and fused norm
# kernels, and their papers count memory that way: see memory.PRECISIONS.
PUBLISHED_PRECISION = "bf16-megatron"


@functools.lru_cache(maxsize=1)
def load_runs() -> list[dict]:
    with open(_RUNS) as f:
        return yaml.safe_load(f)


def evaluate_run(run: dict) -> Candidate:
    """The planner's estimate for one published run, exactly as published (layout pinned), through
    the same adapter as a training run's prediction (plan_inputs.layout_inputs)."""
    spec = ModelSpec(name=run["name"], **run["model"])
    device = gpu(run["gpu"], **run.get("gpu_overrides", {}))
    lay = run["layout"]
    grad_accum = run["global_batch"] // (lay["dp"] * lay["micro_batch"])
    layout = Layout(grad_accum=grad_accum, **lay)
    if layout.global_batch != run["global_batch"] or layout.world_size != run["gpus"]:
        raise ValueError(f"published run {run['name']!r}: {layout.product} GPUs and micro-batch "
                         f"{layout.micro_batch} do not give its {run['gpus']} GPUs and global batch "
                         f"{run['global_batch']}")
    inputs = layout_inputs(spec, layout, gpu=device, gpus_per_node=run.get("gpus_per_node", 8),
                           precision=PUBLISHED_PRECISION,
                           flash_attention=run.get("flash_attention", True))
    return estimate_layout(inputs, layout)
