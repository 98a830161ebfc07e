"""The shape of a decoder-only transformer, and where shapes come from (presets, a parameter count).

`ModelSpec` is the one description of a model that the planner, the model builder and run.yaml share.
Symbols used across topology/: L layers, h hidden, a heads, a_kv KV heads, d = h/a head dim,
f ffn hidden, V vocab, s sequence length.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

ARCHS = ("gpt2", "llama")
# The keys of run.yaml's `model` section, in order.
MODEL_KEYS = ("arch", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len",
              "rope_theta", "norm_eps")
_DATA_DIR = Path(__file__).parent / "data"
# --params snaps to a published shape when within this relative distance of its count.
SNAP_TOLERANCE = 0.05
# A derived shape must land this close to the requested count (integer layers and a width in steps
# of 512 or 1024 make it approximate; far below the smallest family member it cannot).
DERIVE_TOLERANCE = 0.25


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


@functools.lru_cache(maxsize=1)
def _published() -> dict:
    with open(_DATA_DIR / "models.yaml") as f:
        return yaml.safe_load(f)


def preset_names() -> list[str]:
    return sorted(_published())


def preset(name: str) -> ModelSpec:
    """The published shape called `name` (see topology/data/models.yaml)."""
    table = _published()
    key = name.lower()
    if key not in table:
        raise ValueError(f"--model {name!r} is not a preset; known: {', '.join(sorted(table))}")
    return _spec_from_entry(key, table[key])


def _spec_from_entry(name: str, entry: dict) -> ModelSpec:
    fields = {k: entry[k] for k in MODEL_KEYS if k in entry}
    return ModelSpec(name=name, **fields)


def spec_from_params(params: float, arch: str = "gpt2", seq_len: int | None = None,
                     vocab: int | None = None) -> ModelSpec:
    """A shape with about `params` parameters.

    Within SNAP_TOLERANCE of a published GPT-style member (GPT-3 Table 2.1, Megatron-LM's Table 1
    sweep, MT-NLG) that member's shape is used. Otherwise depth follows the family: log L is
    interpolated in log N between the bracketing members, width h (a multiple of 128, head dim 128)
    solves N = L * (12h^2 + 13h) + V*h, and L is re-solved for that h.
    """
    from .params import total_params  # local: params imports this module

    if not params or params <= 0 or not math.isfinite(params):
        raise ValueError(f"--params must be a positive number such as 7e9, got {params!r}")
    members = sorted((total_params(_spec_from_entry(n, e)), n, e)
                     for n, e in _published().items() if e.get("family"))
    closest = min(members, key=lambda m: abs(m[0] - params) / params)
    if abs(closest[0] - params) / params <= SNAP_TOLERANCE and arch == "gpt2":
        spec = _spec_from_entry(closest[1], closest[2])
        return spec.replace(seq_len=seq_len or spec.seq_len, vocab=vocab or spec.vocab)

    vocab = vocab or 50257
    seq_len = seq_len or 2048
    counts = [m[0] for m in members]
    depths = [m[2]["layers"] for m in members]
    if params <= counts[0]:
        log_layers = math.log(depths[0])
    elif params >= counts[-1]:
        # beyond the largest member: keep its depth-to-width trend (depth grows as N^(1/3))
        log_layers = math.log(depths[-1]) + math.log(params / counts[-1]) / 3
    else:
        i = next(i for i in range(1, len(counts)) if counts[i] >= params)
        w = math.log(params / counts[i - 1]) / math.log(counts[i] / counts[i - 1])
        log_layers = (1 - w) * math.log(depths[i - 1]) + w * math.log(depths[i])
    layers_guess = max(2, round(math.exp(log_layers)))
    # head dim 128 (64 below 1B) and a head count divisible by 8 (4 below 1B), so TP up to a node
    head_dim = 128 if params >= 1e9 else 64
    width_unit = head_dim * (8 if params >= 1e9 else 4)
    per_layer = params / layers_guess
    hidden = max(width_unit, width_unit * round(math.sqrt(per_layer / 12) / width_unit))
    spec = ModelSpec(arch=arch, layers=layers_guess, hidden=hidden, heads=hidden // head_dim,
                     vocab=vocab, seq_len=seq_len)
    # re-solve L for the rounded width so the count lands as close as the integer L allows
    embed = total_params(spec.replace(layers=1)) - (total_params(spec.replace(layers=2))
                                                    - total_params(spec.replace(layers=1)))
    layer = total_params(spec.replace(layers=2)) - total_params(spec.replace(layers=1))
    layers = max(1, round((params - embed) / layer))
    spec = spec.replace(layers=layers, name=f"derived from --params {params:.3g} ({arch})")
    derived = total_params(spec)
    if abs(derived - params) / params > DERIVE_TOLERANCE:
        raise ValueError(f"--params {params:.3g}: the nearest shape has {derived:.3g} parameters "
                         f"(L={spec.layers}, h={spec.hidden}); give the shape with --layers, --hidden "
                         "and --heads")
    return spec
