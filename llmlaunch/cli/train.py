"""`llmlaunch train` and `llmlaunch preflight`: start a run's ranks (the supervisor,
llmlaunch.launcher.job)."""
from __future__ import annotations

import argparse

from llmlaunch.launcher.job import PREFLIGHT_MODULE, TRAIN_MODULE, launch


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What every command that starts a run's ranks takes."""
    p.add_argument("--config", required=True,
                   help="run.yaml, or a built-in config name (tiny-cpu)")
    p.add_argument("--nproc", type=int, help="local ranks to start (default: dp*pp*tp)")
    p.add_argument("--run-dir", help="logs, checkpoints, metrics.jsonl (default: the folder of "
                   "--config; runs/NAME for a built-in config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a run.yaml value (repeatable)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train from run.yaml (local ranks, or one rank under srun)",
                       description="Run (or resume) training as run.yaml describes; see docs/launch.md.")
    add_run_arguments(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("preflight", help="check an allocation (devices, memory, disk, all-reduce)",
                       description="Start the ranks `train` would start and check them: devices and "
                                   "memory against the plan, free disk for checkpoints, a timed "
                                   "all-reduce over the real backend.")
    add_run_arguments(p)
    p.set_defaults(func=run_preflight)


def run_train(args: argparse.Namespace) -> int:
    return launch(args.config, args.set, args.run_dir, args.nproc, TRAIN_MODULE)


def run_preflight(args: argparse.Namespace) -> int:
    """The same ranks as `train` would start, running the checks only."""
    return launch(args.config, args.set, args.run_dir, args.nproc, PREFLIGHT_MODULE)
