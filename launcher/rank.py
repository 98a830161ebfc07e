"""`python -m llmlaunch.launcher.rank --config RUN.yaml --run-dir DIR [--set k=v ...]`: one training
rank (srun starts one per task; `llmlaunch train` starts them through torch's elastic launcher).
See entry.py for what every rank process shares and trainer.py for what it does."""
from __future__ import annotations

from llmlaunch.launcher.signals import STOP, die_with_launcher

STOP.hold()  # first: a stop signal during start-up waits for the first step boundary (signals.py)
die_with_launcher()  # and no rank outlives the elastic launcher that started it

from .entry import exit_process, run_rank  # noqa: E402
from .trainer import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    STOP.hold()  # also when called in-process (`llmlaunch train` under srun)
    return run_rank(train, argv, "llmlaunch.launcher.rank", "one llmlaunch training rank")


if __name__ == "__main__":
    exit_process(main())
