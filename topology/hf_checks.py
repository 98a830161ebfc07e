"""A Hugging Face config.json checked before anything is built from it: the one check behind
`plan --hf-config`, `cost --hf-config` and run.yaml's `model.hf_config` (topology/hf_config.py's
read_hf_config calls it), so that a bad file is one line naming the file and the key, never a
traceback from transformers or a model allocated at an absurd size.

What is refused, each with the key (a dotted path for nested ones):
- bytes that are not UTF-8 (the offset), text that is not JSON (the line), JSON nested deeper than
  MAX_DEPTH levels (published configs nest 3: text_config.rope_scaling.factor);
- a shape key (SIZE_LIMITS) that is not an integer (a float such as 1e12, a string, a bool), is
  zero or negative where a size must be positive, or exceeds its bound;
- a number that is NaN or infinite anywhere (Python's json reads NaN and Infinity), and a
  float key of the shape (FLOAT_KEYS) that is not a positive finite number.
The bounds are far above any published model (the largest widths today: Llama 3 405B's 53248-wide
MLP, DeepSeek-V3's 18432 and 256 experts, Llama 4's 10M-token context), so they only stop sizes no
GPU could hold a layer of.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

MAX_DEPTH = 16
_WIDTH = 1 << 20
# key: (smallest allowed, largest allowed); widths, counts and lengths of a decoder's shape.
SIZE_LIMITS = {
    **{key: (1, _WIDTH) for key in (
        "hidden_size", "n_embd", "d_model", "dim", "intermediate_size", "n_inner", "ffn_dim",
        "ffn_hidden_size", "moe_intermediate_size", "shared_expert_intermediate_size",
        "head_dim", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")},
    **{key: (1, 10_000) for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")},
    **{key: (1, 1 << 16) for key in (
        "num_attention_heads", "n_head", "num_heads", "n_heads", "num_key_value_heads",
        "num_kv_heads", "n_kv_heads", "num_local_experts", "num_experts", "n_routed_experts",
        "num_experts_per_tok", "top_k")},
    "vocab_size": (1, 1 << 24),
    **{key: (1, 1 << 26) for key in ("max_position_embeddings", "n_positions", "max_seq_len",
                                     "seq_length")},
    **{key: (0, _WIDTH) for key in ("q_lora_rank", "sliding_window")},
    **{key: (0, 10_000) for key in ("first_k_dense_replace", "n_shared_experts",
                                    "max_window_layers", "decoder_sparse_step")},
}
FLOAT_KEYS = ("rope_theta", "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps",
              "rotary_emb_base", "partial_rotary_factor", "rotary_pct")


def _depth_path(value, path: str, depth: int) -> str | None:
    """The dotted path of the first value nested deeper than MAX_DEPTH (None: none is)."""
    if depth > MAX_DEPTH:
        return path or "(top)"
    items = (value.items() if isinstance(value, Mapping) else
             enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        found = _depth_path(item, f"{path}.{key}" if path else str(key), depth + 1)
        if found:
            return found
    return None


def _non_finite(value, path: str) -> str | None:
    """The dotted path of the first NaN or infinite number (None: none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = (value.items() if isinstance(value, Mapping) else
             enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def size_problem(key: str, value) -> str | None:
    """Why `value` is no valid `key` of a shape (None: it is, or the key is no shape key; a null is
    the config's 'unset' and left to the family's reader)."""
    if value is None:
        return None
    if key in SIZE_LIMITS:
        low, high = SIZE_LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if not low <= value <= high:
            return (f"must be {'positive' if low else 'at least 0'} and at most {high:,}, got "
                    f"{value:,}")
    elif key in FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0):
            return f"must be a positive finite number, got {value!r}"
    return None


def check_hf_config(cfg: Mapping, where: str) -> None:
    """ValueError in one line naming `where` (the input and its file) and the key, for the first
    problem of the module docstring's list (the JSON's own errors are read_hf_config's)."""
    deep = _depth_path(cfg, "", 1)
    if deep:
        raise ValueError(f"{where}: JSON nested deeper than {MAX_DEPTH} levels (at {deep}); a "
                         "transformers config nests a few")
    bad = _non_finite(cfg, "")
    if bad:
        raise ValueError(f"{where}: key {bad!r} is NaN or infinite")
    sections = [("", cfg)] + [(f"{k}.", v) for k, v in cfg.items()
                              if isinstance(v, Mapping) and k in ("text_config", "llm_config")]
    for prefix, section in sections:
        for key, value in section.items():
            problem = size_problem(key, value)
            if problem:
                raise ValueError(f"{where}: key {prefix + key!r} {problem}")
