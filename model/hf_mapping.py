"""Hugging Face names and configs for llmlaunch's canonical state (model/sharding.py).

Name and layout mapping: GPT-2's Conv1D stores [in, out], the transpose of our [out, in]; its fused
c_attn is [q | k | v], as ours. The llama family's (llama, mistral, qwen2, qwen3) q/k/v and gate/up
projections are separate matrices that we fuse, in that order (Qwen2's q/k/v biases likewise);
heads are in HF's order (query head j uses KV head j // (a/a_kv)) and RoPE uses HF's rotate_half
convention, so no permutation is needed; Qwen3's q_norm / k_norm map one to one. Vocabulary padding
is dropped on export; a tied head stays tied to the token table. The shape of an HF config is read
by topology/hf_config.py, the one reader that `plan --hf-config` uses too; the exact parameter count
of a config is hf_count.py's.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from llmlaunch.topology.hf_config import spec_from_hf_config as _spec_from_config_dict
from llmlaunch.topology.hf_config import training_differences
from llmlaunch.topology.model_spec import ROUTER_TRAINING_KEYS, ModelSpec, untrainable_reasons

from .sharding import canonical_shapes, expert_of, tp_split

SAME, TRANSPOSE, CONCAT, STACKED = "same", "transpose", "concat", "stacked"
EXPERT_INDEX = re.compile(r"experts\.\d+\.")

_GPT2_BLOCK = {
    "ln1.weight": (["ln_1.weight"], SAME), "ln1.bias": (["ln_1.bias"], SAME),
    "attn.qkv.weight": (["attn.c_attn.weight"], TRANSPOSE),
    "attn.qkv.bias": (["attn.c_attn.bias"], SAME),
    "attn.out.weight": (["attn.c_proj.weight"], TRANSPOSE),
    "attn.out.bias": (["attn.c_proj.bias"], SAME),
    "ln2.weight": (["ln_2.weight"], SAME), "ln2.bias": (["ln_2.bias"], SAME),
    "mlp.fc1.weight": (["mlp.c_fc.weight"], TRANSPOSE), "mlp.fc1.bias": (["mlp.c_fc.bias"], SAME),
    "mlp.fc2.weight": (["mlp.c_proj.weight"], TRANSPOSE),
    "mlp.fc2.bias": (["mlp.c_proj.bias"], SAME),
}
_GPT2_OTHER = {
    "embed.token.weight": (["transformer.wte.weight"], SAME),
    "embed.position.weight": (["transformer.wpe.weight"], SAME),
    "final_norm.weight": (["transformer.ln_f.weight"], SAME),
    "final_norm.bias": (["transformer.ln_f.bias"], SAME),
}
_LLAMA_BLOCK = {
    "ln1.weight": (["input_layernorm.weight"], SAME),
    "attn.qkv.weight": (["self_attn.q_proj.weight", "self_attn.k_proj.weight",
                         "self_attn.v_proj.weight"], CONCAT),
    "attn.qkv.bias": (["self_attn.q_proj.bias", "self_attn.k_proj.bias",
                       "self_attn.v_proj.bias"], CONCAT),                       # qwen2
    "attn.q_norm.weight": (["self_attn.q_norm.weight"], SAME),                  # qwen3
    "attn.k_norm.weight": (["self_attn.k_norm.weight"], SAME),
    "attn.out.weight": (["self_attn.o_proj.weight"], SAME),
    "ln2.weight": (["post_attention_layernorm.weight"], SAME),
    "mlp.gate_up.weight": (["mlp.gate_proj.weight", "mlp.up_proj.weight"], CONCAT),
    "mlp.down.weight": (["mlp.down_proj.weight"], SAME),
}
_LLAMA_OTHER = {
    "embed.token.weight": (["model.embed_tokens.weight"], SAME),
    "final_norm.weight": (["model.norm.weight"], SAME),
    "head.weight": (["lm_head.weight"], SAME),
}


# An MoE block's MLP, by transformers 5's names in memory (the experts as [E, ...] stacks, gate and
# up fused as ours); safetensors files hold one tensor per expert instead (hf_disk_names).
_MOE_BLOCK = {
    "mlp.router.weight": (["mlp.gate.weight"], SAME),
    "mlp.shared.gate_up.weight": (["mlp.shared_expert.gate_proj.weight",
                                   "mlp.shared_expert.up_proj.weight"], CONCAT),
    "mlp.shared.down.weight": (["mlp.shared_expert.down_proj.weight"], SAME),
    "mlp.shared_gate.weight": (["mlp.shared_expert_gate.weight"], SAME),
    "mlp.experts.gate_up.weight": (["mlp.experts.gate_up_proj"], STACKED),
    "mlp.experts.down.weight": (["mlp.experts.down_proj"], STACKED),
}
# How save_pretrained writes an expert's matrices (and Mixtral's router): the published files'
# names, which transformers folds into the stacks on loading (conversion_mapping.py).
_EXPERT_FILES = {"mixtral": {"gate_up": ("w1", "w3"), "down": ("w2",)},
                 "qwen": {"gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}}


def hf_mapping(spec: ModelSpec) -> dict[str, tuple[list[str], str]]:
    """canonical name -> (HF names, how they combine) for every canonical parameter (an MoE
    block's experts: their [E, ...] stack, STACKED)."""
    block_map, other, block_prefix = ((_GPT2_BLOCK, _GPT2_OTHER, "transformer.h.{}.")
                                      if spec.arch == "gpt2" else
                                      (_LLAMA_BLOCK, _LLAMA_OTHER, "model.layers.{}."))
    mapping = {}
    for name in canonical_shapes(spec):
        if name.startswith("blocks."):
            _, index, local = name.split(".", 2)
            local = EXPERT_INDEX.sub("experts.", local)
            hf_names, kind = block_map.get(local) or _MOE_BLOCK[local]
            mapping[name] = ([block_prefix.format(index) + n for n in hf_names], kind)
        else:
            mapping[name] = other[name]
    return mapping


def hf_disk_names(spec: ModelSpec, name: str) -> list[str]:
    """The safetensors names of canonical `name` as save_pretrained writes an MoE model: one
    tensor per expert (Mixtral: block_sparse_moe.experts.e.w1/w3/w2, gate and up concatenated;
    Qwen-MoE: mlp.experts.e.gate_proj/up_proj/down_proj), Mixtral's router under block_sparse_moe.
    [] for every other tensor (its HF names are the files' too)."""
    _, index, local = name.split(".", 2)
    prefix = f"model.layers.{index}."
    family = "mixtral" if spec.arch == "mixtral" else "qwen"
    if local == "mlp.router.weight" and family == "mixtral":
        return [prefix + "block_sparse_moe.gate.weight"]
    expert = expert_of(name)
    if expert is None:
        return []
    part = "gate_up" if local.endswith("gate_up.weight") else "down"
    folder = "block_sparse_moe" if family == "mixtral" else "mlp"
    return [f"{prefix}{folder}.experts.{expert}.{w}.weight" for w in _EXPERT_FILES[family][part]]


def canonical_to_hf(spec: ModelSpec, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state dict (without GPT-2's tied lm_head) from the canonical tensors, by transformers'
    names in memory (an MoE block's experts stacked in expert order)."""
    hf = {}
    for name, (hf_names, kind) in hf_mapping(spec).items():
        tensor = canonical[name]
        if kind == STACKED:      # expert e's tensor is row e of the stack; filled in order
            hf.setdefault(hf_names[0], []).append(tensor)
        elif kind == TRANSPOSE:
            hf[hf_names[0]] = tensor.t().contiguous()
        elif kind == CONCAT:
            for hf_name, part in zip(hf_names, tensor.split(list(tp_split(spec, name).segments))):
                hf[hf_name] = part.contiguous()
        else:
            hf[hf_names[0]] = tensor.contiguous()
    return {name: torch.stack(value) if isinstance(value, list) else value
            for name, value in hf.items()}


def hf_config(spec: ModelSpec, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """The transformers config (GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config)
    describing `spec` (no dropout)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    if spec.arch == "gpt2":
        return GPT2Config(vocab_size=spec.vocab, n_positions=spec.seq_len, n_embd=spec.hidden,
                          n_layer=spec.layers, n_head=spec.heads, n_inner=spec.ffn_hidden,
                          activation_function="gelu_new", layer_norm_epsilon=spec.norm_eps,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          tie_word_embeddings=True, bos_token_id=bos_token_id,
                          eos_token_id=eos_token_id)
    common = dict(vocab_size=spec.vocab, hidden_size=spec.hidden,
                  intermediate_size=spec.ffn_hidden, num_hidden_layers=spec.layers,
                  num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                  max_position_embeddings=spec.seq_len, rms_norm_eps=spec.norm_eps,
                  tie_word_embeddings=spec.tied_embeddings,
                  rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
                  hidden_act="silu", bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    window = spec.sliding_window or None
    if spec.arch == "llama":
        return LlamaConfig(**common, head_dim=spec.head_dim, attention_bias=False, mlp_bias=False)
    if spec.arch == "mistral":
        return MistralConfig(**common, head_dim=spec.head_dim, sliding_window=window)
    qwen_window = dict(use_sliding_window=window is not None, sliding_window=window,
                       max_window_layers=0)          # the window, when set, on every layer
    if spec.arch == "qwen2":
        extra = {} if spec.head_dim * spec.heads == spec.hidden else {"head_dim": spec.head_dim}
        return Qwen2Config(**common, **qwen_window, **extra)
    if spec.arch == "qwen3":
        return Qwen3Config(**common, **qwen_window, head_dim=spec.head_dim, attention_bias=False)
    if spec.moe:
        return moe_hf_config(spec, common, window, qwen_window)
    raise ValueError(f"arch {spec.arch} has no Hugging Face export: "
                     f"{'; '.join(untrainable_reasons(spec))}")


def spec_from_hf_config(config) -> ModelSpec:
    """The ModelSpec of a PretrainedConfig (or a local directory holding one), through
    topology/hf_config.py; ValueError when llmlaunch's model would compute something else
    (training_differences, untrainable_reasons), so an HF checkpoint is never imported into a
    different model."""
    if isinstance(config, (str, Path)):
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(str(config), local_files_only=True)
    cfg = config.to_dict()
    spec = _spec_from_config_dict(cfg, seq_len=cfg.get("n_positions") or cfg.get(
        "max_position_embeddings"))
    differences = untrainable_reasons(spec) + training_differences(cfg, spec)
    if differences:
        raise ValueError(f"HF model type {cfg.get('model_type')!r} with {', '.join(differences)}: "
                         "llmlaunch's model does not compute that")
    return spec


def check_compatible(spec: ModelSpec, hf_spec: ModelSpec) -> None:
    """Raise ValueError unless the HF model has our spec's shape (a rotary model may have a longer
    max_position_embeddings: it holds no parameters)."""
    unused = ("ffn_hidden",) if spec.moe and not spec.dense_layers else ()   # no dense MLP to size
    fields = [f.name for f in dataclasses.fields(ModelSpec)
              if f.name not in ("name", "seq_len", *ROUTER_TRAINING_KEYS, *unused)]
    if spec.learned_positions:
        fields.append("seq_len")
    diffs = [f"{f}: run {getattr(spec, f)!r}, HF {getattr(hf_spec, f)!r}" for f in fields
             if getattr(spec, f) != getattr(hf_spec, f)]
    if diffs:
        raise ValueError("the HF model does not match the run's model: " + "; ".join(diffs))


def moe_hf_config(spec: ModelSpec, common: dict, window, qwen_window: dict):
    """MixtralConfig, Qwen2MoeConfig or Qwen3MoeConfig of an MoE spec; ValueError naming what the
    family's transformers class cannot hold (Mixtral: a shared expert, dense layers, un-normalised
    top-k weights; Qwen2-MoE: a shared expert without its gate; Qwen3-MoE: a shared expert)."""
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    cannot = []
    if spec.arch == "mixtral":
        cannot = [what for what, present in (
            ("a shared expert", spec.shared_expert_ffn_hidden), ("dense layers", spec.dense_layers),
            ("norm_topk_prob false", not spec.norm_topk_prob)) if present]
    elif spec.arch == "qwen2_moe" and spec.shared_expert_gate != bool(spec.shared_expert_ffn_hidden):
        cannot = ["a shared expert without its gate (Qwen2-MoE gates it)"]
    elif spec.arch == "qwen3_moe" and spec.shared_expert_ffn_hidden:
        cannot = ["a shared expert"]
    if cannot:
        raise ValueError(f"arch {spec.arch} has no Hugging Face class with {', '.join(cannot)}")
    router = dict(num_experts_per_tok=spec.experts_per_token,
                  router_aux_loss_coef=spec.router_aux_loss_coef)
    if spec.arch == "mixtral":
        return MixtralConfig(**{**common, "intermediate_size": spec.expert_ffn_hidden}, **router,
                             num_local_experts=spec.experts, head_dim=spec.head_dim,
                             sliding_window=window)
    qwen = dict(**common, **qwen_window, **router, num_experts=spec.experts,
                moe_intermediate_size=spec.expert_ffn_hidden, norm_topk_prob=spec.norm_topk_prob,
                decoder_sparse_step=1, mlp_only_layers=list(range(spec.dense_layers)))
    if spec.arch == "qwen2_moe":
        extra = {} if spec.head_dim * spec.heads == spec.hidden else {"head_dim": spec.head_dim}
        return Qwen2MoeConfig(**qwen, **extra, qkv_bias=True,
                              shared_expert_intermediate_size=spec.shared_expert_ffn_hidden)
    return Qwen3MoeConfig(**qwen, head_dim=spec.head_dim, attention_bias=False)
