"""Framework ops one micro-batch dispatches in llmlaunch's model/ (forward + backward, per rank).

Each op costs the host a roughly fixed time (PyTorch's eager dispatch, autograd bookkeeping and, on
a GPU, the kernel launch) whatever its size, so a small model or a small micro-batch can be bound by
the host rather than the device (He 2022, "Making Deep Learning Go Brrrr From First Principles",
the overhead regime). step_time.py multiplies these counts by the device's `op_overhead_us`.

The counts are facts of this implementation, not of the architecture: every op that reaches
PyTorch's dispatcher (views included - they cost host time though they launch no kernel) in one
forward and backward at tp = 1 in fp32, as `torch.utils._python_dispatch.TorchDispatchMode` sees
them. A bf16 run dispatches a few more (the casts around llama's RMSNorm: 186 rather than 174 a
block; the loss's upcast: 59 rather than 57 for gpt2's head and loss), under 7%; not modelled.
tests/test_op_counts.py counts the real model/ modules and fails when these numbers drift, so a
change to the model that adds or removes ops must update them. TP > 1 adds a few masking ops in the
vocab-parallel embedding and cross-entropy (not counted) and its collectives (step_time.py times
those with the collective latency).
"""
from __future__ import annotations

from .model_spec import ModelSpec

# One transformer block, forward + backward; with recompute the backward re-runs the recomputed part
# (selective: the attention core; full: the whole block, under torch.utils.checkpoint).
# mistral's block is llama's; qwen2 adds the QKV bias, qwen3 the two QK-norms.
BLOCK_OPS = {
    "gpt2": {"none": 102, "selective": 109, "full": 167},
    "llama": {"none": 174, "selective": 181, "full": 285},
    "qwen2": {"none": 177, "selective": 184, "full": 288},
    "qwen3": {"none": 224, "selective": 231, "full": 367},
}
# A sliding window shorter than the sequence builds its [s, s] mask in the attention core (twice
# when the core or the block is recomputed).
WINDOW_MASK_OPS = {"none": 11, "selective": 22, "full": 22}
# Stage 0's embedding items (gpt2: token + learned positions; the llama family: token), forward +
# backward; the same tied or not.
EMBEDDING_OPS = {"gpt2": 18, "llama": 12}
# The last stage's final norm, LM head and cross-entropy loss, forward + backward.
HEAD_LOSS_OPS = {"gpt2": 57, "llama": 78}


def counted_arch(spec: ModelSpec) -> str:
    """The BLOCK_OPS row of a spec: its own for gpt2, llama, qwen2, qwen3; llama's for mistral and
    for the families llmlaunch's model does not run (approximations.py says so)."""
    return spec.arch if spec.arch in BLOCK_OPS else "llama"


def stage_ops_per_micro_batch(spec: ModelSpec, *, blocks: int, first: bool, last: bool,
                              recompute: str) -> int:
    """Ops one rank of a stage dispatches for one micro-batch, forward and backward."""
    arch = counted_arch(spec)
    per_block = BLOCK_OPS[arch][recompute]
    if spec.runnable and spec.windowed_layers and spec.sliding_window < spec.seq_len:
        per_block += WINDOW_MASK_OPS[recompute]
    ops = blocks * per_block
    outer = "gpt2" if arch == "gpt2" else "llama"
    if first:
        ops += EMBEDDING_OPS[outer]
    if last:
        ops += HEAD_LOSS_OPS[outer]
    return ops
