"""`llmlaunch validate`: a few real training steps of a run's layout here, measured against the
planner (llmlaunch.launcher.validate). The two options that are not run.yaml values reach the ranks
as environment variables (LLMLAUNCH_VALIDATE_STEPS, LLMLAUNCH_VALIDATE_JSON)."""
from __future__ import annotations

import argparse
import os

from llmlaunch.launcher.job import VALIDATE_MODULE, launch
from llmlaunch.launcher.validate import DEFAULT_STEPS, ENV_JSON, ENV_STEPS

from .train import add_run_arguments


def register(sub) -> None:
    p = sub.add_parser("validate", help="run a few real steps and compare memory and time with the plan",
                       description="Run a few training steps of this layout on this machine and print, "
                                   "per rank, each quantity predicted by the planner, measured, and the "
                                   "error (docs/validation.md).")
    add_validate_arguments(p)
    p.set_defaults(func=run_validate)


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps to run (at least 2: the first is not timed; default "
                        f"{DEFAULT_STEPS})")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (rows of rank, stage, quantity, predicted, measured, "
                        "error_pct) instead of the table")


def run_validate(args: argparse.Namespace) -> int:
    """Start the ranks `llmlaunch train` would start, running the validate ranks instead."""
    if args.steps < 2:
        raise ValueError(f"--steps {args.steps}: at least 2 (the first step is not timed)")
    saved = {key: os.environ.get(key) for key in (ENV_STEPS, ENV_JSON)}
    os.environ[ENV_STEPS] = str(args.steps)
    os.environ[ENV_JSON] = "1" if args.json else "0"
    try:
        return launch(args.config, args.set, args.run_dir, args.nproc, VALIDATE_MODULE)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
