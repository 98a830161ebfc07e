"""Per-family readers of Hugging Face config.json keys into ModelSpec fields (used by hf_config.py,
the one reader of HF shapes). Pure Python on the JSON's keys: a raw config.json as published, or a
PretrainedConfig's to_dict() (which adds transformers' defaults; model/hf_count.py normalises a
config that way for `plan --hf-config`). Keys follow transformers' configuration_<family>.py.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

# A config whose max_position_embeddings is longer than this plans and trains at this length unless
# a sequence length is given (Llama 3.1's 131072 would make every activation estimate enormous).
MAX_DEFAULT_SEQ_LEN = 8192
_MISSING = object()


def first(cfg: Mapping, *names, default=_MISSING):
    """The value of the first of `names` that the config sets (not None); KeyError naming the first
    name when none is set and there is no default."""
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    if default is _MISSING:
        raise KeyError(names[0])
    return default


def rope(cfg: Mapping, partial_default: float = 1.0) -> dict:
    """rope_parameters (transformers 5) or the older rope_theta / rope_scaling / rotary_* keys."""
    out = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    out.setdefault("rope_theta", first(cfg, "rope_theta", "rotary_emb_base", default=10000.0))
    out.setdefault("rope_type", out.get("type", "default"))
    out.setdefault("partial_rotary_factor", first(cfg, "partial_rotary_factor", "rotary_pct",
                                                  default=partial_default))
    return out


def sliding_layers(cfg: Mapping, layers: int, default_all: bool) -> tuple[int, int]:
    """(window, layers using it) from `sliding_window` and transformers 5's per-layer
    `layer_types`; without layer_types the window is on every layer when default_all (Mistral)."""
    window = cfg.get("sliding_window") or 0
    if not window:
        return 0, 0
    types = cfg.get("layer_types")
    if types:
        count = sum(t == "sliding_attention" for t in types)
        return (window, count) if count else (0, 0)
    return (window, layers) if default_all else (0, 0)


def seq_len_of(cfg: Mapping, seq_len: int | None) -> int:
    if seq_len:
        return seq_len
    max_pos = first(cfg, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                    default=4096)
    return min(max_pos, MAX_DEFAULT_SEQ_LEN)


def base(cfg: Mapping, seq_len: int | None, tied_default: bool = False) -> dict:
    """The keys most decoder configs share (llama's names, with the common aliases)."""
    heads = first(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads")
    return dict(
        layers=first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        hidden=first(cfg, "hidden_size", "n_embd", "d_model", "dim"),
        heads=heads,
        kv_heads=first(cfg, "num_key_value_heads", "num_kv_heads", "n_kv_heads", default=heads),
        ffn_hidden=first(cfg, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size",
                         default=0),
        vocab=first(cfg, "vocab_size"),
        seq_len=seq_len_of(cfg, seq_len),
        head_dim=first(cfg, "head_dim", default=0),
        rope_theta=float(rope(cfg)["rope_theta"]),
        norm_eps=float(first(cfg, "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps",
                             "norm_eps", default=1e-5)),
        tied_embeddings=bool(first(cfg, "tie_word_embeddings", default=tied_default)),
    )


def _gpt2(cfg, seq_len):
    return dict(arch="gpt2", layers=cfg["n_layer"], hidden=cfg["n_embd"], heads=cfg["n_head"],
                ffn_hidden=cfg.get("n_inner") or 0, vocab=cfg["vocab_size"],
                seq_len=seq_len or cfg.get("n_positions", 1024),
                norm_eps=cfg.get("layer_norm_epsilon", 1e-5))


def _llama(cfg, seq_len):
    return dict(base(cfg, seq_len), arch="llama")


def _mistral(cfg, seq_len):
    spec = dict(base(cfg, seq_len), arch="mistral")
    spec["sliding_window"], spec["sliding_window_layers"] = sliding_layers(cfg, spec["layers"], True)
    return spec


def _qwen(arch):
    def read(cfg, seq_len):
        spec = dict(base(cfg, seq_len), arch=arch)
        if not cfg.get("layer_types") and cfg.get("use_sliding_window"):
            # transformers: layers from max_window_layers on use the window
            window_layers = spec["layers"] - min(spec["layers"], cfg.get("max_window_layers", 28))
            cfg = dict(cfg, layer_types=["sliding_attention"] * window_layers)
        elif not cfg.get("use_sliding_window", True):
            cfg = dict(cfg, sliding_window=None)
        spec["sliding_window"], spec["sliding_window_layers"] = sliding_layers(
            cfg, spec["layers"], False)
        if spec["sliding_window_layers"] == spec["layers"]:
            spec["sliding_window_layers"] = 0
        if arch == "qwen3" and not spec["head_dim"]:
            spec["head_dim"] = 128      # Qwen3Config's default
        return spec
    return read


def _gpt_neox(cfg, seq_len):
    return dict(base(cfg, seq_len), arch="gpt_neox",
                parallel_residual=bool(cfg.get("use_parallel_residual", True)),
                biases=bool(cfg.get("attention_bias", True)),
                rotary_fraction=float(rope(cfg, partial_default=0.25)["partial_rotary_factor"]))


def _phi3(cfg, seq_len):
    spec = dict(base(cfg, seq_len), arch="phi3",
                rotary_fraction=float(rope(cfg)["partial_rotary_factor"]))
    spec["sliding_window"], spec["sliding_window_layers"] = sliding_layers(cfg, spec["layers"], True)
    return spec


def _gemma(cfg, seq_len):
    return dict(base(cfg, seq_len, tied_default=True), arch="gemma")


def _gemma2(cfg, seq_len):
    spec = dict(base(cfg, seq_len, tied_default=True), arch="gemma2")
    if not cfg.get("layer_types") and cfg.get("sliding_window"):
        # transformers: layer i slides when i is even (every other layer, the first one included)
        cfg = dict(cfg, layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                     for i in range(spec["layers"])])
    spec["sliding_window"], spec["sliding_window_layers"] = sliding_layers(cfg, spec["layers"], False)
    return spec


def _mixtral(cfg, seq_len):
    spec = dict(base(cfg, seq_len), arch="mixtral", experts=cfg["num_local_experts"],
                experts_per_token=cfg["num_experts_per_tok"],
                router_aux_loss_coef=float(first(cfg, "router_aux_loss_coef", default=0.001)))
    spec["sliding_window"], spec["sliding_window_layers"] = sliding_layers(cfg, spec["layers"], True)
    return spec


def dense_layer_indices(cfg: Mapping, layers: int) -> list[int]:
    """Qwen-MoE's layers with a dense MLP: those in mlp_only_layers, and those whose index + 1 is
    no multiple of decoder_sparse_step (transformers' Qwen2/3MoeDecoderLayer)."""
    step = cfg.get("decoder_sparse_step", 1) or 1
    dense_only = set(cfg.get("mlp_only_layers") or ())
    return [i for i in range(layers) if i in dense_only or (i + 1) % step]


def _qwen_moe(arch):
    """Qwen2-MoE (QKV biases, a gated shared expert) and Qwen3-MoE (QK-norm, no shared expert):
    the family's attention read as qwen2/qwen3 are, then the experts. Dense layers anywhere are
    counted as dense_layers (the planner holds them as the first ones)."""
    attention = _qwen("qwen2" if arch == "qwen2_moe" else "qwen3")

    def read(cfg, seq_len):
        spec = dict(attention(cfg, seq_len), arch=arch)
        shared = cfg.get("shared_expert_intermediate_size") or 0 if arch == "qwen2_moe" else 0
        spec.update(experts=first(cfg, "num_experts", "num_local_experts"),
                    experts_per_token=cfg["num_experts_per_tok"],
                    expert_ffn_hidden=cfg["moe_intermediate_size"], shared_expert_ffn_hidden=shared,
                    shared_expert_gate=bool(shared),
                    dense_layers=len(dense_layer_indices(cfg, spec["layers"])),
                    norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                    router_aux_loss_coef=float(first(cfg, "router_aux_loss_coef", default=0.001)))
        return spec
    return read


def _deepseek(cfg, seq_len):
    """DeepSeek-V2/V3: multi-head latent attention (kv_lora_rank, q_lora_rank, the rope and nope
    head dims, v_head_dim), MoE with shared experts and the first dense layers
    (first_k_dense_replace), as transformers' DeepseekV3Attention / DeepseekV3MoE build them."""
    spec = dict(base(cfg, seq_len), arch="deepseek")
    spec["kv_heads"] = spec["heads"]
    rope_dim = cfg.get("qk_rope_head_dim") or 0
    spec["head_dim"] = (cfg.get("qk_nope_head_dim") or 0) + rope_dim or 0
    if cfg.get("kv_lora_rank"):
        spec.update(kv_lora_rank=cfg["kv_lora_rank"], q_lora_rank=cfg.get("q_lora_rank") or 0,
                    qk_rope_head_dim=rope_dim, v_head_dim=cfg.get("v_head_dim") or 0)
    shared = (cfg.get("n_shared_experts") or 0) * cfg["moe_intermediate_size"]
    spec.update(experts=cfg["n_routed_experts"], experts_per_token=cfg["num_experts_per_tok"],
                expert_ffn_hidden=cfg["moe_intermediate_size"], shared_expert_ffn_hidden=shared,
                dense_layers=min(cfg.get("first_k_dense_replace") or 0, spec["layers"] - 1))
    if (cfg.get("n_group") or 1) > 1 and cfg.get("topk_group"):   # node-limited routing (V3)
        spec["expert_groups_per_token"] = cfg["topk_group"]
    return spec


def _decoder(cfg, seq_len):
    """Any other decoder-only model_type: llama's keys and their common aliases, RMSNorm when the
    config has rms_norm_eps, a window where layer_types or sliding_window say, experts where the
    usual MoE keys are set (Mixtral's or Qwen-MoE's names)."""
    spec = dict(base(cfg, seq_len), arch="decoder")
    spec["norm"] = "rmsnorm" if "rms_norm_eps" in cfg else "layernorm"
    spec["sliding_window"], spec["sliding_window_layers"] = sliding_layers(cfg, spec["layers"], True)
    if spec["sliding_window_layers"] == spec["layers"]:
        spec["sliding_window_layers"] = 0
    spec["qkv_bias"] = bool(first(cfg, "attention_bias", "qkv_bias", "bias", "use_bias",
                                  default=False))
    if cfg.get("multi_query") and not cfg.get("new_decoder_architecture"):
        spec["kv_heads"] = 1                                 # Falcon's multi-query attention
    spec["parallel_residual"] = bool(first(cfg, "parallel_attn", "use_parallel_residual",
                                           default=False))
    spec["rotary_fraction"] = float(rope(cfg)["partial_rotary_factor"])
    experts = first(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0)
    if experts:
        spec.update(experts=experts, experts_per_token=first(cfg, "num_experts_per_tok", "top_k"),
                    expert_ffn_hidden=first(cfg, "moe_intermediate_size", default=0))
    return spec


READERS: dict[str, Callable[[Mapping, int | None], dict]] = {
    "gpt2": _gpt2, "llama": _llama, "mistral": _mistral, "qwen2": _qwen("qwen2"),
    "qwen3": _qwen("qwen3"), "gpt_neox": _gpt_neox, "phi3": _phi3, "gemma": _gemma,
    "gemma2": _gemma2, "mixtral": _mixtral, "qwen2_moe": _qwen_moe("qwen2_moe"),
    "qwen3_moe": _qwen_moe("qwen3_moe"), "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
}
"""model_type -> reader; every other model_type goes through _decoder."""


def reader(model_type: str) -> Callable[[Mapping, int | None], dict]:
    return READERS.get(model_type, _decoder)
