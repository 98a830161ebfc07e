"""train.monitors (launcher/monitors.py): TensorBoard event files and metrics.csv carry metrics.jsonl's
values, resume drops the same lost steps everywhere, and wandb's offline path is wired as W&B
documents it (wandb is optional for users; the test extra installs it so that its real offline run
is tested here too)."""
from __future__ import annotations

import csv
import json
import sys
import time
import types

import pytest

from llmlaunch.config import RunConfig, apply_overrides
from llmlaunch.config_sections import ConfigError
from llmlaunch.launcher.metrics import MetricsLog
from llmlaunch.launcher.monitors import CSV_COLUMNS, missing_packages

pytestmark = pytest.mark.torch


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under log_dir, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def record(step: int) -> dict:
    return {"step": step, "loss": 10.0 / step, "lr": 1e-3 * step, "grad_norm": 0.5 + step,
            "tokens_per_s": 1000.0 + step, "tflops_per_gpu": 0.1, "mfu": None,
            "step_time_s": 0.25, "step_time_predicted_s": 0.2, "memory_gib": 1.5,
            **({"eval_loss": 3.0} if step % 2 == 0 else {}),
            "samples_by_source": {"a": step}}


def config_with(*monitors) -> RunConfig:
    return apply_overrides(RunConfig(), [f"train.monitors=[{','.join(monitors)}]"])


def test_tensorboard_and_csv_carry_the_jsonl_values_and_resume_drops_lost_steps(tmp_path):
    config = config_with("tensorboard", "csv")
    log = MetricsLog(tmp_path / "metrics.jsonl", 0, config)
    for step in range(1, 7):
        log.write(record(step))
    log.close()
    # a crash after step 6 lost steps 5-6 (the checkpoint is at 4): resume and train 5-7 again
    log = MetricsLog(tmp_path / "metrics.jsonl", 4, config)
    for step in range(5, 8):
        log.write(dict(record(step), loss=20.0 / step))
    log.close()
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == list(range(1, 8))
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in jsonl]
    assert scalars["train/eval_loss"] == [(s, pytest.approx(3.0)) for s in (2, 4, 6)]
    for key in ("lr", "grad_norm", "tokens_per_s", "step_time_s", "step_time_predicted_s",
                "memory_gib"):
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([r[key] for r in jsonl])
    assert "train/mfu" not in scalars and "train/samples_by_source" not in scalars
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in jsonl]
    assert rows[0]["eval_loss"] == "" and rows[0]["mfu"] == "" and rows[1]["eval_loss"] == "3.0"


def test_monitor_names_and_wandb_mode_are_checked():
    with pytest.raises(ConfigError, match="train.monitors: unknown 'tensorbord'; known: "
                                          "tensorboard, csv, wandb"):
        config_with("tensorbord").validate()
    with pytest.raises(ConfigError, match="train.wandb_mode must be offline or online"):
        apply_overrides(RunConfig(), ["train.wandb_mode=cloud"]).validate()
    with pytest.raises(ConfigError, match="must be a list of strings"):
        apply_overrides(RunConfig(), ["train.monitors=[1]"])


def test_a_missing_package_is_named_with_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    assert missing_packages(["csv", "wandb"]) == ["wandb: pip install wandb"]
    with pytest.raises(RuntimeError, match="lacks: wandb: pip install wandb"):
        MetricsLog(tmp_path / "metrics.jsonl", 0, config_with("wandb"))


def test_real_wandb_offline_writes_its_run_directory(tmp_path, monkeypatch):
    """The installed wandb, offline (no network): RUN_DIR/wandb/offline-run-*/ holds the run's
    datastore (run-ID.wandb) with the records written, which `wandb sync` uploads later."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path / "metrics.jsonl", 0, config_with("wandb"))
    for step in (1, 2, 3):
        log.write(record(step))
    log.close()
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    [store] = run.glob("run-*.wandb")
    deadline = time.monotonic() + 30   # wandb's service process writes the store after finish()
    while store.read_bytes().count(b"tokens_per_s") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    data = store.read_bytes()          # protobuf records: the history items' keys are in clear
    assert data.count(b"tokens_per_s") >= 3 and data.count(b"eval_loss") >= 1   # steps 1-3, step 2
    assert (tmp_path / "wandb" / "latest-run").resolve() == run.resolve()


def test_wandb_is_offline_unless_asked_and_writes_under_the_run_dir(monkeypatch, tmp_path):
    """The calls W&B documents for an offline run (wandb.init(mode='offline', dir=RUN_DIR) writes
    RUN_DIR/wandb/offline-run-*), pinned through a module that records them: what llmlaunch asks of
    wandb, independent of the installed version (the real run: the test above)."""
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = types.SimpleNamespace(name="wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: fake.__spec__ if name == "wandb" else real(name, *a))
    log = MetricsLog(tmp_path / "metrics.jsonl", 0, config_with("wandb"))
    log.write(record(1))
    log.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["dir"] == str(tmp_path)
    assert init["project"] == "llmlaunch" and init["config"]["train"]["monitors"] == ["wandb"]
    assert (tmp_path / "wandb").is_dir()
    assert calls[1] == ("log", {k: v for k, v in record(1).items()
                                if k not in ("step", "mfu", "samples_by_source")}, 1)
    assert calls[-1] == ("finish",)


def test_trainer_log_plan_and_run_page_share_mfu_and_predicted_step_time(tmp_path, caplog,
                                                                          monkeypatch):
    """One plan, one definition each: the trainer's StepMonitor (what metrics.jsonl and the training
    log get) at the planner's step time reports the planner's MFU, logs the planner's step time as
    its prediction, and the run page plots that same prediction. The progress line is given the
    step's loss before it is drawn (update() draws it: the loss no longer lags a step)."""
    import logging

    from llmlaunch.launcher import trainer

    calls = []

    class Progress:
        def set_postfix(self, postfix, refresh):
            calls.append(("postfix", postfix["loss"]))

        def update(self, n):
            calls.append(("draw", n))

        def close(self):
            pass

    monkeypatch.setattr(trainer, "_progress", lambda start, total: Progress())

    from llmlaunch.cli import main
    from llmlaunch.config import load_run_config
    from llmlaunch.cli.plan import plan_from_argv
    from llmlaunch.launcher.trainer import StepMonitor
    from llmlaunch.metrics_file import read_metrics
    from llmlaunch.report.run_page import predicted_step_time_s

    argv = ["--gpus", "256", "--model", "llama3-8b", "--gpu", "h100-80gb", "--tokens", "15e12"]
    _, _, best = plan_from_argv(argv)
    run_dir = tmp_path / "run"
    assert main(["plan", *argv, "--emit", str(run_dir)]) == 0
    config = load_run_config(run_dir / "run.yaml")
    with caplog.at_level(logging.INFO, logger="llmlaunch.rank"):
        monitor = StepMonitor(config, config.layout_obj(), run_dir, world=256, precision="bf16",
                              start_step=0)
        monitor.record(1, 11.5, 3e-4, 1.0, best.step.total_s)
        monitor.record(2, 10.25, 3e-4, 1.0, best.step.total_s)
        monitor.close()
    assert calls == [("postfix", "11.5000"), ("draw", 1), ("postfix", "10.2500"), ("draw", 1)]
    assert f"planner predicts {best.step.total_s:.3f} s per step" in caplog.text
    record = read_metrics(run_dir / "metrics.jsonl")[0]
    assert record["mfu"] == pytest.approx(best.mfu, rel=1e-9)
    assert record["step_time_predicted_s"] == pytest.approx(best.step.total_s, rel=1e-12)
    assert predicted_step_time_s([record], None) == record["step_time_predicted_s"]
