"""The shape of a decoder-only transformer (where shapes come from: topology/shapes.py and, for a
Hugging Face config.json, topology/hf_config.py).

`ModelSpec` is the one description of a model that the planner, the model builder and run.yaml share.
Symbols used across topology/: L layers, h hidden, a heads, a_kv KV heads, d head dim (h/a unless
set), f ffn hidden, V vocab, s sequence length, E routed experts, k experts per token, f_e expert
FFN width, f_s shared-expert FFN width.

`arch` names a family; each family fixes defaults for the fields that describe what families differ
in (norm, positions, MLP, biases, QK-norm, tied embeddings, parallel residual, norms per block).
Fields left at None / "" / 0 take the family's value, so gpt2 and llama are what they always were.
The families llmlaunch's model runs (RUNNABLE_ARCHS) fix those fields; the others are planned only
and take whatever their config says.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .frozen_hash import cached_hash

# Families llmlaunch's model (model/) builds and trains; the last three are Mixture-of-Experts
# (model/moe.py): Mixtral's, Qwen2-MoE's and Qwen3-MoE's blocks, with their attention (llama's,
# qwen2's QKV biases, qwen3's QK-norm).
RUNNABLE_ARCHS = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")
MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe")
# Families the planner knows from their Hugging Face configs (transformers' model_type, except
# `deepseek` for deepseek_v2/v3 and `decoder` for any other decoder-only model_type).
PLANNED_ARCHS = ("gpt_neox", "phi3", "gemma", "gemma2", "deepseek", "decoder")
ARCHS = RUNNABLE_ARCHS + PLANNED_ARCHS
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "none")
MLPS = ("gelu", "swiglu", "geglu")

_LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", biases=False, qkv_bias=False,
              qk_norm=False, tied_embeddings=False, parallel_residual=False, block_norms=2)
# Each family's defaults (and, for RUNNABLE_ARCHS, what the model runs: fixed but tied_embeddings).
FAMILY_DEFAULTS = {
    "gpt2": dict(_LLAMA, norm="layernorm", positions="learned", mlp="gelu", biases=True,
                 qkv_bias=True, tied_embeddings=True),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": dict(_LLAMA, qkv_bias=True),
    "qwen3": dict(_LLAMA, qk_norm=True),
    "gpt_neox": dict(_LLAMA, norm="layernorm", mlp="gelu", biases=True, qkv_bias=True,
                     parallel_residual=True),
    "phi3": _LLAMA,
    "gemma": dict(_LLAMA, mlp="geglu", tied_embeddings=True),
    "gemma2": dict(_LLAMA, mlp="geglu", tied_embeddings=True, block_norms=4),
    "mixtral": _LLAMA,
    "qwen2_moe": dict(_LLAMA, qkv_bias=True),
    "qwen3_moe": dict(_LLAMA, qk_norm=True),
    "deepseek": _LLAMA,
    "decoder": _LLAMA,
}
# Fields a runnable family may set (the rest are fixed by the family).
RUNNABLE_FREE = {"gpt2": (), **{arch: ("tied_embeddings",) for arch in RUNNABLE_ARCHS[1:]}}
# The keys of run.yaml's `model` section that shape the model, in order.
MODEL_KEYS = ("arch", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len",
              "rope_theta", "norm_eps", "head_dim", "tied_embeddings", "sliding_window")
# The Mixture-of-Experts keys of run.yaml's model section: the experts' shape, then how tokens are
# routed and what the router's losses weigh (docs/run-yaml.md). A dense model's run.yaml holds
# them at their defaults; its manifests (to_dict) leave them out.
MOE_KEYS = ("experts", "experts_per_token", "expert_ffn_hidden", "shared_expert_ffn_hidden",
            "shared_expert_gate", "dense_layers", "norm_topk_prob", "router_aux_loss_coef",
            "router_z_loss_coef", "capacity_factor")
# The router's settings: how the model routes and what it trains, not its shape (a Hugging Face
# directory with other values still loads into the run's model).
ROUTER_TRAINING_KEYS = ("router_aux_loss_coef", "router_z_loss_coef", "capacity_factor")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only LM. Validated on construction; every field is a plain number, flag or name."""

    arch: str
    """Family (see ARCHS): 'gpt2' (LayerNorm, GELU MLP, learned positions, tied embeddings, biases),
    'llama' (RMSNorm, SwiGLU MLP, RoPE, grouped-query attention, untied embeddings, no biases),
    'mistral' (llama's block; sliding-window attention when set), 'qwen2' (llama + QKV biases),
    'qwen3' (llama + QK-norm, head_dim usually set), or a planned-only family."""
    layers: int
    """L: number of transformer blocks."""
    hidden: int
    """h: model width."""
    heads: int
    """a: attention (query) heads; h must divide by a unless head_dim is set."""
    kv_heads: int = 0
    """a_kv: key/value heads (GQA; 1 is MQA); 0 means equal to heads. a must divide by a_kv."""
    ffn_hidden: int = 0
    """f: width of a dense MLP; 0 means the family's default (4h for a GELU MLP, Llama's 8h/3
    rounded up to a multiple of 256 for a gated one). In an MoE model: the dense layers' width."""
    vocab: int = 50257
    """V: vocabulary size before padding (the model pads it to a multiple that TP divides)."""
    seq_len: int = 2048
    """s: training sequence length (also the learned position table size for gpt2)."""
    rope_theta: float = 10000.0
    """RoPE base: 1e4 in Llama 2, 5e5 in Llama 3, 1e6 in Qwen2/3."""
    norm_eps: float = 1e-5
    """Epsilon of LayerNorm / RMSNorm."""
    head_dim: int = 0
    """d: width of one attention head; 0 means h/a. Qwen3 and Gemma set it (Qwen3-8B: 128 with
    h/a = 128, Qwen3-0.6B: 128 with h/a = 64; Gemma-7B: 256 with h/a = 192)."""
    tied_embeddings: bool | None = None
    """The LM head reuses the token table; None: the family's default (gpt2, Gemma: tied)."""
    qkv_bias: bool | None = None
    """Biases on the Q, K and V projections only (Qwen2); None: the family's default."""
    biases: bool | None = None
    """Biases on every linear layer (gpt2, GPT-NeoX); None: the family's default."""
    qk_norm: bool | None = None
    """RMSNorm over each head's d features of Q and K before RoPE (Qwen3); None: family default."""
    norm: str = ""
    """'layernorm' (weight, bias) or 'rmsnorm' (weight); '': the family's."""
    positions: str = ""
    """'learned' (a [s, h] table), 'rope' or 'none' (e.g. ALiBi); '': the family's."""
    mlp: str = ""
    """'gelu' (two matrices), 'swiglu' or 'geglu' (gated: three matrices); '': the family's."""
    parallel_residual: bool | None = None
    """x + attn(norm1 x) + mlp(norm2 x) (GPT-NeoX, GPT-J) instead of two sequential residuals."""
    rotary_fraction: float = 1.0
    """Share of each head's d features that RoPE rotates (GPT-NeoX rotary_pct 0.25)."""
    block_norms: int = 0
    """Norms per block; 0: the family's (2; Gemma-2 has 4: pre- and post-norms)."""
    sliding_window: int = 0
    """Sliding-window attention: each query sees the last `sliding_window` keys (Mistral v0.1:
    4096); 0: full causal attention."""
    sliding_window_layers: int = 0
    """How many of the L layers use the window (Gemma-2: every other one); 0: all of them."""
    experts: int = 0
    """E: routed experts per MoE layer (Mixtral 8); 0: a dense model."""
    experts_per_token: int = 0
    """k: routed experts each token goes through (Mixtral 2)."""
    expert_ffn_hidden: int = 0
    """f_e: one routed expert's MLP width; 0 means ffn_hidden (Mixtral's intermediate_size)."""
    shared_expert_ffn_hidden: int = 0
    """f_s: width of the shared-expert MLP every token goes through (Qwen2-MoE's
    shared_expert_intermediate_size; DeepSeek's n_shared_experts x moe_intermediate_size); 0: none."""
    shared_expert_gate: bool = False
    """A sigmoid gate Linear(h, 1) on the shared expert's output (Qwen2-MoE)."""
    dense_layers: int = 0
    """MoE models only: the first layers keep a dense MLP of width f (DeepSeek first_k_dense_replace)."""
    expert_groups_per_token: int = 0
    """MoE node-limited routing: a token's k experts are drawn from at most this many expert groups
    (DeepSeek-V3's topk_group 4 of n_group 8, Section 2.1.2: each token to at most M = 4 nodes);
    0: not limited."""
    norm_topk_prob: bool = True
    """MoE: the k routing weights of a token are renormalised to sum to 1 (Mixtral always; Qwen-MoE's
    norm_topk_prob); false: they stay the softmax probabilities."""
    router_aux_loss_coef: float = 0.001
    """MoE: weight of the load-balancing loss in the training loss (transformers'
    router_aux_loss_coef and load_balancing_loss_func: Switch Transformer's E sum_e f_e P_e over the
    MoE layers' tokens pooled); 0: none."""
    router_z_loss_coef: float = 0.0
    """MoE: weight of the router z-loss (ST-MoE, Zoph et al. 2022: the mean squared log-sum-exp of
    the router logits, averaged over the MoE layers); 0: none (Mixtral and Qwen-MoE have none)."""
    capacity_factor: float = 0.0
    """MoE: 0 routes dropless (every token to its k experts); C >= 1 gives each expert of a rank's
    micro-batch a buffer of ceil(C T k / E) tokens, padded, the overflow dropped (GShard)."""
    kv_lora_rank: int = 0
    """Multi-head latent attention (DeepSeek-V2/V3): the rank r_kv of the joint key/value
    compression (K and V of every head come up from an r_kv-wide latent); 0: ordinary attention.
    With MLA head_dim is the query/key head width qk_nope + qk_rope."""
    q_lora_rank: int = 0
    """MLA: the rank r_q of the query compression (DeepSeek-V3 1536); 0: a full-rank query projection."""
    qk_rope_head_dim: int = 0
    """MLA: the rotary part of each query/key head (64), its key part shared by all heads."""
    v_head_dim: int = 0
    """Width of one value head (MLA: 128 in DeepSeek-V3, head_dim 192); 0 means head_dim."""
    name: str = ""
    """Preset name or a description of how the shape was derived (informational)."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        for field in ("layers", "hidden", "heads", "vocab", "seq_len"):
            _check_int(field, getattr(self, field), 1)
        for field in ("kv_heads", "ffn_hidden", "head_dim", "block_norms", "sliding_window",
                      "sliding_window_layers", "experts", "experts_per_token", "expert_ffn_hidden",
                      "shared_expert_ffn_hidden", "dense_layers", "kv_lora_rank", "q_lora_rank",
                      "qk_rope_head_dim", "v_head_dim", "expert_groups_per_token"):
            _check_int(field, getattr(self, field), 0)
        for field in ("router_aux_loss_coef", "router_z_loss_coef", "capacity_factor"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"model {field} must be a non-negative number, got {value!r}")
            object.__setattr__(self, field, float(value))
        if 0 < self.capacity_factor < 1:
            raise ValueError(f"model capacity_factor {self.capacity_factor:g} is below the balanced "
                             "load: use 0 (dropless) or at least 1.0")
        if not isinstance(self.norm_topk_prob, bool):
            raise ValueError(f"model norm_topk_prob must be true or false, got {self.norm_topk_prob!r}")
        for field in ("rope_theta", "norm_eps", "rotary_fraction"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"model {field} must be a positive number, got {value!r}")
            object.__setattr__(self, field, float(value))
        if self.rotary_fraction > 1:
            raise ValueError(f"model rotary_fraction must be at most 1, got {self.rotary_fraction}")
        self._resolve_family()
        self._resolve_attention()
        if self.ffn_hidden == 0:
            object.__setattr__(self, "ffn_hidden", default_ffn_hidden(self.mlp, self.hidden))
        self._resolve_moe()
        if self.sliding_window_layers > self.layers:
            raise ValueError(f"sliding_window_layers {self.sliding_window_layers} exceeds the "
                             f"{self.layers} layers")
        if self.sliding_window_layers == self.layers or not self.sliding_window:
            object.__setattr__(self, "sliding_window_layers", 0)   # one spelling of "all" / none

    def __hash__(self) -> int:
        return cached_hash(self)

    def _resolve_family(self):
        defaults = FAMILY_DEFAULTS[self.arch]
        fixed = RUNNABLE_FREE.get(self.arch)
        for field, default in defaults.items():
            value = getattr(self, field)
            unset = value is None or value == "" or (field == "block_norms" and value == 0)
            if unset:
                object.__setattr__(self, field, default)
            elif fixed is not None and field not in fixed and value != default:
                raise ValueError(f"arch {self.arch} has {field}={default!r} (llmlaunch's model runs "
                                 f"it so), not {value!r}; use arch decoder to plan other variants")
        for field, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"model {field} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, field)!r}")
        if self.biases:
            object.__setattr__(self, "qkv_bias", True)

    def _resolve_attention(self):
        if self.head_dim == 0:
            if self.hidden % self.heads:
                raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads} "
                                 "(set head_dim when heads x head_dim is not hidden)")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")
        if self.arch == "gpt2" and self.kv_heads != self.heads:
            raise ValueError("arch gpt2 uses multi-head attention: kv_heads must equal heads "
                             "(use arch llama for grouped-query attention)")
        if self.arch == "gpt2" and self.head_dim * self.heads != self.hidden:
            raise ValueError(f"arch gpt2 has head_dim = hidden/heads = {self.hidden // self.heads}, "
                             f"not {self.head_dim}")
        if (self.q_lora_rank or self.qk_rope_head_dim) and not self.kv_lora_rank:
            raise ValueError("model q_lora_rank / qk_rope_head_dim are multi-head latent attention's: "
                             "set kv_lora_rank too")
        if self.kv_lora_rank and (self.kv_heads != self.heads or
                                  not 0 < self.qk_rope_head_dim < self.head_dim):
            raise ValueError(f"multi-head latent attention needs kv_heads = heads and 0 < "
                             f"qk_rope_head_dim < head_dim, got kv_heads {self.kv_heads}, "
                             f"qk_rope_head_dim {self.qk_rope_head_dim}, head_dim {self.head_dim}")
        if self.positions == "rope" and int(self.head_dim * self.rotary_fraction) % 2:
            raise ValueError(f"RoPE rotates pairs: head_dim {self.head_dim} x rotary_fraction "
                             f"{self.rotary_fraction:g} must be even")

    def _resolve_moe(self):
        moe_fields = ("experts_per_token", "expert_ffn_hidden", "shared_expert_ffn_hidden",
                      "dense_layers")
        if not self.experts:
            given = [f for f in moe_fields if getattr(self, f)] + (
                ["shared_expert_gate"] if self.shared_expert_gate else [])
            if given:
                raise ValueError(f"model {given[0]} is set but experts is 0 (a dense model)")
            return
        if not 1 <= self.experts_per_token <= self.experts:
            raise ValueError(f"experts_per_token must be between 1 and experts={self.experts}, got "
                             f"{self.experts_per_token}")
        if self.expert_ffn_hidden == 0:
            object.__setattr__(self, "expert_ffn_hidden", self.ffn_hidden)
        if self.dense_layers >= self.layers:
            raise ValueError(f"dense_layers {self.dense_layers} leaves no MoE layer of {self.layers}")
        if self.shared_expert_gate and not self.shared_expert_ffn_hidden:
            raise ValueError("shared_expert_gate needs shared_expert_ffn_hidden")

    # ------------------------------------------------------------------------------------------
    @property
    def q_width(self) -> int:
        """Width of the Q projection and of the attention output: a * d (h unless head_dim is set)."""
        return self.heads * self.head_dim

    @property
    def kv_hidden(self) -> int:
        """Width of the K projection: a_kv * d (MLA: a heads of qk_nope + qk_rope)."""
        return self.kv_heads * self.head_dim

    @property
    def value_head_dim(self) -> int:
        """d_v: width of one value head (v_head_dim, else head_dim)."""
        return self.v_head_dim or self.head_dim

    @property
    def v_width(self) -> int:
        """Width of the V projection: a_kv * d_v."""
        return self.kv_heads * self.value_head_dim

    @property
    def out_width(self) -> int:
        """Width of the attention output, the out-projection's input: a * d_v (q_width unless the
        value heads are narrower: MLA)."""
        return self.heads * self.value_head_dim

    @property
    def mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3: kv_lora_rank set)."""
        return self.kv_lora_rank > 0

    @property
    def learned_positions(self) -> bool:
        return self.positions == "learned"

    @property
    def rotary(self) -> bool:
        return self.positions == "rope"

    @property
    def rms_norm(self) -> bool:
        return self.norm == "rmsnorm"

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU / GeGLU: three MLP matrices (gate, up, down) instead of two."""
        return self.mlp in ("swiglu", "geglu")

    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is the experts (0 for a dense model)."""
        return self.layers - self.dense_layers if self.moe else 0

    @property
    def windowed_layers(self) -> int:
        """Layers whose attention is limited to the sliding window."""
        if not self.sliding_window:
            return 0
        return self.sliding_window_layers or self.layers

    @property
    def runnable(self) -> bool:
        """llmlaunch's model (model/) builds this family."""
        return self.arch in RUNNABLE_ARCHS

    def replace(self, **changes) -> "ModelSpec":
        """A copy with `changes`; a new arch takes its own family defaults for the fields that held
        the old family's (those given in `changes` stay as given)."""
        new_arch = changes.get("arch", self.arch)
        if new_arch != self.arch and new_arch in FAMILY_DEFAULTS:
            for field, default in FAMILY_DEFAULTS[self.arch].items():
                if field not in changes and getattr(self, field) == default:
                    changes[field] = 0 if field == "block_norms" else (
                        "" if isinstance(default, str) else None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """run.yaml's model keys of this spec: MODEL_KEYS, and MOE_KEYS for an MoE model."""
        return {k: getattr(self, k) for k in MODEL_KEYS + (MOE_KEYS if self.moe else ())}


def _check_int(field: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum else "non-negative"
        raise ValueError(f"model {field} must be a {kind} integer, got {value!r}")


def default_ffn_hidden(mlp: str, hidden: int) -> int:
    """A GELU MLP: 4h (Radford et al. 2019). A gated one: 2/3 of 4h, rounded up to a multiple of
    256 (Touvron et al. 2023, the `multiple_of` rule of the reference implementation). `mlp` may be
    an arch name too ('gpt2' is a GELU MLP, every other family's default MLP is gated)."""
    if mlp in ("gelu", "gpt2", "gpt_neox"):
        return 4 * hidden
    multiple = 256
    return multiple * math.ceil(int(2 * 4 * hidden / 3) / multiple)


def untrainable_reasons(spec: ModelSpec) -> list[str]:
    """Why llmlaunch's model cannot train `spec` (empty when it can): a planned-only family, or a
    feature its runnable family does not have in transformers (a sliding window on gpt2 or llama,
    a window on some layers only, partial rotary, experts in a dense family or none in an MoE
    one)."""
    if not spec.runnable:
        return [f"arch {spec.arch} is planned only; llmlaunch's model runs "
                f"{', '.join(RUNNABLE_ARCHS)}"]
    reasons = []
    if spec.sliding_window and spec.arch in ("gpt2", "llama"):
        reasons.append(f"arch {spec.arch} has no sliding-window attention (mistral, qwen2 and "
                       "qwen3 do)")
    elif spec.windowed_layers not in (0, spec.layers):
        reasons.append(f"a sliding window on {spec.windowed_layers} of {spec.layers} layers "
                       "(the model windows every layer or none)")
    if spec.rotary_fraction != 1.0:
        reasons.append(f"partial rotary (rotary_fraction {spec.rotary_fraction:g})")
    if spec.moe != (spec.arch in MOE_ARCHS):
        reasons.append(f"arch {spec.arch} is a Mixture-of-Experts family: set experts and "
                       "experts_per_token" if spec.arch in MOE_ARCHS else
                       f"arch {spec.arch} has no experts (the MoE families are "
                       f"{', '.join(MOE_ARCHS)})")
    return reasons
