"""train.optimizer and `plan --optimizer`: what is refused before any rank starts, with one line
naming the key, and what the planner counts (topology/optimizer_states.py; the counts against the
allocated states: tests/torch/test_optimizers.py, against real ranks: tests/ranks/
test_optimizer_runs.py)."""
import json

import pytest

from llmlaunch.cli import main
from llmlaunch.config import ConfigError, RunConfig, apply_overrides

pytestmark = pytest.mark.unit


def checked(*sets):
    return apply_overrides(RunConfig(), list(sets)).validate()


def test_unknown_optimizer_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"train.optimizer must be one of adamw, lion, adafactor, "
                                          r"got 'sgd'"):
        checked("train.optimizer=sgd")


def test_adafactor_needs_zero_0_and_fp32():
    with pytest.raises(ConfigError, match=r"adafactor needs layout.zero_stage=0"):
        checked("train.optimizer=adafactor", "layout.zero_stage=1")
    with pytest.raises(ConfigError, match=r"adafactor runs in fp32 \(train.precision=fp32\)"):
        checked("train.optimizer=adafactor", "layout.zero_stage=0", "train.precision=bf16")
    with pytest.raises(ConfigError, match=r"adafactor runs in fp32"):   # auto is bf16 on a GPU
        checked("train.optimizer=adafactor", "layout.zero_stage=0", "cluster.gpu=h100-80gb")
    assert checked("train.optimizer=adafactor", "layout.zero_stage=0").train.optimizer == \
        "adafactor"
    assert checked("train.optimizer=lion", "layout.zero_stage=1").train.optimizer == "lion"


def test_lion_is_refused_with_offload():
    with pytest.raises(ConfigError, match=r"train.optimizer lion with layout.offload optimizer"):
        checked("train.optimizer=lion", "layout.pp=1", "layout.zero_stage=2",
                "layout.offload=optimizer")


def plan_worst_optimizer_gib(capsys, *args):
    assert main(["plan", "--json", "--model", "gpt3-350m", "--gpus", "8", "--dp", "8", "--pp", "1",
                 "--tp", "1", "--zero", "0", "--micro-batch", "1", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optimizer"] == (args[1] if args else "adamw")
    return out["candidates"][0]["stages"][0]["memory_gib"]["optimizer"]


def test_plan_counts_lion_at_half_of_adamw(capsys):
    """bf16 at ZeRO-0: AdamW 12 bytes per parameter (master, m, v), Lion 8 (master, m)."""
    adamw = plan_worst_optimizer_gib(capsys)
    lion = plan_worst_optimizer_gib(capsys, "--optimizer", "lion")
    assert lion == pytest.approx(adamw * 8 / 12, rel=1e-3)


def test_plan_refuses_adafactor_where_it_cannot_factor(capsys):
    assert main(["plan", "--model", "llama2-7b", "--gpus", "8", "--optimizer", "adafactor"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimizer adafactor runs in fp32" in err[0]


def test_ds_config_leaves_lion_and_adafactor_to_the_client_optimizer():
    """ds_config.json names AdamW only; Lion and Adafactor are handed to deepspeed.initialize
    (launcher/optimizers.py), which ZeRO accepts once told to."""
    from llmlaunch.launcher.ds_config import deepspeed_config

    adamw = deepspeed_config(checked(), "fp32", on_gpu=False)
    assert adamw["optimizer"]["type"] == "AdamW"
    lion = deepspeed_config(checked("train.optimizer=lion"), "fp32", on_gpu=False)
    assert "optimizer" not in lion and lion["zero_allow_untested_optimizer"] is True
    config = checked("train.optimizer=adafactor", "layout.zero_stage=0")
    assert "optimizer" not in deepspeed_config(config, "fp32", on_gpu=False)
    with pytest.raises(ConfigError, match="adafactor runs in fp32 at layout.zero_stage=0"):
        deepspeed_config(config, "bf16", on_gpu=True)    # precision auto resolved on a GPU
