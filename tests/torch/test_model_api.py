"""The package surface: lazy import, builder options (recompute modes, dtype), layout-independent
initialisation and the batch convention, in one process."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import llmlaunch.model as model_package
from llmlaunch.model import LocalLM, next_token_batch, replica_micro_batches
from llmlaunch.model.lm import build_items, initialise, layer_specs
from llmlaunch.model.sharding import (canonical_named_parameters, canonical_shapes, merge_shards,
                                      tp_split)
from llmlaunch.model.tp import TensorParallelGroup
from llmlaunch.topology.layout import RECOMPUTE_MODES
from llmlaunch.topology.model_spec import ModelSpec

SPECS = {
    "gpt2": ModelSpec(arch="gpt2", layers=2, hidden=64, heads=4, vocab=200, seq_len=16),
    "llama": ModelSpec(arch="llama", layers=2, hidden=64, heads=4, kv_heads=2, vocab=200,
                       seq_len=16),
}


def test_importing_the_package_loads_neither_torch_nor_deepspeed():
    code = ("import sys, llmlaunch.model; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in model_package.__all__:
        assert getattr(model_package, name) is not None, name
    with pytest.raises(AttributeError):
        model_package.no_such_name


def loss_and_grads(spec, recompute):
    model = LocalLM(spec, recompute=recompute, seed=11)
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len + 1),
                           generator=torch.Generator().manual_seed(3))
    inputs, labels = next_token_batch(tokens)
    loss = model.loss_fn(model(inputs), labels)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in canonical_named_parameters(model)}


@pytest.mark.parametrize("arch", SPECS)
def test_recompute_modes_give_the_same_loss_and_gradients(arch):
    assert RECOMPUTE_MODES == ("none", "selective", "full")
    reference_loss, reference_grads = loss_and_grads(SPECS[arch], "none")
    for mode in ("selective", "full"):
        loss, grads = loss_and_grads(SPECS[arch], mode)
        assert loss == pytest.approx(reference_loss, rel=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-7)


def test_recompute_modes_really_recompute():
    """Count attention-core calls: selective runs the core again in backward, full the block."""
    spec = SPECS["gpt2"]
    calls = {}
    for mode in RECOMPUTE_MODES:
        model = LocalLM(spec, recompute=mode)
        block = model.items[2]
        counter = {"core": 0, "mlp": 0}
        original_core = block.attn.core

        def counting_core(*args, _original=original_core, _counter=counter):
            _counter["core"] += 1
            return _original(*args)

        block.attn.core = counting_core
        # a pre-hook: non-reentrant checkpointing stops recomputing once the last saved tensor is
        # back, before the block's last module returns
        block.mlp.register_forward_pre_hook(lambda *_, _counter=counter: _counter.update(
            mlp=_counter["mlp"] + 1))
        inputs, labels = next_token_batch(torch.randint(0, spec.vocab, (1, spec.seq_len + 1)))
        model.loss_fn(model(inputs), labels).backward()
        calls[mode] = counter
    assert calls == {"none": {"core": 1, "mlp": 1}, "selective": {"core": 2, "mlp": 1},
                     "full": {"core": 2, "mlp": 2}}


def test_unknown_recompute_mode_is_refused():
    with pytest.raises(ValueError, match="selective"):
        LocalLM(SPECS["gpt2"], recompute="partial")


def test_dtype_argument_sets_the_parameter_dtype():
    model = LocalLM(SPECS["llama"], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = model(torch.randint(0, 200, (1, 8)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("arch", SPECS)
@pytest.mark.parametrize("tp", [2, 4])
def test_initialisation_does_not_depend_on_the_layout(arch, tp):
    """The TP ranks' initial slices merge into exactly the single-process model's tensors."""
    spec = SPECS[arch]
    if spec.kv_heads % tp:
        spec = spec.replace(kv_heads=spec.heads)
    reference = {n: merge_shards([p.detach()], tp_split(spec, n))
                 for n, p in canonical_named_parameters(LocalLM(spec, seed=42))}
    slices = {}
    for rank in range(tp):
        group = TensorParallelGroup(rank, tp)
        modules, _ = build_items(layer_specs(spec, group, "none"))
        holder = torch.nn.ModuleList(modules)
        initialise(holder, spec, group, seed=42)
        for name, param in canonical_named_parameters(holder):
            slices.setdefault(name, []).append(param.detach())
    assert slices.keys() == canonical_shapes(spec).keys() == reference.keys()
    for name, parts in slices.items():
        assert torch.equal(merge_shards(parts, tp_split(spec, name)), reference[name]), name
    # and the seed matters
    other = dict(canonical_named_parameters(LocalLM(spec, seed=43)))
    assert not torch.equal(other["blocks.0.attn.qkv.weight"], reference["blocks.0.attn.qkv.weight"])


def test_initial_scales_follow_gpt2():
    spec = ModelSpec(arch="gpt2", layers=8, hidden=256, heads=4, vocab=1000, seq_len=64)
    params = {n: p.detach() for n, p in canonical_named_parameters(LocalLM(spec))}
    assert params["blocks.0.mlp.fc1.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert params["blocks.0.mlp.fc2.weight"].std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert params["blocks.0.attn.out.weight"].std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert torch.equal(params["blocks.0.ln1.weight"], torch.ones(256))
    assert torch.equal(params["blocks.0.attn.qkv.bias"], torch.zeros(768))
    assert params["embed.token.weight"][1000:].abs().max() == 0     # padding rows


def test_batch_convention_labels_are_next_tokens_and_replicas_split_the_batch():
    tokens = torch.arange(8 * 5).view(8, 5)
    inputs, labels = next_token_batch(tokens)
    assert torch.equal(inputs, tokens[:, :4]) and torch.equal(labels, tokens[:, 1:])
    replicas = [replica_micro_batches(tokens, 2, rank, 2) for rank in range(2)]
    assert [len(r) for r in replicas] == [2, 2]
    rows = torch.cat([micro[0] for replica in replicas for micro in replica])
    assert torch.equal(rows, tokens[:, :4])
    with pytest.raises(ValueError):
        replica_micro_batches(tokens, 3, 0, 2)
