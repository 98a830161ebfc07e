"""Lion and Adafactor through the real engine path in one process (a one-rank gloo world): the
DeepSpeed engine built as ranks build it (engine.build_engine), the layout-free state written and
read through checkpoints/canonical.py, and the optimizer's measured state against the planner.
The multi-rank runs (dp 2 x pp 2 x tp 2, reshard, validate): tests/ranks/test_optimizer_runs.py."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from llmlaunch.config import RunConfig, apply_overrides

pytestmark = pytest.mark.torch

LLAMA = ["model.arch=llama", "model.layers=2", "model.hidden=64", "model.heads=8",
         "model.kv_heads=4", "model.vocab=1000", "model.seq_len=32", "layout.dp=1", "layout.pp=1",
         "layout.tp=1", "layout.micro_batch=2", "layout.grad_accum=2",
         "train.lr=1e-3", "train.min_lr=1e-3", "train.warmup_steps=0", "train.steps=10"]
# a constant learning rate: the second engine starts its schedule afresh (a resumed run continues
# the tag's: checkpoints/store.py)


@pytest.fixture(scope="module", autouse=True)
def one_rank_world():
    import deepspeed
    import torch.distributed as dist

    import llmlaunch.launcher.engine as engine_module

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saved, saved_beat = dict(os.environ), engine_module.start_heartbeat
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    engine_module.start_heartbeat = lambda: None    # no liveness thread inside the test process
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    engine_module.start_heartbeat = saved_beat
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def config_for(optimizer: str, zero: int, precision: str = "fp32") -> RunConfig:
    return apply_overrides(RunConfig(), [*LLAMA, f"train.optimizer={optimizer}",
                                         f"layout.zero_stage={zero}",
                                         f"train.precision={precision}"]).validate()


def batches(seed: int, count: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        tokens = torch.randint(0, 1000, (2, 33), generator=gen)
        yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def build(config):
    from llmlaunch.launcher.engine import build_engine

    return build_engine(config)


CASES = [("lion", 0), ("lion", 1), ("adafactor", 0)]
# bf16 runs DeepSpeed's BF16_Optimizer (the GPU path) around Lion: its moment through the accessors
MOVES = [(o, z, "fp32") for o, z in CASES] + [("lion", 1, "bf16")]


@pytest.mark.parametrize("optimizer,zero,precision", MOVES,
                         ids=[f"{o}-zero{z}-{p}" for o, z, p in MOVES])
def test_state_moves_through_the_canonical_form_and_training_continues_equal(optimizer, zero,
                                                                            precision):
    """Train 2 steps, write the layout-free state, load it into a new engine: the next step's loss
    and weights equal the first engine's (the optimizer's state and step count came along)."""
    from llmlaunch.launcher.checkpoints.canonical import (adam_step_count, all_parameters,
                                                           ensure_optimizer_state, set_adam_steps,
                                                           set_state, snapshot)

    config = config_for(optimizer, zero, precision)
    first = build(config)
    stream = batches(0, 4)
    losses = [first.train_step(stream) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    share = dict(snapshot(first))
    qkv = share["canonical/blocks.0.attn.qkv.weight/tp0.pt"]
    if optimizer == "adafactor":
        assert set(qkv) == {"param", "exp_avg_sq_row", "exp_avg_sq_col"}
        assert set(share["canonical/blocks.0.ln1.weight/tp0.pt"]) == {"param", "exp_avg_sq"}
    else:
        assert set(qkv) == {"param", "exp_avg"}
    assert adam_step_count(first.engine) == 2

    second = build(config)
    ensure_optimizer_state(second.engine)
    for name, param in all_parameters(second.engine.module):
        set_state(second.engine, param, share[f"canonical/{name}/tp0.pt"], 0)
    set_adam_steps(second.engine, 2)
    step_batches = list(batches(1, 2))
    a = first.train_step(iter(step_batches))
    b = second.train_step(iter(step_batches))
    assert a == b
    for (_, p), (_, q) in zip(all_parameters(first.engine.module),
                              all_parameters(second.engine.module)):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("optimizer,zero", CASES, ids=[f"{o}-zero{z}" for o, z in CASES])
def test_measured_optimizer_state_within_one_percent_of_the_planner(optimizer, zero):
    """What `llmlaunch validate` compares, in one process: the state's storages after a step."""
    from llmlaunch.launcher.memory_probe import optimizer_bytes
    from llmlaunch.launcher.validate import predictions

    config = config_for(optimizer, zero)
    run = build(config)
    run.train_step(batches(2, 2))
    predicted = predictions(config, "fp32", None, config.layout_obj())[0]["optimizer"]
    measured = optimizer_bytes(run.engine)
    assert abs(measured - predicted) <= 0.01 * predicted, (measured, predicted)


def test_a_tag_of_another_optimizer_is_refused_by_name():
    from llmlaunch.launcher.checkpoints.canonical import (all_parameters, ensure_optimizer_state,
                                                           set_state)

    run = build(config_for("adafactor", 0))
    ensure_optimizer_state(run.engine)
    name, param = next(iter(all_parameters(run.engine.module)))
    adam = {"param": param.detach().clone(), "exp_avg": torch.zeros_like(param),
            "exp_avg_sq": torch.zeros_like(param)}
    with pytest.raises(ValueError, match="written under another train.optimizer"):
        set_state(run.engine, param, adam, 0)
