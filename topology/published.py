"""Published training runs (data/published_runs.yaml) evaluated with their layout pinned."""
from __future__ import annotations

import dataclasses
import functools
import math


from .data_files import load_data_yaml
from .engines import engine
from .flops import hardware_flops_per_token
from .hardware import gpu
from .layout import Layout
from .model_spec import ModelSpec
from .plan_inputs import estimate_layout, layout_inputs
from .planner import Candidate

# The runs trained with Megatron-LM's (or Megatron-DeepSpeed's) mixed precision and fused norm
# kernels, and their papers count memory that way: see memory.PRECISIONS.
PUBLISHED_PRECISION = "bf16-megatron"


@functools.lru_cache(maxsize=2)
def load_runs(modern: bool = False) -> list[dict]:
    """The 2021-22 table (published_runs.yaml) or, modern=True, the table of runs of 2023 and later
    on H100 or newer (modern_runs.yaml)."""
    runs = load_data_yaml("modern_runs.yaml" if modern else "published_runs.yaml")
    for run in runs:
        engine(run["engine"])    # an unknown engine is one clear line, at load
    return runs


def load_modern_runs() -> list[dict]:
    return load_runs(modern=True)


def run_spec(run: dict) -> ModelSpec:
    return ModelSpec(name=run["name"], **run["model"])


def fully_sourced(run: dict) -> bool:
    """Every layout figure read off the authors' artifacts: nothing `assumed`."""
    return not run.get("assumed")


def published_tflops(run: dict) -> float:
    """The run's TFLOP/s per GPU: from its published iteration time when there is one (hardware
    FLOPs per step, flops.py: Narayanan et al. 2021 eq. 3 with full recompute, / time / GPUs: the
    estimate's own count, so the error is the time's), else as published."""
    if "iteration_time_s" not in run:
        return float(run["tflops_per_gpu"])
    spec = run_spec(run)
    tokens = run["global_batch"] * spec.seq_len
    flops = hardware_flops_per_token(spec, run["layout"]["recompute"]) * tokens
    return flops / run["iteration_time_s"] / run["gpus"] / 1e12


def evaluate_run(run: dict) -> Candidate:
    """The planner's estimate for one published run, exactly as published (layout pinned), through
    the same adapter as a training run's prediction (plan_inputs.layout_inputs), priced for the
    engine that ran it."""
    spec = run_spec(run)
    device = gpu(run["gpu"], **run.get("gpu_overrides", {}))
    lay = run["layout"]
    grad_accum = run["global_batch"] // (lay["dp"] * lay["micro_batch"])
    layout = Layout(grad_accum=grad_accum, **lay)
    if layout.global_batch != run["global_batch"] or layout.world_size != run["gpus"]:
        raise ValueError(f"published run {run['name']!r}: {layout.product} GPUs and micro-batch "
                         f"{layout.micro_batch} do not give its {run['gpus']} GPUs and global batch "
                         f"{run['global_batch']}")
    inputs = layout_inputs(spec, layout, gpu=device, gpus_per_node=run.get("gpus_per_node", 8),
                           precision=run.get("precision", PUBLISHED_PRECISION),
                           flash_attention=run.get("flash_attention", True))
    options = dataclasses.replace(inputs.options, engine=run["engine"])
    return estimate_layout(dataclasses.replace(inputs, options=options), layout)


def error(run: dict, cand: Candidate) -> float:
    """Estimated over published throughput, minus 1 (positive: the estimate is too fast): tokens/s
    per GPU where the run publishes them (the modern table), else TFLOP/s per GPU."""
    if "tokens_per_s_per_gpu" in run:
        return estimated_tokens_per_s_per_gpu(run, cand) / run["tokens_per_s_per_gpu"] - 1
    return cand.tflops_per_gpu / published_tflops(run) - 1


def estimated_tokens_per_s_per_gpu(run: dict, cand: Candidate) -> float:
    return cand.tokens_per_s / run["gpus"]


def memory_error(run: dict, cand: Candidate) -> float | None:
    """Estimated worst-stage memory over the measured peak, minus 1 (None: no peak published)."""
    if "memory_gib" not in run:
        return None
    return cand.worst_stage.total / 2 ** 30 / run["memory_gib"] - 1


def summary(errors: list[float]) -> dict:
    """MAPE, the worst error by magnitude, and the count, of relative errors."""
    worst = max(errors, key=abs)
    return {"runs": len(errors), "mape": sum(abs(e) for e in errors) / len(errors), "worst": worst}


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson's correlation coefficient of two equal-length samples."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return cov / (sx * sy)
