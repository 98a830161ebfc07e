"""A synthetic run directory for the report tests (unit and browser tiers)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from llmlaunch.config import RunConfig, dump_run_config


def make_run_dir(root: Path, steps: int = 20, validate: bool = True) -> Path:
    """A synthetic run directory: run.yaml (a small model on dp=2 x pp=2 x tp=2 CPU ranks),
    metrics.jsonl with `steps` steps, validate.json."""
    run = root / "run"
    run.mkdir()
    config = RunConfig()
    config.layout.dp = config.layout.pp = config.layout.tp = 2
    config.layout.grad_accum = 4
    (run / "run.yaml").write_text(dump_run_config(config, header="# synthetic run for tests"))
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "loss": 2 + 6 * math.exp(-s / 8), "lr": 3e-4 * min(1, s / 10),
                                "grad_norm": 0.3 + 2 / s, "tokens_per_s": 3900 + 10 * (s % 3),
                                "tflops_per_gpu": 0.011, "mfu": 0.2, "step_time_s": 0.26 + 0.001 * (s % 4),
                                "memory_gib": 0.58}) + "\n")
    if validate:
        rows = [{"rank": r, "stage": r // 4, "quantity": "memory_gib", "predicted": 0.55,
                 "measured": 0.58, "error_pct": 5.5} for r in range(8)]
        (run / "validate.json").write_text(json.dumps({"rows": rows}))
    return run
