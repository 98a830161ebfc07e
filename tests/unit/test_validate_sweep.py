"""benchmarks/validate_sweep.py: the micro-batch x recompute sweep of `llmlaunch validate`.

The table and verdicts on synthetic validate results (a failed run, CPU without peak rows), argument
errors, one real sweep of one tiny CPU run (4 gloo ranks, about 15 s), and the planner's verdict on
every combination of the shipped 1B GPU config.
"""
import json
import subprocess
import sys

import pytest
from sweep_script import SCRIPT, load_sweep  # tests/helpers

from llmlaunch.config import BUILTIN_CONFIGS, load_run_config, resolve_config_path
from llmlaunch.topology.plan_inputs import estimate_layout
from llmlaunch.topology.hardware import gpu

GIB = 2**30


sweep = load_sweep()


def rows(stage_errors: dict, peak: bool = True) -> list[dict]:
    """validate rows: {stage: [(peak error %, step-time error %) per rank]}; stage s has ranks
    numbered on from the previous stage's."""
    out, rank = [], 0
    for stage, per_rank in stage_errors.items():
        for peak_error, step_error in per_rank:
            if peak:
                out.append({"rank": rank, "stage": stage, "quantity": "peak", "predicted": 20 * GIB,
                            "measured": 20 * GIB * (1 + peak_error / 100), "error_pct": peak_error})
            out.append({"rank": rank, "stage": stage, "quantity": "step_time_s", "predicted": 0.5,
                        "measured": 0.5 * (1 + step_error / 100), "error_pct": step_error})
            out.append({"rank": rank, "stage": stage, "quantity": "weights", "predicted": 100,
                        "measured": 300, "error_pct": 200.0})   # not checked by the sweep
            rank += 1
    return out


def ok_run(micro_batch, recompute, result_rows, **extra):
    stdout = "a stray line\n" + json.dumps({"rows": result_rows, "layout": {}, **extra}) + "\n"
    return sweep.parse_run(micro_batch, recompute, ["python", "-m", "llmlaunch", "validate"], 0,
                           stdout, "deepspeed chatter\n")


GPU_FACTS = {"date_utc": "2026-11-25 12:00", "device": "NVIDIA H100 80GB HBM3", "on_gpu": True,
             "precision": "bf16", "torch": "2.5.1", "deepspeed": "0.19.8", "cuda": "12.4",
             "llmlaunch": "0.1.0", "sweep_command": "python benchmarks/validate_sweep.py"}


def table_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")][1:]


# ------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------

def test_worst_rank_of_each_stage_by_absolute_error():
    worst = sweep.worst_rows(rows({0: [(2.0, 5.0), (-8.0, -3.0)], 1: [(1.0, 14.0), (1.5, -14.5)]}))
    assert worst[(0, "peak")]["error_pct"] == -8.0
    assert worst[(0, "step_time_s")]["error_pct"] == 5.0
    assert worst[(1, "step_time_s")]["error_pct"] == -14.5


@pytest.mark.parametrize("peak_error, step_error, passed, failed", [
    (9.9, -14.9, True, []),
    (-10.5, 3.0, False, ["peak"]),
    (1.0, 15.5, False, ["step_time_s"]),
    (12.0, -20.0, False, ["peak", "step_time_s"]),
])
def test_targets(peak_error, step_error, passed, failed):
    run = ok_run(2, "full", rows({0: [(0.0, 0.0), (peak_error, step_error)]}))
    [line] = sweep.stage_lines(run)
    assert (line["passed"], line["failed"]) == (passed, failed)
    assert sweep.sweep_passed([run]) is passed
    [table_line] = table_lines(sweep.format_report(GPU_FACTS, [run]))
    assert table_line.endswith("| pass |") if passed else "| FAIL: " in table_line


def test_gpu_table_values_and_header():
    runs = [ok_run(1, "none", rows({0: [(3.0, -4.0)]})),
            ok_run(4, "selective", rows({0: [(5.0, 6.0)]}))]
    report = sweep.format_report(GPU_FACTS, runs)
    header = report.split("\n| micro-batch")[0]
    for fact in ("2026-11-25 12:00", "NVIDIA H100 80GB HBM3", "bf16", "torch 2.5.1",
                 "DeepSpeed 0.19.8", "CUDA 12.4", "python benchmarks/validate_sweep.py",
                 "python -m llmlaunch validate"):
        assert fact in header
    lines = table_lines(report)
    assert lines[0] == ("| 1 | none | 0 | 20.00 | 20.60 | +3.0% | 0.5000 | 0.4800 | -4.0% | pass |")
    assert lines[1].startswith("| 4 | selective | 0 | 20.00 | 21.00 | +5.0% |")
    assert report.rstrip().endswith("Result: all pass.")
    columns = report.splitlines()[[i for i, l in enumerate(report.splitlines())
                                   if l.startswith("| micro-batch")][0]].count("|")
    assert all(line.count("|") == columns for line in lines)


def test_failed_run_is_a_failed_row_not_a_crash():
    stderr = "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory | tried\n\n"
    failed = sweep.parse_run(4, "none", ["python", "x"], 1, "", stderr)
    assert not failed["ok"]
    assert failed["error"] == "exit 1: torch.OutOfMemoryError: CUDA out of memory | tried"
    runs = [ok_run(1, "none", rows({0: [(1.0, 1.0)]})), failed]
    assert not sweep.sweep_passed(runs)
    lines = table_lines(sweep.format_report(GPU_FACTS, runs))
    assert len(lines) == 2 and lines[0].endswith("| pass |")
    assert lines[1].startswith("| 4 | none | - |")
    assert lines[1].endswith(
        "| FAIL: exit 1: torch.OutOfMemoryError: CUDA out of memory \\| tried |")
    # the pipe in the message is escaped: the line has as many cells as the others
    assert lines[1].replace("\\|", "").count("|") == lines[0].count("|")


@pytest.mark.parametrize("returncode, stdout, stderr, error", [
    (0, "no json here\n", "", "exit 0 but no JSON object with rows on stdout"),
    (0, '{"layout": {}}\n', "", "exit 0 but no JSON object with rows on stdout"),
    (0, '{"rows": []}\n', "", "exit 0 but no JSON object with rows on stdout"),
    (2, "", "", "exit 2: (no message)"),
    (None, "", "step 3\n", "timed out after 60 s; last stderr line: step 3"),
    (1, "", "llmlaunch: validate error on rank 0: CUDA out of memory\n"
            "llmlaunch: error: the job failed (exit 1); each rank's log is in runs/x/logs\n",
     "exit 1: llmlaunch: validate error on rank 0: CUDA out of memory"),
    (2, "", "llmlaunch: error: the job failed (exit 2); see logs\n",
     "exit 2: llmlaunch: error: the job failed (exit 2); see logs"),
])
def test_parse_run_failures(returncode, stdout, stderr, error):
    run = sweep.parse_run(1, "full", ["x"], returncode, stdout, stderr, timeout_s=60)
    assert (run["ok"], run["error"]) == (False, error)


def test_cpu_rows_have_no_peak():
    run = ok_run(2, "none", rows({0: [(0.0, 500.0)], 1: [(0.0, 3.0)]}, peak=False))
    facts = {**GPU_FACTS, "device": "cpu", "on_gpu": False, "precision": "fp32"}
    lines = table_lines(sweep.format_report(facts, [run]))
    assert lines[0] == ("| 2 | none | 0 | n/a (CPU) | n/a (CPU) | n/a (CPU) | 0.5000 | 3.0000 "
                        "| +500.0% | FAIL: step time |")
    assert lines[1].endswith("| +3.0% | pass |")
    assert not sweep.sweep_passed([run])


def test_nothing_checked_is_not_a_failure():
    only_states = [r for r in rows({0: [(0.0, 0.0)]}, peak=False) if r["quantity"] == "weights"]
    run = ok_run(1, "none", only_states)
    [line] = sweep.stage_lines(run)
    assert line["passed"] is None
    assert sweep.sweep_passed([run])
    assert table_lines(sweep.format_report(GPU_FACTS, [run]))[0].endswith("| n/a |")


def test_unknown_error_fails():
    result_rows = rows({0: [(1.0, 1.0)]})
    result_rows[0]["error_pct"] = None                       # predicted 0
    assert not sweep.sweep_passed([ok_run(1, "none", result_rows)])


def test_command_passes_everything_through():
    cmd = sweep.validate_command("tiny-cpu", 4, 3, ["train.seed=7"], 2, "selective", "/r/mb2")
    assert cmd[:4] == [sys.executable, "-m", "llmlaunch", "validate"]
    text = " ".join(cmd[1:])
    assert ("--config tiny-cpu --run-dir /r/mb2 --steps 3 --json --nproc 4 --set train.seed=7 "
            "--set layout.micro_batch=2 --set layout.recompute=selective") in text
    assert "--nproc" not in sweep.validate_command("c", None, 3, [], 1, "none", "/r")


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--micro-batches", "1,0"], "positive integers"),
    (["--micro-batches", "1,two"], "positive integers"),
    (["--micro-batches", "-1"], "positive integers"),
    (["--recompute", "none,some"], "'some' is not one of none, selective, full"),
    (["--steps", "1"], "at least 2"),
    (["--steps", "x"], "invalid int value"),
    (["--nproc", "0"], "must be positive"),
    (["--config", "tiny-cpu", "--nproc", "3"], "needs dp*pp*tp = 4"),
    (["--config", "no-such-config"], "cannot read run config"),
    (["--set", "layout.micro_batch=2"], "the sweep sets it"),
    (["--set", "layout.bogus=1"], "unknown key"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    assert sweep.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("validate_sweep.py: error: ")
    assert message in captured.err


def test_bad_arguments_as_a_process():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--recompute", "partial"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for option in ("--micro-batches", "--recompute", "--out", "gpt-1b-gpu", "python benchmarks/"):
        assert option in proc.stdout


# ------------------------------------------------------------------------------------------------
# One real sweep on CPU
# ------------------------------------------------------------------------------------------------

def test_gpt_1b_gpu_config_resolves_and_loads():
    assert resolve_config_path("gpt-1b-gpu") == BUILTIN_CONFIGS / "gpt-1b-gpu.yaml"
    assert (BUILTIN_CONFIGS / "gpt-1b-gpu.yaml").is_file()
    config = load_run_config("gpt-1b-gpu")
    assert (config.model.layers, config.model.hidden, config.model.heads,
            config.model.seq_len) == (24, 2048, 16, 2048)
    lay = config.layout
    assert (lay.dp, lay.pp, lay.tp, lay.grad_accum, lay.zero_stage) == (1, 1, 1, 4, 1)
    assert (config.train.precision, config.cluster.gpu, config.cluster.gpus_per_node) == \
        ("bf16", "h100-80gb", 1)
    assert sweep.DEFAULT_CONFIG == "gpt-1b-gpu"


@pytest.mark.parametrize("micro_batch", [1, 2, 4])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_gpt_1b_gpu_every_sweep_combination_fits_an_h100(micro_batch, recompute):
    config = load_run_config("gpt-1b-gpu", sweep.sweep_sets(micro_batch, recompute))
    estimate = estimate_layout(config.plan_inputs("bf16", device=gpu("h100-80gb")),
                               config.layout_obj())
    assert estimate.fits, estimate.reasons
    assert 1.2e9 < estimate.worst_stage.params < 1.4e9
    assert 0 < estimate.worst_stage.allocated < gpu("h100-80gb").memory_bytes
    assert estimate.step.total_s > 0
