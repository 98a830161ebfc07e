"""Test tiers and shared set-up.

Each folder is a tier; its tests get the tier's marker (registered in pyproject.toml):

  unit/     pure Python: planner, run config, CLI, data preparation, report data (no torch)
  torch/    one process with torch, DeepSpeed or transformers: the model's layers, HF import/export
  browser/  the report pages rendered in headless Chromium (Debian's chromium)
  ranks/    several processes on CPU with gloo: 3D-parallel exactness, training, validate
  slurm/    jobs on a Slurm cluster this machine runs (root; Debian's Slurm packages)

The fast tier, for every change: `python -m pytest -m "unit or torch"` (under a minute on 2 cores);
CI runs everything. tests/helpers/ holds code the tests and their rank drivers share
(rank_harness.py: N ranks under torch's elastic launcher; paths.py).
"""
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))

TIERS = ("unit", "torch", "browser", "ranks", "slurm")


@pytest.fixture(scope="session")
def plan_1024():
    """(inputs, result, chosen) of `llmlaunch plan --gpus 1024 --params 175e9`."""
    from llmlaunch.cli.plan import plan_from_argv

    return plan_from_argv(["--gpus", "1024", "--params", "175e9"])


@pytest.fixture(scope="session")
def plan_131072():
    """(inputs, result, chosen) of `llmlaunch plan --gpus 131072 --params 175e9`."""
    from llmlaunch.cli.plan import plan_from_argv

    return plan_from_argv(["--gpus", "131072", "--params", "175e9"])


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(tests_dir).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier folder ({', '.join(TIERS)})")
        item.add_marker(getattr(pytest.mark, tier))
