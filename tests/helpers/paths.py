"""Paths every tier uses."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
HELPERS = TESTS / "helpers"
TINY_CONFIG = REPO / "llmlaunch" / "configs" / "tiny-cpu.yaml"
