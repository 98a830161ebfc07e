"""`llmlaunch validate` over micro-batch sizes x recompute modes: the one-GPU check of issue 6.

On a machine with one GPU (H100/H200), from the repository root:

    python benchmarks/validate_sweep.py --out runs/validate-sweep

runs `python -m llmlaunch validate --json` once per micro-batch (default 1, 2, 4) and recompute
mode (default none, selective, full) of the built-in config `gpt-1b-gpu` (GPT-3 1.3B's shape, one
GPU, bf16, ZeRO-1), each with `--set layout.micro_batch=B --set layout.recompute=R`, and prints a
Markdown table for docs/validation.md: per (micro-batch, recompute, pipeline stage) the predicted
and measured peak memory (GiB) and step time (s) of the stage's worst rank (largest |error|), and
pass/fail against the targets (peak within PEAK_TARGET_PCT, step time within STEP_TIME_TARGET_PCT).
A header paragraph gives the date (UTC), device, torch / DeepSpeed / CUDA versions and the exact
command lines. On CPU no peak is measured: those columns say "n/a (CPU)".

Other options: `--config RUN.yaml` (or a built-in name, e.g. tiny-cpu), `--nproc N`, `--steps K`,
`--set section.key=value` (repeatable, passed to every run), `--micro-batches 1,2,4`,
`--recompute none,full`, `--timeout-s` per run. With `--out DIR`: DIR/sweep.md (the table),
DIR/sweep.json (every run's command, exit status and validate JSON), DIR/logs/*.log (each run's
stderr) and DIR/runs/* (each run's directory); without it those go to a temporary directory that is
removed at the end (a failed run's log tail is printed on stderr first).

A run that fails (non-zero exit, e.g. out of memory, or no JSON on stdout) is a failed row with the
last line of its stderr; the sweep goes on. Exit status: 0 when every run succeeded and every
checked figure meets its target, 1 otherwise, 2 for bad arguments (one line on stderr).

Example on CPU (the tiny model; the step-time target is not expected to hold there):

    python benchmarks/validate_sweep.py --config tiny-cpu --nproc 4 --steps 2 --micro-batches 2 \
        --recompute none --out /tmp/sweep
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from llmlaunch import __version__ as llmlaunch_version
from llmlaunch.atomic import write_text_atomic
from llmlaunch.config import load_run_config
from llmlaunch.topology.layout import RECOMPUTE_MODES

PEAK_TARGET_PCT = 10.0
"""|measured / predicted - 1| of peak memory allowed, in percent."""
STEP_TIME_TARGET_PCT = 15.0
"""|measured / predicted - 1| of step time allowed, in percent."""
CHECKED = {"peak": PEAK_TARGET_PCT, "step_time_s": STEP_TIME_TARGET_PCT}
DEFAULT_CONFIG = "gpt-1b-gpu"
DEFAULT_MICRO_BATCHES = "1,2,4"
DEFAULT_RECOMPUTE = ",".join(RECOMPUTE_MODES)
DEFAULT_STEPS = 10
DEFAULT_TIMEOUT_S = 900
SWEPT_KEYS = ("layout.micro_batch", "layout.recompute")
GIB = 2**30


class UsageError(ValueError):
    """A bad command-line argument (exit 2)."""


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------

def parse_micro_batches(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; every item a positive integer."""
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() and int(item) > 0 for item in items):
        raise UsageError(f"--micro-batches {text!r}: expected positive integers, comma-separated")
    return [int(item) for item in items]


def parse_recompute(text: str) -> list[str]:
    """'none,full' -> ['none', 'full']; every item one of RECOMPUTE_MODES."""
    items = [item.strip() for item in text.split(",")]
    bad = [item for item in items if item not in RECOMPUTE_MODES]
    if bad:
        raise UsageError(f"--recompute {text!r}: {', '.join(map(repr, bad))} is not one of "
                         f"{', '.join(RECOMPUTE_MODES)}")
    return items


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, raised to main instead of usage + exit
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="validate_sweep.py", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"run.yaml or a built-in config name (default {DEFAULT_CONFIG})")
    p.add_argument("--nproc", type=int, help="local ranks per run (default: dp*pp*tp)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps per run, at least 2 (default {DEFAULT_STEPS})")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a run.yaml value in every run (repeatable)")
    p.add_argument("--micro-batches", default=DEFAULT_MICRO_BATCHES, metavar="B,B,...",
                   help=f"micro-batch sizes (default {DEFAULT_MICRO_BATCHES})")
    p.add_argument("--recompute", default=DEFAULT_RECOMPUTE, metavar="MODE,...",
                   help=f"recompute modes (default {DEFAULT_RECOMPUTE})")
    p.add_argument("--out", help="write sweep.md, sweep.json, logs/ and runs/ here")
    p.add_argument("--timeout-s", type=int, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds one run may take (default {DEFAULT_TIMEOUT_S})")
    return p


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parsed and checked arguments (micro_batches and recompute as lists); UsageError if bad."""
    args = build_parser().parse_args(argv)
    args.micro_batches = parse_micro_batches(args.micro_batches)
    args.recompute = parse_recompute(args.recompute)
    if args.steps < 2:
        raise UsageError(f"--steps {args.steps}: at least 2 (the first step is not timed)")
    if args.nproc is not None and args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: must be positive")
    if args.timeout_s < 1:
        raise UsageError(f"--timeout-s {args.timeout_s}: must be positive")
    for item in args.set:
        if item.partition("=")[0].strip() in SWEPT_KEYS:
            raise UsageError(f"--set {item!r}: the sweep sets it (--micro-batches, --recompute)")
    for micro_batch in args.micro_batches:
        for recompute in args.recompute:   # every combination must be a valid run.yaml
            try:
                config = load_run_config(args.config, args.set + sweep_sets(micro_batch, recompute))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    world = config.layout.dp * config.layout.pp * config.layout.tp
    if args.nproc is not None and args.nproc != world:
        raise UsageError(f"--nproc {args.nproc} but the layout needs dp*pp*tp = {world} ranks")
    return args


# ------------------------------------------------------------------------------------------------
# Running (one subprocess per combination)
# ------------------------------------------------------------------------------------------------

def sweep_sets(micro_batch: int, recompute: str) -> list[str]:
    return [f"layout.micro_batch={micro_batch}", f"layout.recompute={recompute}"]


def validate_command(config: str, nproc: int | None, steps: int, sets: list[str], micro_batch: int,
                     recompute: str, run_dir: str) -> list[str]:
    cmd = [sys.executable, "-m", "llmlaunch", "validate", "--config", config,
           "--run-dir", run_dir, "--steps", str(steps), "--json"]
    if nproc is not None:
        cmd += ["--nproc", str(nproc)]
    for item in sets + sweep_sets(micro_batch, recompute):
        cmd += ["--set", item]
    return cmd


LAUNCHER_SUMMARY = "llmlaunch: error: the job failed"
"""How the launcher's closing line starts; the rank's own error line comes before it."""


def error_line(stderr: str) -> str:
    """The last non-empty line of stderr that is not the launcher's closing summary."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    messages = [line for line in lines if not line.startswith(LAUNCHER_SUMMARY)]
    return (messages or lines or [""])[-1]


def parse_run(micro_batch: int, recompute: str, command: list[str], returncode: int | None,
              stdout: str, stderr: str, timeout_s: int | None = None) -> dict:
    """One run's record: ok with validate's JSON object as `result`, or failed with `error` (the
    exit status and the last line of stderr, the launcher's summary skipped). returncode None:
    killed after timeout_s."""
    run = {"micro_batch": micro_batch, "recompute": recompute, "command": shlex.join(command),
           "returncode": returncode, "ok": False, "error": None, "result": None}
    if returncode is None:
        run["error"] = f"timed out after {timeout_s} s; last stderr line: {error_line(stderr)}"
    elif returncode != 0:
        run["error"] = f"exit {returncode}: {error_line(stderr) or '(no message)'}"
    else:
        result = json_object(stdout)
        if result is None or not isinstance(result.get("rows"), list) or not result["rows"]:
            run["error"] = "exit 0 but no JSON object with rows on stdout"
        else:
            run.update(ok=True, result=result)
    return run


def json_object(stdout: str) -> dict | None:
    """The JSON object validate printed: the last stdout line that parses as one."""
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_one(cmd: list[str], log_path: Path, timeout_s: int) -> tuple[int | None, str, str]:
    """(returncode or None on timeout, stdout, stderr); stderr also in log_path. A run that
    outlives timeout_s (or is interrupted) is ended with all its descendants: torch's launcher
    starts each rank in its own session, where a process-group kill would miss them."""
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            stdout, returncode = "", None
        finally:
            if proc.returncode is None:     # not reaped yet: the pid and its tree are still ours
                end_process_tree(proc.pid)
                proc.wait()
        log.seek(0)
        return returncode, stdout, log.read()


def end_process_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM `pid` and its descendants, SIGKILL those still alive after grace_s."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


# ------------------------------------------------------------------------------------------------
# Table and verdicts (pure)
# ------------------------------------------------------------------------------------------------

def abs_error_pct(row: dict) -> float:
    return float("inf") if row["error_pct"] is None else abs(row["error_pct"])


def worst_rows(rows: list[dict]) -> dict:
    """{(stage, quantity): the row of the rank with the largest |error_pct| in that stage}."""
    worst = {}
    for row in rows:
        key = (row["stage"], row["quantity"])
        if key not in worst or abs_error_pct(row) > abs_error_pct(worst[key]):
            worst[key] = row
    return worst


def meets_target(row: dict | None, target_pct: float) -> bool | None:
    """None when the figure was not measured (no row)."""
    return None if row is None else abs_error_pct(row) <= target_pct


def stage_lines(run: dict) -> list[dict]:
    """One entry per pipeline stage of a run: its worst peak and step-time rows and the verdict
    (`passed`: False when the run failed or a checked figure misses its target; None when the run
    succeeded but nothing was checked)."""
    if not run["ok"]:
        return [{"micro_batch": run["micro_batch"], "recompute": run["recompute"], "stage": None,
                 "rows": {}, "failed": [], "passed": False}]
    worst = worst_rows(run["result"]["rows"])
    lines = []
    for stage in sorted({stage for stage, _ in worst}):
        rows = {q: worst.get((stage, q)) for q in CHECKED}
        verdicts = {q: meets_target(rows[q], target) for q, target in CHECKED.items()}
        failed = [q for q, ok in verdicts.items() if ok is False]
        checked = [ok for ok in verdicts.values() if ok is not None]
        lines.append({"micro_batch": run["micro_batch"], "recompute": run["recompute"],
                      "stage": stage, "rows": rows, "failed": failed,
                      "passed": (not failed) if checked else None})
    return lines


def sweep_passed(runs: list[dict]) -> bool:
    """Every run succeeded and no checked figure missed its target."""
    return bool(runs) and all(line["passed"] is not False for run in runs
                              for line in stage_lines(run))


def _cells(row: dict | None, value_format: str, scale: float, missing: str) -> list[str]:
    """Predicted, measured (divided by scale) and error of a row; `missing` thrice without one."""
    if row is None:
        return [missing] * 3
    error = "n/a" if row["error_pct"] is None else f"{row['error_pct']:+.1f}%"
    return [format(row["predicted"] / scale, value_format),
            format(row["measured"] / scale, value_format), error]


QUANTITY_LABELS = {"peak": "peak", "step_time_s": "step time"}
COLUMNS = ("micro-batch", "recompute", "stage", "peak GiB predicted", "peak GiB measured",
           "peak error", "step time s predicted", "step time s measured", "step time error",
           "result")


def format_table(runs: list[dict], on_gpu: bool) -> str:
    """The Markdown table: one line per (micro-batch, recompute, stage)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    peak_missing = "n/a" if on_gpu else "n/a (CPU)"
    for run in runs:
        for line in stage_lines(run):
            if line["stage"] is None:
                cells = ["-"] * 7 + ["FAIL: " + run["error"].replace("|", "\\|")]
            else:
                rows = line["rows"]
                result = ({True: "pass", None: "n/a"}[line["passed"]] if not line["failed"] else
                          "FAIL: " + ", ".join(QUANTITY_LABELS[q] for q in line["failed"]))
                cells = [str(line["stage"]), *_cells(rows["peak"], ".2f", GIB, peak_missing),
                         *_cells(rows["step_time_s"], ".4f", 1.0, "n/a"), result]
            cells = [str(run["micro_batch"]), run["recompute"], *cells]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_header(facts: dict, runs: list[dict]) -> str:
    commands = "\n".join(f"    {command}" for command in
                         [facts["sweep_command"], *(run["command"] for run in runs)])
    precision = f", {facts['precision']}" if facts.get("precision") else ""
    return (f"Measured {facts['date_utc']} (UTC) on {facts['device']}{precision}: torch "
            f"{facts['torch']}, DeepSpeed {facts['deepspeed']}, CUDA {facts['cuda']}, llmlaunch "
            f"{facts['llmlaunch']}. Each figure is the worst rank of its pipeline stage (largest "
            f"|error|); targets: peak memory within {PEAK_TARGET_PCT:g}%, step time within "
            f"{STEP_TIME_TARGET_PCT:g}%. Commands:\n\n{commands}\n")


def format_report(facts: dict, runs: list[dict]) -> str:
    verdict = "all pass" if sweep_passed(runs) else "FAILED"
    return (f"{format_header(facts, runs)}\n{format_table(runs, facts['on_gpu'])}\n\n"
            f"Result: {verdict}.\n")


def first_result_value(runs: list[dict], key: str):
    """`key` of the first successful run's validate JSON that has it (None if none does)."""
    return next((run["result"][key] for run in runs if run["ok"] and key in run["result"]), None)


# ------------------------------------------------------------------------------------------------
# Environment (impure) and main
# ------------------------------------------------------------------------------------------------

def local_version(distribution: str) -> str:
    """The installed version, without importing it (DeepSpeed's import logs on stdout)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def local_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def local_cuda_version() -> str:
    try:
        import torch
    except ImportError:
        return "none"
    return torch.version.cuda or "none (CPU build)"


def environment_facts(runs: list[dict], sweep_command: str) -> dict:
    """Date, device, versions and the sweep's command line: device and versions from the runs'
    JSON where present, else from this process."""
    device = first_result_value(runs, "device") or local_device()
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "device": device, "on_gpu": device != "cpu",
            "precision": first_result_value(runs, "precision"),
            "torch": first_result_value(runs, "torch") or local_version("torch"),
            "deepspeed": first_result_value(runs, "deepspeed") or local_version("deepspeed"),
            "cuda": local_cuda_version(), "llmlaunch": llmlaunch_version,
            "sweep_command": sweep_command}


def run_sweep(args, work_dir: Path) -> list[dict]:
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    combos = [(b, r) for b in args.micro_batches for r in args.recompute]
    runs = []
    for index, (micro_batch, recompute) in enumerate(combos, 1):
        name = f"mb{micro_batch}-{recompute}"
        cmd = validate_command(args.config, args.nproc, args.steps, args.set, micro_batch,
                               recompute, str(work_dir / "runs" / name))
        print(f"[{index}/{len(combos)}] {shlex.join(cmd)}", file=sys.stderr, flush=True)
        log_path = work_dir / "logs" / f"{name}.log"
        returncode, stdout, stderr = run_one(cmd, log_path, args.timeout_s)
        run = parse_run(micro_batch, recompute, cmd, returncode, stdout, stderr, args.timeout_s)
        run["log"] = str(log_path)
        if not run["ok"]:
            tail = "\n".join(stderr.rstrip().splitlines()[-20:])
            print(f"{tail}\n[{index}/{len(combos)}] FAILED: {run['error']}", file=sys.stderr,
                  flush=True)
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(argv)
    except UsageError as exc:
        print(f"validate_sweep.py: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        runs = run_sweep(args, out)
    else:
        with tempfile.TemporaryDirectory(prefix="validate-sweep-") as tmp:
            runs = run_sweep(args, Path(tmp))
    sweep_command = shlex.join([sys.executable, __file__,
                                *(sys.argv[1:] if argv is None else argv)])
    facts = environment_facts(runs, sweep_command)
    report = format_report(facts, runs)
    print(report, end="", flush=True)
    if args.out:
        summary = {"facts": facts, "targets_pct": CHECKED, "passed": sweep_passed(runs),
                   "runs": runs}
        write_text_atomic(out / "sweep.json", json.dumps(summary, indent=1) + "\n")
        write_text_atomic(out / "sweep.md", report)
    return 0 if sweep_passed(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
