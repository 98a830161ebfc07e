"""Compute, time, money and energy of a training run."""
from __future__ import annotations

from dataclasses import dataclass

from .flops import run_model_flops, training_flops

SECONDS_PER_HOUR = 3600.0
HOURS_PER_DAY = 24.0
# Power usage effectiveness: facility energy over IT energy. 1.1 is a typical hyperscale figure
# (Patterson et al. 2021, "Carbon Emissions and Large Neural Network Training", Table 4: 1.10-1.11).
DEFAULT_PUE = 1.1


@dataclass(frozen=True)
class RunCost:
    flops: float
    gpu_hours: float
    gpu_days: float
    wall_days: float
    cost_usd: float
    energy_mwh: float

    def to_dict(self) -> dict:
        return {"flops": self.flops, "gpu_hours": self.gpu_hours, "gpu_days": self.gpu_days,
                "wall_days": self.wall_days, "cost_usd": self.cost_usd, "energy_mwh": self.energy_mwh}


def gpu_hours_for(flops: float, peak_tflops: float, mfu: float) -> float:
    """GPU-hours to execute `flops` model FLOPs at a model-FLOPs utilisation `mfu`."""
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    return flops / (peak_tflops * 1e12 * mfu) / SECONDS_PER_HOUR


def energy_mwh(gpu_hours: float, watts_per_gpu: float, pue: float = DEFAULT_PUE) -> float:
    """GPUs at board power for the whole run, times PUE (an upper bound: GPUs rarely sit at TDP)."""
    return gpu_hours * watts_per_gpu * pue / 1e6


def run_cost(*, flops: float, gpu_hours: float, gpus: int, usd_per_gpu_hour: float,
             watts_per_gpu: float, pue: float = DEFAULT_PUE) -> RunCost:
    return RunCost(flops=flops, gpu_hours=gpu_hours, gpu_days=gpu_hours / HOURS_PER_DAY,
                   wall_days=gpu_hours / gpus / HOURS_PER_DAY,
                   cost_usd=gpu_hours * usd_per_gpu_hour,
                   energy_mwh=energy_mwh(gpu_hours, watts_per_gpu, pue))


def cost_from_params(*, params: float, tokens: float, peak_tflops: float, mfu: float, gpus: int,
                     usd_per_gpu_hour: float, watts_per_gpu: float, pue: float = DEFAULT_PUE,
                     active_params: float | None = None) -> RunCost:
    """`llmlaunch cost`: C = 6 N D FLOPs at a given MFU. For a Mixture-of-Experts model N is the
    active parameter count (`active_params`, when given): C = 6 N_active D."""
    flops = training_flops(active_params or params, tokens)
    return run_cost(flops=flops, gpu_hours=gpu_hours_for(flops, peak_tflops, mfu), gpus=gpus,
                    usd_per_gpu_hour=usd_per_gpu_hour, watts_per_gpu=watts_per_gpu, pue=pue)


def cost_from_model(*, spec, tokens: float, peak_tflops: float, mfu: float, gpus: int,
                    usd_per_gpu_hour: float, watts_per_gpu: float, pue: float = DEFAULT_PUE) -> RunCost:
    """`llmlaunch cost` of a model whose shape is known: its model FLOPs (flops.run_model_flops,
    MFU's numerator everywhere) at a given MFU. At the MFU `plan` estimates for a layout this gives
    plan's wall-clock days for the same tokens."""
    flops = run_model_flops(spec, tokens)
    return run_cost(flops=flops, gpu_hours=gpu_hours_for(flops, peak_tflops, mfu), gpus=gpus,
                    usd_per_gpu_hour=usd_per_gpu_hour, watts_per_gpu=watts_per_gpu, pue=pue)


def cost_from_throughput(*, tokens: float, tokens_per_s: float, flops_per_token: float, gpus: int,
                         usd_per_gpu_hour: float, watts_per_gpu: float, pue: float = DEFAULT_PUE) -> RunCost:
    """`plan --tokens`: time from the planned layout's estimated throughput."""
    seconds = tokens / tokens_per_s
    return run_cost(flops=flops_per_token * tokens, gpu_hours=seconds * gpus / SECONDS_PER_HOUR,
                    gpus=gpus, usd_per_gpu_hour=usd_per_gpu_hour, watts_per_gpu=watts_per_gpu, pue=pue)
