"""DeepSpeed configs (derived and shipped in ds_configs/) are accepted by DeepSpeed's own parser."""
import json
import os
from pathlib import Path

import pytest

from llmlaunch.config import ConfigError, RunConfig
from llmlaunch.launcher.ds_config import deepspeed_config

REPO = Path(__file__).resolve().parents[2]


class FakeMpu:
    """DeepSpeedConfig asks the model-parallel unit for the data-parallel world size."""

    def __init__(self, dp):
        self.dp = dp

    def get_data_parallel_world_size(self):
        return self.dp


@pytest.fixture(scope="module", autouse=True)
def single_process_group():
    # DeepSpeedConfig reads deepspeed.comm's rank: a one-process gloo world satisfies it
    import deepspeed
    import torch.distributed as dist

    saved = dict(os.environ)
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())})
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)  # later tests start jobs that must not inherit these


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse(ds: dict, dp: int):
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig(ds, mpu=FakeMpu(dp))


@pytest.mark.parametrize("pp, zero, precision", [(2, 1, "bf16"), (1, 1, "bf16"), (1, 0, "fp32"),
                                                 (4, 0, "fp32")])
def test_derived_config_is_accepted(pp, zero, precision):
    config = RunConfig()
    config.layout.dp, config.layout.pp, config.layout.micro_batch, config.layout.grad_accum = 4, pp, 2, 8
    config.layout.zero_stage = zero
    config.model.layers = 4
    ds = deepspeed_config(config.validate(), precision)
    parsed = parse(ds, dp=4)
    assert parsed.train_batch_size == 2 * 8 * 4
    assert parsed.zero_optimization_stage == zero
    assert parsed.bfloat16_config.enabled == (precision == "bf16")
    if precision == "bf16" and pp > 1:
        assert ds["data_types"]["grad_accum_dtype"] == "fp32"


def test_a_pipeline_refuses_zero2_and_3_with_the_pins_that_work():
    config = RunConfig()
    config.layout.pp, config.layout.zero_stage = 2, 2
    with pytest.raises(ConfigError, match="pin pp=1"):
        deepspeed_config(config, "bf16")


@pytest.mark.parametrize("zero, offload", [(2, "none"), (3, "none"), (2, "optimizer"),
                                           (3, "optimizer+params")])
@pytest.mark.parametrize("on_gpu", [True, False])
def test_plain_engine_configs_are_accepted(zero, offload, on_gpu):
    config = RunConfig()
    config.layout.dp, config.layout.micro_batch, config.layout.grad_accum = 4, 2, 8
    config.layout.zero_stage, config.layout.offload = zero, offload
    ds = deepspeed_config(config.validate(), "bf16", on_gpu=on_gpu)
    parsed = parse(ds, dp=4)
    assert parsed.zero_optimization_stage == zero
    zero_cfg = ds["zero_optimization"]
    assert ("offload_optimizer" in zero_cfg) == (offload != "none")
    assert ("offload_param" in zero_cfg) == (offload == "optimizer+params")
    # buckets no larger than what a rank holds (DeepSpeed allocates them whole)
    from llmlaunch.topology.params import total_params
    assert zero_cfg["reduce_bucket_size"] <= total_params(config.model_spec()) + 1024 * 128
    if zero == 3:
        assert zero_cfg["stage3_prefetch_bucket_size"] == 5e7
    assert ds.get("zero_force_ds_cpu_optimizer", True) == (on_gpu or offload == "none")


def test_bf16_with_zero0_is_refused_with_the_fix():
    # DeepSpeed raises "unsupported mix of model_dtype=bfloat16 and grad_accum_dtype=float32" at
    # start-up for this combination
    config = RunConfig()
    config.layout.zero_stage = 0
    with pytest.raises(ConfigError, match="use layout.zero_stage=1"):
        deepspeed_config(config, "bf16")
    assert deepspeed_config(config, "fp32")["zero_optimization"] == {"stage": 0}


@pytest.mark.parametrize("path", sorted((REPO / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_reference_configs_are_accepted(path):
    ds = json.loads(path.read_text())
    dp = ds["train_batch_size"] // (ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"])
    parse(ds, dp=dp)


def test_emitted_zero3_layout_for_llama2_70b_is_accepted_as_planned(tmp_path):
    # issue 13: `plan --emit` of a pinned ZeRO-3 pp = 1 layout writes a config DeepSpeed's parser
    # accepts, with the ZeRO-3 limits the planner prices (topology/memory.py)
    import yaml

    from llmlaunch.cli import main
    from llmlaunch.topology import memory

    out = tmp_path / "llama70b"
    assert main(["plan", "--gpus", "64", "--model", "llama2-70b", "--dp", "8", "--pp", "1",
                 "--tp", "8", "--zero", "3", "--micro-batch", "8", "--recompute", "full",
                 "--emit", str(out)]) == 0
    ds = json.loads((out / "ds_config.json").read_text())
    parsed = parse(ds, dp=8)
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_batch_size == 8 * ds["gradient_accumulation_steps"] * 8
    zero = parsed.zero_config
    assert zero.prefetch_bucket_size == memory.ZERO3_PREFETCH_ELEMENTS
    assert zero.param_persistence_threshold == memory.ZERO3_PERSISTENCE_THRESHOLD
    assert zero.max_live_parameters == memory.ZERO3_MAX_LIVE_PARAMETERS
    assert zero.reduce_bucket_size == memory.REDUCE_BUCKET_ELEMENTS
    assert zero.offload_optimizer is None and zero.offload_param is None
    layout = yaml.safe_load((out / "run.yaml").read_text())["layout"]
    assert (layout["dp"], layout["pp"], layout["tp"], layout["zero_stage"]) == (8, 1, 8, 3)


def test_emitted_offload_layout_is_accepted_with_both_offloads(tmp_path):
    # llama2-70b on 8 A100-80GB fits only with ZeRO-3 and the optimizer and parameters in CPU
    # memory: the search picks that, and --emit writes what DeepSpeed reads for it
    from llmlaunch.cli import main

    out = tmp_path / "llama70b-8"
    assert main(["plan", "--gpus", "8", "--model", "llama2-70b", "--emit", str(out)]) == 0
    ds = json.loads((out / "ds_config.json").read_text())
    zero = parse(ds, dp=8).zero_config
    assert ds["zero_optimization"]["stage"] == 3
    assert zero.offload_optimizer.device == "cpu" and zero.offload_param.device == "cpu"
