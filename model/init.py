"""Layout-independent initialisation: every canonical tensor is drawn whole, then sliced.

Each full tensor comes from its own generator, seeded from (seed, canonical name), so the values
depend on neither the layout nor the order in which ranks build layers: a (pp=2, tp=2) run and a
single process start from the same model. The cost is that a rank materialises each full tensor
it holds a slice of, once, at start-up.

GPT-2 scheme (Radford et al. 2019): weights N(0, 0.02); the projections that write into the
residual stream (attention output, MLP fc2 / down) N(0, 0.02/sqrt(2L)); biases 0; norm weights 1.
"""
from __future__ import annotations

import hashlib
import math

import torch

from llmlaunch.topology.model_spec import ModelSpec

INIT_STD = 0.02
# the projections that write into the residual stream: an MoE block's experts' and shared
# expert's down projections (mlp.experts.<e>.down.weight, mlp.shared.down.weight) are too
RESIDUAL_OUTPUTS = ("attn.out.weight", "mlp.fc2.weight", "down.weight")
NORMS = ("ln1", "ln2", "final_norm", "q_norm", "k_norm")


def parameter_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one canonical tensor, from the run seed and the tensor's name."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def is_norm(name: str) -> bool:
    return any(part in NORMS for part in name.split("."))


def init_std(spec: ModelSpec, name: str) -> float:
    """Standard deviation of a normally initialised weight."""
    if name.endswith(RESIDUAL_OUTPUTS):
        return INIT_STD / math.sqrt(2 * spec.layers)
    return INIT_STD


def initial_tensor(spec: ModelSpec, name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The full fp32 initial value of canonical parameter `name`."""
    if is_norm(name):
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.randn(shape, generator=generator) * init_std(spec, name)
