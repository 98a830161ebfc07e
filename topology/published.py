"""Published training runs (data/published_runs.yaml) evaluated with their layout pinned."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from .hardware import Cluster, gpu
from .layout import Layout
from .model_spec import ModelSpec
from .planner import Candidate, PlanOptions, evaluate

_RUNS = Path(__file__).parent / "data" / "published_runs.yaml"
# The runs trained with Megatron-LM's (or Megatron-DeepSpeed's) mixed precision and fused norm
# kernels, and their papers count memory that way: see memory.PRECISIONS.
PUBLISHED_PRECISION = "bf16-megatron"


@functools.lru_cache(maxsize=1)
def load_runs() -> list[dict]:
    with open(_RUNS) as f:
        return yaml.safe_load(f)


def evaluate_run(run: dict) -> Candidate:
    """The planner's estimate for one published run, exactly as published (layout pinned)."""
    spec = ModelSpec(name=run["name"], **run["model"])
    device = gpu(run["gpu"], **run.get("gpu_overrides", {}))
    cluster = Cluster(gpus=run["gpus"], gpus_per_node=run.get("gpus_per_node", 8), gpu=device)
    lay = run["layout"]
    grad_accum = run["global_batch"] // (lay["dp"] * lay["micro_batch"])
    layout = Layout(grad_accum=grad_accum, **lay)
    options = PlanOptions(global_batch=run["global_batch"], seq_len=spec.seq_len,
                          precision=PUBLISHED_PRECISION,
                          flash_attention=run.get("flash_attention", True))
    return evaluate(spec, cluster, layout, options)
