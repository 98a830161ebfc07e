"""How often a long job should checkpoint, and how early before its time limit it must be told to stop.

Failure rate. Llama 3 (Dubey et al. 2024, "The Llama 3 Herd of Models", §3.3.4, Table 5): 419
unexpected interruptions in a 54-day snapshot of pre-training on 16,384 H100 GPUs. Read as one
failure process per GPU, the mean time between failures of one GPU is

    MTBF_gpu = 54 d * 24 h * 16,384 / 419 = 50,677 GPU-hours,

and a job on G GPUs, any of whose failures ends it, sees MTBF_job = MTBF_gpu / G.

File system. The same paper's Tectonic store (§3.3.1) sustains 2 TB/s for those 16,384 GPUs: 122 MB/s
per GPU. Without --fs-gb-per-s a job of G GPUs is given G times that share; a tag of B bytes
(launcher/checkpoints/space.py: tag_bytes, written in parallel, each rank its share B / G) then takes

    save_s = B / fs_bytes_per_s.

Interval. Young (1974, "A first order approximation to the optimum checkpoint interval") and Daly
(2006, "A higher order estimate of the optimum checkpoint interval for restart dumps"), first order:

    interval_s = sqrt(2 * save_s * MTBF_job_s)

which balances the time spent saving against the work a failure loses (half an interval on average).

Stop signal. A stop finishes the step in flight, waits for a save already being written, writes its
own, then the supervisor requeues: signal_s = step_s + 2 * save_s + STOP_MARGIN_S, at least
MIN_STOP_SIGNAL_S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LLAMA3_UNEXPECTED_INTERRUPTIONS = 419
LLAMA3_SNAPSHOT_DAYS = 54
LLAMA3_GPUS = 16_384
LLAMA3_FS_SUSTAINED_BYTES_PER_S = 2e12
# Seconds for the supervisor to see the ranks exit, record the stop and requeue after the save
# (on the local cluster a requeue takes a few seconds; one minute covers a busy controller).
STOP_MARGIN_S = 60
# The earliest stop signal: run.yaml's default slurm.signal_seconds, which also covers a stop that
# arrives while a start is still loading (the supervisor holds signals in every phase).
MIN_STOP_SIGNAL_S = 300


def gpu_mtbf_hours() -> float:
    """Mean time between unexpected interruptions of one GPU, Llama 3 §3.3.4 (module docstring)."""
    return LLAMA3_SNAPSHOT_DAYS * 24 * LLAMA3_GPUS / LLAMA3_UNEXPECTED_INTERRUPTIONS


def job_mtbf_hours(gpu_mtbf_h: float, gpus: int) -> float:
    """Any one of `gpus` failures ends the job."""
    return gpu_mtbf_h / gpus


def default_fs_bytes_per_s(gpus: int) -> float:
    """Llama 3's sustained 2 TB/s shared by its 16,384 GPUs, times this job's GPUs."""
    return LLAMA3_FS_SUSTAINED_BYTES_PER_S / LLAMA3_GPUS * gpus


def save_seconds(tag_bytes: float, fs_bytes_per_s: float) -> float:
    return tag_bytes / fs_bytes_per_s


def young_daly_interval_s(save_s: float, mtbf_s: float) -> float:
    """Young 1974 / Daly 2006, first order: sqrt(2 * save * MTBF)."""
    return math.sqrt(2 * save_s * mtbf_s)


def stop_signal_seconds(step_s: float, save_s: float) -> int:
    """Seconds before the time limit the stop signal must come (module docstring)."""
    return max(MIN_STOP_SIGNAL_S, math.ceil(step_s + 2 * save_s + STOP_MARGIN_S))


@dataclass(frozen=True)
class CheckpointPlan:
    """The numbers `plan --emit` writes into run.yaml and train.sbatch, with their reasoning."""

    tag_bytes: float
    gpus: int
    fs_bytes_per_s: float
    fs_source: str
    gpu_mtbf_h: float
    mtbf_source: str
    step_s: float

    @property
    def save_s(self) -> float:
        return save_seconds(self.tag_bytes, self.fs_bytes_per_s)

    @property
    def job_mtbf_h(self) -> float:
        return job_mtbf_hours(self.gpu_mtbf_h, self.gpus)

    @property
    def interval_s(self) -> float:
        return young_daly_interval_s(self.save_s, self.job_mtbf_h * 3600)

    @property
    def every_steps(self) -> int:
        return max(1, round(self.interval_s / self.step_s))

    @property
    def signal_s(self) -> int:
        return stop_signal_seconds(self.step_s, self.save_s)

    def reasoning(self) -> list[str]:
        """Lines for the plan's output and the emitted files' comments."""
        return [
            f"checkpoint: one tag = {self.tag_bytes / 1e9:,.1f} GB ({self.tag_bytes / self.gpus / 1e6:,.0f} "
            f"MB per rank) at {self.fs_bytes_per_s / 1e9:,.3g} GB/s ({self.fs_source}) = "
            f"save {self.save_s:,.1f} s",
            f"failures: MTBF {self.gpu_mtbf_h:,.0f} h per GPU ({self.mtbf_source}) / {self.gpus} GPUs "
            f"= {self.job_mtbf_h:,.1f} h for the job",
            f"interval = sqrt(2 * save * MTBF_job) (Young 1974, Daly 2006) = sqrt(2 * {self.save_s:,.1f} "
            f"s * {self.job_mtbf_h * 3600:,.0f} s) = {self.interval_s / 60:,.1f} min = every "
            f"{self.every_steps} steps of {self.step_s:.3g} s",
            f"stop signal {self.signal_s} s before the time limit = max({MIN_STOP_SIGNAL_S} s, one "
            f"step {self.step_s:.3g} s + 2 saves {2 * self.save_s:,.1f} s + {STOP_MARGIN_S} s for "
            "the requeue)",
        ]
