"""metrics.jsonl: one JSON object per optimizer step, written by rank 0 of a training run (the writer
below) and read by the trainer (on resume), the supervisor and `llmlaunch report` through the one
reader, llmlaunch/metrics_file.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from llmlaunch.atomic import write_text_atomic
from llmlaunch.metrics_file import read_metrics
from llmlaunch.run_files import METRICS as METRICS_FILE
from llmlaunch.run_files import TENSORBOARD

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]


class MetricsLog:
    """Appends metrics.jsonl (and the same scalars to TensorBoard under RUN_DIR/tensorboard when it
    is installed). On resume, records past the resumed step (steps whose effect the crash lost) are
    dropped with one atomic rewrite; earlier records are kept as they were."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.tensorboard = _tensorboard_writer(path.parent / TENSORBOARD)
        if path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            write_text_atomic(path, "".join(json.dumps(strict_record(r), allow_nan=False) + "\n"
                                           for r in kept))
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(strict_record(record), allow_nan=False) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def strict_record(record: dict) -> dict:
    """The record as strict JSON allows it: a NaN or infinite number becomes null, and its key is
    listed under "nonfinite" with what it was ("nan", "inf", "-inf"), so no reader meets the
    literals NaN and Infinity that Python's json writes by default."""
    out, bad = {}, {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key], bad[key] = None, str(value)
        else:
            out[key] = value
    if bad:
        out["nonfinite"] = bad
    return out


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
