"""Tensor-parallel pieces against their single-process equivalents, as functions of a TP group:
the vocab-parallel cross-entropy (values and gradients, padded columns included), the vocab-parallel
embedding, and the whole model split over TP ranks (logits, loss, every parameter's gradient slice).
tests/torch/test_model_tp_one_rank.py runs them at tp=1, tests/ranks/test_model_tp.py on gloo ranks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlaunch.model.lm import LMLoss, LocalLM, build_items, initialise, layer_specs
from llmlaunch.model.sharding import canonical_named_parameters, merge_shards, shard_tensor, tp_split
from llmlaunch.model.tp import (TensorParallelGroup, VocabParallelEmbedding, gather_logits,
                                vocab_parallel_cross_entropy)
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.params import padded_vocab

VOCAB = 200   # padded to 256 (tp 1, 2) or 512 (tp 4: two ranks hold padding only)
SPECS = {
    "gpt2": ModelSpec(arch="gpt2", layers=2, hidden=64, heads=4, vocab=VOCAB, seq_len=16),
    "llama": ModelSpec(arch="llama", layers=2, hidden=64, heads=8, kv_heads=4, vocab=VOCAB,
                       seq_len=16),
    # QKV biases split like the QKV rows; a tied head
    "qwen2": ModelSpec(arch="qwen2", layers=2, hidden=64, heads=8, kv_heads=4, vocab=VOCAB,
                       seq_len=16, tied_embeddings=True),
    # QK-norm weights replicated; q = 8 x 16 = 128 wider than h
    "qwen3": ModelSpec(arch="qwen3", layers=2, hidden=64, heads=8, kv_heads=4, head_dim=16,
                       vocab=VOCAB, seq_len=16),
    "mistral": ModelSpec(arch="mistral", layers=2, hidden=64, heads=8, kv_heads=4, vocab=VOCAB,
                         seq_len=16, sliding_window=5),
}
TOLERANCE = 1e-5


def cross_entropy_errors(tp: TensorParallelGroup) -> dict[str, float]:
    """Max abs differences of our CE from F.cross_entropy on the gathered, unpadded logits."""
    generator = torch.Generator().manual_seed(0)
    padded = padded_vocab(VOCAB, tp.size)
    tokens = 64
    full = torch.randn(tokens, padded, generator=generator) * 3
    full[:, VOCAB:] = 50.0           # padded columns that would dominate if they were counted
    target = torch.randint(0, VOCAB, (tokens,), generator=generator)
    target[:4] = torch.tensor([0, VOCAB - 1, 127, 128])     # both ends, and a rank boundary
    grad_out = torch.rand(tokens, generator=generator)

    reference_logits = full[:, :VOCAB].clone().requires_grad_()
    reference = F.cross_entropy(reference_logits, target, reduction="none")
    reference.backward(grad_out)
    reference_grad = torch.cat([reference_logits.grad, torch.zeros(tokens, padded - VOCAB)], -1)

    width = padded // tp.size
    local = full[:, tp.rank * width:(tp.rank + 1) * width].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target, tp, VOCAB)
    loss.backward(grad_out)
    expected_grad = reference_grad[:, tp.rank * width:(tp.rank + 1) * width]
    padded_columns = torch.arange(tp.rank * width, (tp.rank + 1) * width) >= VOCAB
    return {"ce_loss": (loss - reference).abs().max().item(),
            "ce_grad": (local.grad - expected_grad).abs().max().item(),
            "ce_padded_grad": local.grad[:, padded_columns].abs().max().item()
            if padded_columns.any() else 0.0}


def embedding_errors(tp: TensorParallelGroup) -> dict[str, float]:
    """Vocab-parallel lookup against F.embedding, forward and the weight gradient."""
    generator = torch.Generator().manual_seed(1)
    padded = padded_vocab(VOCAB, tp.size)
    table = torch.randn(padded, 8, generator=generator)
    tokens = torch.randint(0, VOCAB, (3, 10), generator=generator)
    grad_out = torch.randn(3, 10, 8, generator=generator)
    reference_table = table.clone().requires_grad_()
    F.embedding(tokens, reference_table).backward(grad_out)

    embedding = VocabParallelEmbedding(padded, 8, tp)
    rows = slice(embedding.vocab_start, embedding.vocab_start + embedding.rows_per_rank)
    with torch.no_grad():
        embedding.weight.copy_(table[rows])
    out = embedding(tokens)
    out.backward(grad_out)
    return {"embedding_out": (out - F.embedding(tokens, table)).abs().max().item(),
            "embedding_grad":
                (embedding.weight.grad - reference_table.grad[rows]).abs().max().item()}


def model_errors(tp: TensorParallelGroup, arch: str, recompute: str) -> dict[str, float]:
    """The model split over tp ranks against the single-process model: logits, loss, grads."""
    spec = SPECS[arch]
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len + 1), generator=generator)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    reference = LocalLM(spec, seed=5)
    reference_logits = reference(inputs)
    reference_loss = reference.loss_fn(reference_logits, labels)
    reference_loss.backward()
    reference_grads = {name: merge_shards([p.grad], tp_split(spec, name))   # unpadded, full
                       for name, p in canonical_named_parameters(reference)}

    modules, forwards = build_items(layer_specs(spec, tp, recompute))
    model = nn.ModuleList(modules)
    initialise(model, spec, tp, seed=5)
    x = inputs
    for forward in forwards:
        x = forward(x)
    loss = LMLoss(spec.vocab, tp)(x, labels)
    loss.backward()
    grad_error = 0.0
    for name, param in canonical_named_parameters(model):
        expected = shard_tensor(reference_grads[name], tp_split(spec, name), tp.rank, tp.size)
        grad_error = max(grad_error, (param.grad - expected).abs().max().item())
    logits_error = (gather_logits(x, tp, spec.vocab)
                    - reference_logits[..., :spec.vocab]).abs().max().item()
    return {f"{arch}_{recompute}_logits": logits_error,
            f"{arch}_{recompute}_loss": abs(loss.item() - reference_loss.item()),
            f"{arch}_{recompute}_grads": grad_error}


def all_errors(tp: TensorParallelGroup) -> dict[str, float]:
    errors = {**cross_entropy_errors(tp), **embedding_errors(tp)}
    for arch, recompute in (("gpt2", "none"), ("llama", "none"), ("gpt2", "full"),
                            ("llama", "selective"), ("qwen2", "none"), ("qwen3", "selective"),
                            ("mistral", "full")):
        errors.update(model_errors(tp, arch, recompute))
    return errors


def assert_small(errors: dict[str, float]):
    assert errors and max(errors.values()) < TOLERANCE, errors
