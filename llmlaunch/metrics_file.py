"""metrics.jsonl's one reader (the trainer on resume, the supervisor's progress record and `llmlaunch
report` read through it; launcher/metrics.py writes the file). Standard library only: report/ reads
it without importing what runs.

A crash mid-write can leave a torn last line; the reader skips it (the step it described is lost with
the crash, and the resumed run writes it again). A line that is not a JSON object with a `step` key
anywhere else means the file was damaged, and is an error that names the line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


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


def last_step(path: str | os.PathLike) -> int:
    """The step of metrics.jsonl's last record (0 when the file is absent or holds none)."""
    path = Path(path)
    if not path.is_file():
        return 0
    records = read_metrics(path)
    return int(records[-1]["step"]) if records else 0
