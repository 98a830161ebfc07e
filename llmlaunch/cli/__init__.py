"""The `llmlaunch` command: one module per subcommand, each a thin layer over importable functions
(`register(sub)` adds its parser). Heavy libraries (torch, deepspeed, transformers) are imported
only by the subcommands that need them, when they run.

The commands that start ranks (train, preflight, validate) hold the stop signals from main's first
line, before any import of theirs: a SIGUSR1, SIGTERM or Ctrl-C in the first second is then acted
on, not lost (the supervisor, llmlaunch/launcher/job.py, takes them over)."""
from __future__ import annotations

import argparse
import importlib
import sys

from llmlaunch import __version__

COMMANDS = ("plan", "cost", "scale", "train", "validate", "report", "data", "checkpoint",
            "export-hf")
# commands whose module registers more than one subcommand
SUBCOMMANDS = {"preflight": "train"}
STARTS_RANKS = ("train", "preflight", "validate")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or, for a known `command`, only that command's module registered: a
    `plan` does not import the training, data and report commands' modules (a tenth of a second)."""
    parser = argparse.ArgumentParser(prog="llmlaunch", description="Plan and launch 3D-parallel LLM "
                                     "pre-training with DeepSpeed and Slurm.")
    parser.add_argument("--version", action="version", version=f"llmlaunch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = SUBCOMMANDS.get(command, command)
    for name in ([module] if module in COMMANDS else COMMANDS):
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in STARTS_RANKS:
        from llmlaunch.launcher.signals import hold_for_launch

        hold_for_launch()
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, OSError) as exc:
        # ConfigError, DataError and every input check are ValueErrors with a one-line message
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
