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

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]


class MetricsLog:
    """Appends metrics.jsonl, then hands the same record to the monitors run.yaml names
    (launcher/monitors.py: tensorboard, csv, wandb). On resume, records past the resumed step
    (steps whose effect the crash lost) are dropped with one atomic rewrite; earlier records are
    kept as they were, and the monitors drop the same steps."""

    def __init__(self, path: Path, resume_step: int, config=None):
        from .monitors import open_monitors

        self.path = path
        kept = []
        if path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            write_text_atomic(path, "".join(json.dumps(strict_record(r), allow_nan=False) + "\n"
                                           for r in kept))
        self.monitors = open_monitors(config, path.parent, resume_step, kept) if config else []
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(strict_record(record), allow_nan=False) + "\n")
        self.file.flush()
        for monitor in self.monitors:   # the values metrics.jsonl holds
            monitor.write(strict_record(record))

    def close(self) -> None:
        self.file.close()
        for monitor in self.monitors:
            monitor.close()


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
