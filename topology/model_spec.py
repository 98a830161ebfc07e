"""The shape of a decoder-only transformer (where shapes come from: topology/shapes.py).

`ModelSpec` is the one description of a model that the planner, the model builder and run.yaml share.
Symbols used across topology/: L layers, h hidden, a heads, a_kv KV heads, d = h/a head dim,
f ffn hidden, V vocab, s sequence length.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

ARCHS = ("gpt2", "llama")
# The keys of run.yaml's `model` section, in order.
MODEL_KEYS = ("arch", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len",
              "rope_theta", "norm_eps")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only LM. Validated on construction; every field is a plain number or name."""

    arch: str
    """'gpt2' (LayerNorm, GELU MLP, learned positions, tied embeddings, biases) or
    'llama' (RMSNorm, SwiGLU MLP, RoPE, grouped-query attention, untied embeddings, no biases)."""
    layers: int
    """L: number of transformer blocks."""
    hidden: int
    """h: model width."""
    heads: int
    """a: attention (query) heads; h must divide by a."""
    kv_heads: int = 0
    """a_kv: key/value heads (GQA); 0 means equal to heads. a must divide by a_kv."""
    ffn_hidden: int = 0
    """f: MLP inner width; 0 means the architecture's default (4h for gpt2, Llama's 8h/3 rounded up
    to a multiple of 256 for llama)."""
    vocab: int = 50257
    """V: vocabulary size before padding (the model pads it to a multiple that TP divides)."""
    seq_len: int = 2048
    """s: training sequence length (also the learned position table size for gpt2)."""
    rope_theta: float = 10000.0
    """RoPE base (llama only): 1e4 in Llama 2, 5e5 in Llama 3."""
    norm_eps: float = 1e-5
    """Epsilon of LayerNorm / RMSNorm."""
    name: str = ""
    """Preset name or a description of how the shape was derived (informational)."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        for field in ("layers", "hidden", "heads", "vocab", "seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model {field} must be a positive integer, got {value!r}")
        for field in ("kv_heads", "ffn_hidden"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"model {field} must be a non-negative integer, got {value!r}")
        for field in ("rope_theta", "norm_eps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"model {field} must be a positive number, got {value!r}")
            object.__setattr__(self, field, float(value))
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")
        if self.arch == "gpt2" and self.kv_heads != self.heads:
            raise ValueError("arch gpt2 uses multi-head attention: kv_heads must equal heads "
                             "(use arch llama for grouped-query attention)")
        if self.ffn_hidden == 0:
            object.__setattr__(self, "ffn_hidden", default_ffn_hidden(self.arch, self.hidden))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_hidden(self) -> int:
        """Width of the K (or V) projection: a_kv * d."""
        return self.kv_heads * self.head_dim

    @property
    def tied_embeddings(self) -> bool:
        return self.arch == "gpt2"

    @property
    def learned_positions(self) -> bool:
        return self.arch == "gpt2"

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU: three MLP matrices (gate, up, down) instead of two."""
        return self.arch == "llama"

    @property
    def biases(self) -> bool:
        return self.arch == "gpt2"

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                MODEL_KEYS}


def default_ffn_hidden(arch: str, hidden: int) -> int:
    """gpt2: 4h (Radford et al. 2019). llama: 2/3 of 4h, rounded up to a multiple of 256
    (Touvron et al. 2023, the `multiple_of` rule of the reference implementation)."""
    if arch == "gpt2":
        return 4 * hidden
    multiple = 256
    return multiple * math.ceil(int(2 * 4 * hidden / 3) / multiple)
