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


@pytest.mark.parametrize("pp, zero", [(2, 2), (1, 2), (1, 3)])
def test_zero2_and_3_are_refused_with_the_reason(pp, zero):
    # the model is a PipelineModule at any pp: DeepSpeed's PipelineEngine asserts ZeRO < 2
    config = RunConfig()
    config.layout.pp, config.layout.zero_stage = pp, zero
    with pytest.raises(ConfigError, match="ZeRO 0 and 1 only"):
        deepspeed_config(config, "bf16")


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
