"""The `llmlaunch` command: one module per subcommand, each a thin layer over importable functions
(`register(sub)` adds its parser). Heavy libraries (torch, deepspeed, transformers) are imported
only by the subcommands that need them, when they run."""
from __future__ import annotations

import argparse
import sys

from llmlaunch import __version__

from . import cost, data, plan, report, scale, train, validate

COMMANDS = (plan, cost, scale, train, validate, report, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmlaunch", description="Plan and launch 3D-parallel LLM "
                                     "pre-training with DeepSpeed and Slurm.")
    parser.add_argument("--version", action="version", version=f"llmlaunch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
