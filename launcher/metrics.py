"""metrics.jsonl: one JSON object per optimizer step, written by rank 0 of a training run and read by
the trainer (on resume) and `llmlaunch report`, through the one reader below.

A crash mid-write can leave a torn last line; the reader skips it (the step it described is lost with
the crash, and the resumed run writes it again). A line that is not a JSON object with a `step` key
anywhere else means the file was damaged, and is an error that names the line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from llmlaunch.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of metrics.jsonl, in file order: blank lines skipped, a torn last line skipped,
    any other line that is not an object with a 'step' key a ValueError naming the line."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    records = []
    for index, (n, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if index == len(numbered) - 1:
                break  # torn by a crash mid-write
            raise ValueError(f"{path}: line {n} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}: line {n} is not an object with a 'step' key")
        records.append(record)
    return records


class MetricsLog:
    """Appends metrics.jsonl (and the same scalars to TensorBoard under RUN_DIR/tensorboard when it
    is installed). On resume, records past the resumed step (steps whose effect the crash lost) are
    dropped with one atomic rewrite; earlier records are kept as they were."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.tensorboard = _tensorboard_writer(path.parent / "tensorboard")
        if path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
