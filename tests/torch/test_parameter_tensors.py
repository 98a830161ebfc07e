"""The planner's count of parameter tensors (what ZeRO's per-tensor host time is priced on) is the
model's own."""
import pytest
import torch

from llmlaunch.config import RunConfig
from llmlaunch.model.dense import build_dense_items
from llmlaunch.model.tp import TensorParallelGroup
from llmlaunch.topology.zero_time import parameter_tensors


@pytest.mark.parametrize("arch, sets", [("gpt2", {}), ("llama", {"kv_heads": 2})])
def test_parameter_tensors_match_the_built_model(arch, sets):
    config = RunConfig()
    config.model.arch = arch
    for key, value in sets.items():
        setattr(config.model, key, value)
    spec = config.model_spec()
    model = torch.nn.ModuleList(build_dense_items(spec, TensorParallelGroup(), "none"))
    built = len(list(model.parameters()))
    assert parameter_tensors(spec, blocks=spec.layers, first=True, last=True) == built
    assert built == (52 if arch == "gpt2" else 27)   # 4 blocks of 12 + 4; 4 blocks of 6 + 3
