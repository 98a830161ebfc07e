"""The options of one plan besides the model and the cluster: what every estimate of the search
(planner.evaluate, layout_time.step_time) is priced under."""
from __future__ import annotations

from dataclasses import dataclass

from .engines import DEFAULT_ENGINE
from .experts import DEFAULT_CAPACITY_FACTOR

# Fraction of GPU memory a fitting layout leaves free by default: none beyond what the estimate
# already holds (buffers include 5% allocator fragmentation, topology/memory.py).
DEFAULT_MEMORY_HEADROOM = 0.0


@dataclass(frozen=True)
class PlanOptions:
    """Everything besides the model and cluster that an estimate depends on."""

    global_batch: int
    """Sequences per optimizer step."""
    seq_len: int
    precision: str = "bf16"
    flash_attention: bool = True
    """Attention through a fused kernel (SDPA/flash): no s^2 activations, no softmax traffic."""
    engine: str = DEFAULT_ENGINE
    """The training engine the step is priced for (topology/engines.py): llmlaunch runs
    `deepspeed`; the published runs name theirs."""
    capacity_factor: float = DEFAULT_CAPACITY_FACTOR
    """MoE: expert buffers padded to this multiple of the balanced load (topology/experts.py)."""
    memory_headroom: float = DEFAULT_MEMORY_HEADROOM
    """Fraction of each GPU's memory a layout must leave free to fit (plan --memory-headroom)."""
    optimizer: str = "adamw"
    """train.optimizer, whose states the memory counts (topology/optimizer_states.py)."""
