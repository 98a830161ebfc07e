"""What transformers fills into a config.json before it builds a model, for each family with a shape
reader (hf_families.READERS), so that `plan --hf-config` counts a config from its shapes alone, in
pure Python (no transformers import: a DeepSeek-V3 config plans in well under a second), and counts
exactly what transformers would build.

- ATTRIBUTE_MAPS: the other names a family's config class accepts for a key (its `attribute_map`:
  GPT-2's hidden_size is n_embd).
- TRANSFORMERS_DEFAULTS: the default of every key a reader reads, as transformers 5.25's
  configuration_<family>.py `__init__` signature has it (RoPE's theta from its default
  rope_parameters); a key the config sets, null included, keeps its value, as transformers takes it.
  tests/torch/test_hf_shape_counts.py checks every value against the installed transformers.
- UNMODELLED: keys whose value, away from the one listed, adds parameters the shape formula
  (params.py) does not count, read off modeling_<family>.py (llama's attention_bias puts biases on
  q, k, v and o, which no ModelSpec field describes). A config that sets one is counted by
  transformers instead (model/hf_count.py, on the meta device), and the plan says why.
"""
from __future__ import annotations

from collections.abc import Mapping

ATTRIBUTE_MAPS = {
    "gpt2": {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
             "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"},
    "mixtral": {"num_experts": "num_local_experts"},
    "deepseek_v2": {"num_experts": "n_routed_experts"},
    "deepseek_v3": {"num_local_experts": "n_routed_experts"},
}
# older key names the readers also accept (hf_families.rope): a default never shadows them
LEGACY_NAMES = {"rope_theta": ("rotary_emb_base",), "partial_rotary_factor": ("rotary_pct",)}

_LLAMA = dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
              num_key_value_heads=None, intermediate_size=11008, vocab_size=32000,
              max_position_embeddings=2048, rms_norm_eps=1e-6,
              tie_word_embeddings=False, rope_theta=10000.0)
_QWEN2 = dict(_LLAMA, num_key_value_heads=32, intermediate_size=22016, vocab_size=151936,
              max_position_embeddings=32768, sliding_window=4096, use_sliding_window=False,
              max_window_layers=28)
_MLA = dict(qk_rope_head_dim=64, qk_nope_head_dim=128, kv_lora_rank=512, q_lora_rank=1536,
            v_head_dim=128)

TRANSFORMERS_DEFAULTS: dict[str, dict] = {
    "gpt2": dict(vocab_size=50257, layer_norm_epsilon=1e-5, tie_word_embeddings=True, n_layer=12,
                 n_embd=768, n_head=12, n_inner=None, n_positions=1024),
    "llama": dict(_LLAMA, head_dim=None),
    "mistral": dict(_LLAMA, head_dim=None, num_key_value_heads=8, intermediate_size=14336,
                    max_position_embeddings=131072, sliding_window=4096),
    "qwen2": _QWEN2,
    "qwen3": dict(_QWEN2, head_dim=128),
    "gpt_neox": dict(num_hidden_layers=44, hidden_size=6144, num_attention_heads=64,
                     intermediate_size=24576, vocab_size=50432, max_position_embeddings=2048,
                     layer_norm_eps=1e-5, tie_word_embeddings=False, use_parallel_residual=True,
                     rope_theta=10000.0, partial_rotary_factor=0.25),
    "phi3": dict(_LLAMA, hidden_size=3072, intermediate_size=8192, vocab_size=32064,
                 max_position_embeddings=4096, rms_norm_eps=1e-5, sliding_window=None,
                 partial_rotary_factor=1.0),
    "gemma": dict(_LLAMA, num_hidden_layers=28, hidden_size=3072, num_attention_heads=16,
                  num_key_value_heads=16, intermediate_size=24576, vocab_size=256000,
                  max_position_embeddings=8192, head_dim=256, tie_word_embeddings=True),
    "gemma2": dict(_LLAMA, num_hidden_layers=26, hidden_size=2304, num_attention_heads=8,
                   num_key_value_heads=4, intermediate_size=9216, vocab_size=256000,
                   max_position_embeddings=8192, head_dim=256, tie_word_embeddings=True,
                   sliding_window=4096),
    "mixtral": dict(_LLAMA, head_dim=None, num_key_value_heads=8, intermediate_size=14336,
                    max_position_embeddings=131072, rms_norm_eps=1e-5, sliding_window=None,
                    num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6),
    "qwen2_moe": dict(_QWEN2, num_hidden_layers=24, hidden_size=2048, num_attention_heads=16,
                      num_key_value_heads=16, intermediate_size=5632, num_experts_per_tok=4,
                      decoder_sparse_step=1, mlp_only_layers=None,
                      shared_expert_intermediate_size=5632, num_experts=60,
                      moe_intermediate_size=1408),
    "qwen3_moe": dict(_LLAMA, num_hidden_layers=24, hidden_size=2048, num_attention_heads=32,
                      num_key_value_heads=4, intermediate_size=6144, vocab_size=151936,
                      max_position_embeddings=32768, sliding_window=4096,
                      use_sliding_window=False, num_experts=128, num_experts_per_tok=8,
                      moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=None,
                      norm_topk_prob=False),
    "deepseek_v2": dict(_LLAMA, **_MLA, head_dim=None, vocab_size=102400, num_experts_per_tok=None,
                        moe_intermediate_size=1407, n_shared_experts=2, n_routed_experts=64,
                        first_k_dense_replace=0),
    "deepseek_v3": dict(_MLA, num_hidden_layers=61, hidden_size=7168, num_attention_heads=128,
                        num_key_value_heads=128, intermediate_size=18432, vocab_size=129280,
                        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
                        num_experts_per_tok=8, moe_intermediate_size=2048, n_shared_experts=1,
                        n_routed_experts=256, first_k_dense_replace=3, rope_theta=10000.0,
                        n_group=8, topk_group=4),
}

# key -> the value the shape formula assumes (what modeling_<family>.py builds at that value: a
# linear layer's bias=..., the head tied or not, no cross-attention)
UNMODELLED: dict[str, dict] = {
    "gpt2": {"add_cross_attention": False, "tie_word_embeddings": True},
    "llama": {"attention_bias": False, "mlp_bias": False},
    "qwen3": {"attention_bias": False},
    # GPTNeoXMLP's two linears always carry biases; attention_bias switches only the attention's
    "gpt_neox": {"attention_bias": True},
    "gemma": {"attention_bias": False},
    "gemma2": {"attention_bias": False},
    "qwen2_moe": {"qkv_bias": True},
    "qwen3_moe": {"attention_bias": False},
    "deepseek_v2": {"attention_bias": False, "mlp_bias": False},
    "deepseek_v3": {"attention_bias": False},
}


def with_transformers_defaults(cfg: Mapping) -> dict:
    """config.json as transformers completes it for the keys the family's reader reads: another
    name for a key (ATTRIBUTE_MAPS) becomes the key's own, and each key the config leaves out
    takes transformers' default (TRANSFORMERS_DEFAULTS) unless an older name of it is set."""
    model_type = cfg.get("model_type", "")
    names = ATTRIBUTE_MAPS.get(model_type, {})
    out = {names.get(key, key): value for key, value in cfg.items() if key not in names.values()}
    out.update({key: value for key, value in cfg.items() if key in names.values()})
    for key, value in TRANSFORMERS_DEFAULTS.get(model_type, {}).items():
        if key not in out and not any(old in out for old in LEGACY_NAMES.get(key, ())):
            out[key] = value
    return out


def unmodelled_keys(cfg: Mapping) -> list[str]:
    """The settings of a config that add parameters the shape formula does not count (e.g.
    'attention_bias true'); empty when the formula counts exactly what transformers builds. A key
    the config leaves out takes transformers' default, which is always the formula's value."""
    expected = UNMODELLED.get(cfg.get("model_type", ""), {})
    return [f"{key} {str(cfg[key]).lower()}" for key, value in expected.items()
            if key in cfg and bool(cfg[key]) != value]


def counted_from_shapes(cfg: Mapping) -> bool:
    """The family has a shape reader and the config sets nothing the formula leaves out."""
    return cfg.get("model_type") in TRANSFORMERS_DEFAULTS and not unmodelled_keys(cfg)
