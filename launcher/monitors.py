"""Metric sinks beside metrics.jsonl (run.yaml `train.monitors`): TensorBoard, CSV, Weights & Biases.

metrics.jsonl stays the source of truth (launcher/metrics.py writes it first); each monitor gets the
same record: loss, eval_loss, lr, grad_norm, tokens_per_s, tflops_per_gpu, mfu, memory_gib and
step time measured (step_time_s) against predicted (step_time_predicted_s).

- tensorboard: torch's SummaryWriter (the tensorboard package, installed by the `train` extra)
  under RUN_DIR/tensorboard, scalars `train/KEY`; on resume `purge_step` hides the events of steps
  the crash lost, as metrics.jsonl drops their lines.
- csv: RUN_DIR/metrics.csv, one row per step, the columns of CSV_COLUMNS; rewritten from the kept
  metrics.jsonl records on resume, then appended.
- wandb: the wandb package (optional: pip install wandb), run directory RUN_DIR/wandb; offline
  unless train.wandb_mode is online (`wandb sync RUN_DIR/wandb/offline-run-*` uploads later).
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from llmlaunch import run_files

MONITORS = ("tensorboard", "csv", "wandb")
WANDB_MODES = ("offline", "online")
CSV_FILE = "metrics.csv"
WANDB_DIR = "wandb"
CSV_COLUMNS = ("step", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu",
               "mfu", "step_time_s", "step_time_predicted_s", "memory_gib")
# The package each monitor needs, and how to get it.
PACKAGES = {"tensorboard": ("tensorboard", "pip install 'llmlaunch[train]' (or tensorboard)"),
            "wandb": ("wandb", "pip install wandb")}


def monitor_problems(monitors: list, wandb_mode: str) -> str:
    """One line for run.yaml values that cannot work (names, wandb_mode), else ''."""
    unknown = [m for m in monitors if m not in MONITORS]
    if unknown:
        return (f"train.monitors: unknown {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(MONITORS)}")
    if wandb_mode not in WANDB_MODES:
        return f"train.wandb_mode must be offline or online, got {wandb_mode!r}"
    return ""


def missing_packages(monitors: list) -> list[str]:
    """'NAME (install hint)' for each monitor whose package this environment lacks (preflight)."""
    return [f"{name}: {PACKAGES[name][1]}" for name in monitors
            if name in PACKAGES and importlib.util.find_spec(PACKAGES[name][0]) is None]


def scalars(record: dict) -> dict:
    """The record's numbers (not the step, not None, not samples_by_source's mapping)."""
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardMonitor:
    def __init__(self, run_dir: Path, resume_step: int, config):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / run_files.TENSORBOARD),
                                    purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(f"train/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CsvMonitor:
    def __init__(self, run_dir: Path, resume_step: int, config, kept: list[dict]):
        from llmlaunch.atomic import write_text_atomic

        self.path = run_dir / CSV_FILE
        rows = [",".join(CSV_COLUMNS)] + [self._row(r) for r in kept if r["step"] <= resume_step]
        write_text_atomic(self.path, "".join(row + "\n" for row in rows))
        self.file = open(self.path, "a", newline="")

    @staticmethod
    def _row(record: dict) -> str:
        import io

        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(
            ["" if record.get(c) is None else record[c] for c in CSV_COLUMNS])
        return out.getvalue()

    def write(self, record: dict) -> None:
        self.file.write(self._row(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class WandbMonitor:
    def __init__(self, run_dir: Path, resume_step: int, config):
        import wandb

        (run_dir / WANDB_DIR).mkdir(exist_ok=True)
        self.run = wandb.init(project=config.train.wandb_project, dir=str(run_dir),
                              name=run_dir.name, mode=config.train.wandb_mode,
                              config=config.to_dict())

    def write(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_monitors(config, run_dir: Path, resume_step: int, kept: list[dict]) -> list:
    """The monitors run.yaml names, opened on rank 0 (a missing package: one line naming it and
    how to install it)."""
    missing = missing_packages(config.train.monitors)
    if missing:
        raise RuntimeError(f"train.monitors needs a package this environment lacks: "
                           f"{'; '.join(missing)}")
    opened = []
    for name in config.train.monitors:
        if name == "tensorboard":
            opened.append(TensorBoardMonitor(run_dir, resume_step, config))
        elif name == "csv":
            opened.append(CsvMonitor(run_dir, resume_step, config, kept))
        elif name == "wandb":
            opened.append(WandbMonitor(run_dir, resume_step, config))
    return opened
