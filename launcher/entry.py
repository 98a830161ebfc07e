"""What every per-rank process shares: `python -m llmlaunch.launcher.rank` (training),
`... .preflight` and `... .validate`, started by srun (one task per rank), by torch's elastic
launcher (`llmlaunch train`), or by the `deepspeed` launcher.

- The rank's identity: RANK, LOCAL_RANK, WORLD_SIZE from the launcher, or mapped from Slurm's
  SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS under srun; MASTER_ADDR and MASTER_PORT from the
  environment.
- Arguments: --config RUN.yaml (or a built-in name), --run-dir, --set section.key=value.
- Failure: one line on stderr naming the rank (`llmlaunch: error on rank N: ...`), the traceback in
  the rank's log; success tears the process groups down together.
- Exit: `exit_process` flushes and leaves with os._exit, skipping the interpreter's teardown, in
  which gloo's and DeepSpeed's C++ threads were seen to abort a finished rank ("terminate called
  without an active exception", SIGABRT) in no particular order.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from llmlaunch.config import RunConfig, load_run_config

log = logging.getLogger("llmlaunch.rank")


def rank_environment(environ=os.environ) -> dict:
    """RANK, LOCAL_RANK, WORLD_SIZE from the launcher, mapped from Slurm's variables under srun.
    Under torch's elastic launcher (TORCHELASTIC_RUN_ID set) its RANK wins; otherwise a Slurm task's
    SLURM_PROCID does, whatever RANK the submitting shell may have exported."""
    env = {}
    if "SLURM_PROCID" in environ and "TORCHELASTIC_RUN_ID" not in environ:
        env = {"RANK": environ["SLURM_PROCID"], "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
               "WORLD_SIZE": environ["SLURM_NTASKS"]}
    merged = {**environ, **env}
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in merged]
    if missing:
        raise RuntimeError(f"a llmlaunch rank needs {', '.join(missing)} in the environment: start "
                           "it with `llmlaunch train --nproc N`, srun, or torchrun")
    env.setdefault("LOCAL_RANK", merged.get("LOCAL_RANK", "0"))
    env.setdefault("RANK", merged["RANK"])
    env.setdefault("WORLD_SIZE", merged["WORLD_SIZE"])
    return env


def rank_arguments(argv: list[str] | None, module: str,
                   description: str) -> tuple[RunConfig, Path]:
    """--config, --run-dir, --set: the checked config and the run directory (created). Bad input
    raises ValueError."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", help="default: the folder of --config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_run_config(args.config, args.set)
    run_dir = Path(args.run_dir or Path(args.config).resolve().parent).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return config, run_dir


_HEARTBEAT = []


def start_heartbeat() -> None:
    """Beat this rank's liveness counter (liveness.py) from now on: call once the process group
    exists (the store is up)."""
    from .liveness import Heartbeat

    if not _HEARTBEAT:
        _HEARTBEAT.append(Heartbeat(int(os.environ["RANK"])).start())


def _heartbeats_started() -> bool:
    return bool(_HEARTBEAT)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_rank(work: Callable[[RunConfig, Path], int], argv: list[str] | None, module: str,
             description: str, role: str = "") -> int:
    """Parse the rank's arguments and run `work(config, run_dir)`; returns the exit code: `work`'s
    own, 2 for bad arguments, 1 (one stderr line, traceback in the rank's log) for a failure."""
    from .known_warnings import hide_known_warnings
    from .signals import die_with_launcher

    die_with_launcher()   # preflight and validate ranks too (rank.py does it on its first line)
    hide_known_warnings()  # traced to their source and explained in docs/launch.md ("Warnings")
    try:
        config, run_dir = rank_arguments(argv, module, description)
    except ValueError as exc:
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    try:
        code = work(config, run_dir)
        from llmlaunch.model.distributed import finish_distributed

        finish_distributed()
        return code
    except Exception as exc:  # noqa: BLE001 - one line on stderr; the traceback goes to the log
        if logging.getLogger().handlers:  # the rank's log file (never the console: one line there)
            log.exception("%s failed", role or "the rank")
        where = f"{role} error" if role else "error"
        cause = first_line(exc)
        if "WORLD_SIZE" in os.environ and _heartbeats_started():
            from .liveness import describe_silent, is_communication_failure, short_cause

            if is_communication_failure(exc):
                silent = describe_silent(int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]))
                cause = f"{silent} ({short_cause(cause)})" if silent else short_cause(cause)
        print(f"llmlaunch: {where} on rank {os.environ.get('RANK', '?')}: {cause}", file=sys.stderr)
        return 1


def exit_process(code: int) -> None:
    """Flush and leave now (see the module docstring): for a rank process's __main__ only."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
