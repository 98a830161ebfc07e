"""topology/op_counts.py against the real model/: the ops one forward + backward dispatches, counted
by the same dispatcher hook validate's device probe uses."""
import pytest
import torch

from llmlaunch.launcher.device_probe import count_dispatched_ops
from llmlaunch.model.lm import LocalLM, leading_items
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.op_counts import (BLOCK_OPS, EMBEDDING_OPS, HEAD_LOSS_OPS,
                                          stage_ops_per_micro_batch)

pytestmark = pytest.mark.filterwarnings("ignore")


def tiny(arch: str, layers: int, **fields) -> ModelSpec:
    extra = {"kv_heads": 2} if arch != "gpt2" else {}
    return ModelSpec(name="t", arch=arch, layers=layers, hidden=32, heads=4, vocab=128, seq_len=16,
                     **extra, **fields)


def model_ops(spec: ModelSpec, recompute: str) -> tuple[int, int]:
    """(ops of a whole forward + loss + backward, ops of the embedding items' forward + backward)."""
    torch.manual_seed(0)
    model = LocalLM(spec, recompute=recompute)
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len + 1))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    def whole():
        model.loss_fn(model(inputs), labels).backward()

    def embedding():
        hidden = inputs
        for forward in model._forwards[:leading_items(spec)]:
            hidden = forward(hidden)
        hidden.backward(torch.ones_like(hidden))

    whole(), embedding()          # warm-up: first calls may take other paths
    return count_dispatched_ops(whole), count_dispatched_ops(embedding)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_op_counts_match_the_model(arch, recompute):
    one, embedding = model_ops(tiny(arch, 1), recompute)
    two, _ = model_ops(tiny(arch, 2), recompute)
    block = two - one
    assert block == BLOCK_OPS[arch][recompute]
    outer = "gpt2" if arch == "gpt2" else "llama"
    assert embedding == EMBEDDING_OPS[outer]
    assert one - block - embedding == HEAD_LOSS_OPS[outer]


@pytest.mark.parametrize("fields", [dict(arch="mistral"), dict(arch="mistral", sliding_window=4),
                                    dict(arch="qwen2", tied_embeddings=True, sliding_window=8),
                                    dict(arch="qwen3", head_dim=16, tied_embeddings=True)],
                         ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_stage_op_counts_match_variants(fields, recompute):
    """Whole-model counts of the variants (window mask, tying, head_dim) equal what the planner
    counts for a one-stage model of two blocks."""
    fields = dict(fields)
    arch = fields.pop("arch")
    spec = tiny(arch, 2, **fields)
    whole, _ = model_ops(spec, recompute)
    assert whole == stage_ops_per_micro_batch(spec, blocks=2, first=True, last=True,
                                              recompute=recompute)
