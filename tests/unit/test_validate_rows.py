"""`llmlaunch validate` without ranks: its argument checks and how rows pair measured with
predicted (launcher/validate.py)."""
import pytest

from llmlaunch.launcher.validate import build_rows
from paths import TINY_CONFIG as TINY


def test_steps_below_two_are_refused():
    import argparse

    from llmlaunch.cli.validate import add_validate_arguments, run_validate

    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    with pytest.raises(ValueError, match="at least 2"):
        run_validate(parser.parse_args(["--config", str(TINY), "--steps", "1"]))


def test_build_rows_pairs_measured_with_predicted():
    records = [{"rank": 1, "stage": 0, "measured": {"weights": 110.0, "step_time_s": 2.0}},
               {"rank": 0, "stage": 0, "measured": {"weights": 100.0, "peak": 5.0}}]
    predicted = {0: {"weights": 100.0, "step_time_s": 1.0, "peak": 4.0, "optimizer": 1.0}}
    rows = build_rows(records, predicted)
    assert [(r["rank"], r["quantity"]) for r in rows] == [(0, "weights"), (0, "peak"),
                                                          (1, "weights"), (1, "step_time_s")]
    assert rows[2]["error_pct"] == pytest.approx(10.0)
    assert rows[3]["error_pct"] == pytest.approx(100.0)
