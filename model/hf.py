"""Hugging Face export and import: GPT2LMHeadModel / LlamaForCausalLM directories.

Both directions go through the canonical state (model/sharding.py: full, unpadded tensors under
layout-free names), so any layout exports and imports the same way:

  export: every rank's TP slices -> merged canonical tensors -> HF names -> save_pretrained
          (from a live model: `export_hf`, collective; from a DeepSpeed checkpoint directory,
          one process: `export_hf_from_checkpoint`)
  import: HF safetensors -> canonical tensors -> each rank's slice (`build_pipeline_model(hf_dir=)`,
          each rank reads only the tensors it needs)

Name and layout mapping: GPT-2's Conv1D stores [in, out], the transpose of our [out, in]; its fused
c_attn is [q | k | v], as ours. Llama's q/k/v and gate/up projections are separate matrices that we
fuse, in that order; heads are in HF's order (query head j uses KV head j // (a/a_kv)) and RoPE uses
HF's rotate_half convention, so no permutation is needed. Vocabulary padding is dropped on export;
GPT-2's head stays tied to wte.
"""
from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from llmlaunch.topology.model_spec import ModelSpec

from .sharding import canonical_shapes, merge_shards, pipeline_layer_prefixes, tp_split

SAME, TRANSPOSE, CONCAT = "same", "transpose", "concat"

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


def hf_mapping(spec: ModelSpec) -> dict[str, tuple[list[str], str]]:
    """canonical name -> (HF names, how they combine) for every canonical parameter."""
    block_map, other, block_prefix = ((_GPT2_BLOCK, _GPT2_OTHER, "transformer.h.{}.")
                                      if spec.arch == "gpt2" else
                                      (_LLAMA_BLOCK, _LLAMA_OTHER, "model.layers.{}."))
    mapping = {}
    for name in canonical_shapes(spec):
        if name.startswith("blocks."):
            _, index, local = name.split(".", 2)
            hf_names, kind = block_map[local]
            mapping[name] = ([block_prefix.format(index) + n for n in hf_names], kind)
        else:
            mapping[name] = other[name]
    return mapping


def canonical_to_hf(spec: ModelSpec, canonical: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state dict (without GPT-2's tied lm_head) from the canonical tensors."""
    hf = {}
    for name, (hf_names, kind) in hf_mapping(spec).items():
        tensor = canonical[name]
        if kind == TRANSPOSE:
            hf[hf_names[0]] = tensor.t().contiguous()
        elif kind == CONCAT:
            for hf_name, part in zip(hf_names, tensor.split(list(tp_split(spec, name).segments))):
                hf[hf_name] = part.contiguous()
        else:
            hf[hf_names[0]] = tensor.contiguous()
    return hf


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def hf_config(spec: ModelSpec, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """GPT2Config or LlamaConfig describing `spec` (no dropout)."""
    from transformers import GPT2Config, LlamaConfig

    if spec.arch == "gpt2":
        return GPT2Config(vocab_size=spec.vocab, n_positions=spec.seq_len, n_embd=spec.hidden,
                          n_layer=spec.layers, n_head=spec.heads, n_inner=spec.ffn_hidden,
                          activation_function="gelu_new", layer_norm_epsilon=spec.norm_eps,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          tie_word_embeddings=True, bos_token_id=bos_token_id,
                          eos_token_id=eos_token_id)
    return LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden,
                       intermediate_size=spec.ffn_hidden, num_hidden_layers=spec.layers,
                       num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                       head_dim=spec.head_dim, max_position_embeddings=spec.seq_len,
                       rms_norm_eps=spec.norm_eps, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
                       attention_bias=False, mlp_bias=False, hidden_act="silu",
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id)


def spec_from_hf_config(config) -> ModelSpec:
    """The ModelSpec of a GPT2Config / LlamaConfig (or a directory holding one)."""
    if isinstance(config, (str, Path)):
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(str(config), local_files_only=True)
    if config.model_type == "gpt2":
        return ModelSpec(arch="gpt2", layers=config.n_layer, hidden=config.n_embd,
                         heads=config.n_head, ffn_hidden=config.n_inner or 4 * config.n_embd,
                         vocab=config.vocab_size, seq_len=config.n_positions,
                         norm_eps=config.layer_norm_epsilon)
    if config.model_type == "llama":
        rope = config.rope_parameters or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not supported")
        if config.head_dim != config.hidden_size // config.num_attention_heads:
            raise ValueError("a llama head_dim other than hidden/heads is not supported")
        if config.attention_bias or config.mlp_bias:
            raise ValueError("llama with biases is not supported")
        return ModelSpec(arch="llama", layers=config.num_hidden_layers, hidden=config.hidden_size,
                         heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                         ffn_hidden=config.intermediate_size, vocab=config.vocab_size,
                         seq_len=config.max_position_embeddings,
                         rope_theta=rope.get("rope_theta", 10000.0),
                         norm_eps=config.rms_norm_eps)
    raise ValueError(f"HF model type {config.model_type!r} is neither gpt2 nor llama")


def check_compatible(spec: ModelSpec, hf_spec: ModelSpec) -> None:
    """Raise ValueError unless the HF model has our spec's shape (llama may have a longer
    max_position_embeddings: it holds no parameters)."""
    fields = ["arch", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "norm_eps"]
    fields += ["seq_len"] if spec.arch == "gpt2" else ["rope_theta"]
    diffs = [f"{f}: run {getattr(spec, f)!r}, HF {getattr(hf_spec, f)!r}" for f in fields
             if getattr(spec, f) != getattr(hf_spec, f)]
    if diffs:
        raise ValueError("the HF model does not match the run's model: " + "; ".join(diffs))


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------

class HFWeights:
    """Lazy reader of a local HF directory's safetensors, yielding canonical tensors by name."""

    def __init__(self, hf_dir, spec: ModelSpec):
        from transformers import AutoConfig

        self.dir = Path(hf_dir)
        self.spec = spec
        self.config = AutoConfig.from_pretrained(str(self.dir), local_files_only=True)
        check_compatible(spec, spec_from_hf_config(self.config))
        self.mapping = hf_mapping(spec)
        self._files = self._weight_files()
        self._handles = {}

    def _weight_files(self) -> dict[str, Path]:
        """HF tensor name -> the safetensors file holding it."""
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.dir / file for name, file in weight_map.items()}
        single = self.dir / "model.safetensors"
        if not single.is_file():
            raise FileNotFoundError(f"{self.dir} has no model.safetensors(.index.json)")
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}

    def _hf_tensor(self, name: str) -> torch.Tensor:
        if name not in self._files and name == "lm_head.weight" and self.config.tie_word_embeddings:
            name = "model.embed_tokens.weight"      # a llama that ties its head (e.g. Llama 3.2 1B)
        if name not in self._files:
            raise KeyError(f"{self.dir} has no tensor {name}")
        from safetensors import safe_open

        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path].get_tensor(name).float()

    def canonical_tensor(self, name: str) -> torch.Tensor:
        """The full canonical tensor `name`, fp32."""
        hf_names, kind = self.mapping[name]
        tensors = [self._hf_tensor(n) for n in hf_names]
        if kind == TRANSPOSE:
            return tensors[0].t().contiguous()
        if kind == CONCAT:
            return torch.cat(tensors, dim=0)
        return tensors[0]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def save_hf(spec: ModelSpec, canonical: dict[str, torch.Tensor], out_dir,
            tokenizer=None) -> Path:
    """Write a GPT2LMHeadModel / LlamaForCausalLM directory from canonical tensors
    (save_pretrained), plus the tokenizer when given: an object with save_pretrained, a tokenizer
    file, or a directory of tokenizer files."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bos, eos = _special_token_ids(tokenizer)
    config = hf_config(spec, bos_token_id=bos, eos_token_id=eos)
    model_class = GPT2LMHeadModel if spec.arch == "gpt2" else LlamaForCausalLM
    with torch.device("meta"):           # no random init of a model we overwrite anyway
        model = model_class(config)
    state = canonical_to_hf(spec, canonical)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if spec.tied_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise RuntimeError(f"HF state mismatch: missing {sorted(set(missing) - allowed_missing)}, "
                           f"unexpected {sorted(unexpected)}")
    if spec.tied_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    model.save_pretrained(str(out))
    _save_tokenizer(tokenizer, out)
    return out


def _special_token_ids(tokenizer) -> tuple[int | None, int | None]:
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        return None, None
    return getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


def _save_tokenizer(tokenizer, out: Path) -> None:
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
        return
    source = Path(tokenizer)
    if source.is_dir():
        files = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
        if not files:
            raise FileNotFoundError(f"{source} holds none of {', '.join(TOKENIZER_FILES)}")
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"tokenizer {source} does not exist")
    for file in files:
        shutil.copy2(file, out / file.name)


def merge_canonical(spec: ModelSpec, shards: dict[str, dict[int, torch.Tensor]],
                    tp: int) -> dict[str, torch.Tensor]:
    """Full canonical tensors from {name: {tp rank: slice}}; every name needs every rank's slice
    (replicated tensors: at least rank 0's)."""
    canonical = {}
    for name in canonical_shapes(spec):
        split = tp_split(spec, name)
        available = shards.get(name, {})
        if split is None:          # replicated: any rank's copy
            ranks = [min(available)] if available else [0]
        else:
            ranks = list(range(tp))
        missing = [r for r in ranks if r not in available]
        if missing:
            raise ValueError(f"{name}: no slice from TP rank(s) {missing}")
        canonical[name] = merge_shards([available[r] for r in ranks], split)
        if tuple(canonical[name].shape) != canonical_shapes(spec)[name]:
            raise ValueError(f"{name}: merged shape {tuple(canonical[name].shape)}, expected "
                             f"{canonical_shapes(spec)[name]}")
    return canonical


def local_canonical_state(model) -> dict[str, torch.Tensor]:
    """Canonical tensors of a single-process model (LocalLM, or any tp=1 module of our layers)."""
    from .pipeline import canonical_named_parameters

    shards = {name: {0: p.detach().cpu()} for name, p in canonical_named_parameters(model)}
    return merge_canonical(model.spec, shards, tp=1)


def gather_canonical_state(model) -> dict[str, torch.Tensor] | None:
    """Collective over all ranks of an LMPipeline (or its DeepSpeed engine): global rank 0 gets the
    canonical tensors, the others None. Data-parallel replica 0 supplies the slices."""
    from .pipeline import canonical_named_parameters

    module = getattr(model, "module", model)
    local = {}
    if module._grid.get_data_parallel_rank() == 0:
        for name, param in canonical_named_parameters(module):
            if not getattr(param, "ds_pipe_replicated", False):   # the last stage's tied copy
                local[name] = param.detach().cpu()
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((module.tp_group.rank, local), gathered, dst=0)
    if dist.get_rank() != 0:
        return None
    shards = defaultdict(dict)
    for tp_rank, tensors in gathered:
        for name, tensor in tensors.items():
            shards[name][tp_rank] = tensor
    return merge_canonical(module.spec, shards, module.tp_group.size)


def export_hf(model, out_dir, tokenizer=None) -> Path | None:
    """Collective: every rank calls it; global rank 0 writes the HF directory and returns its
    path (others None) after a barrier, so the directory is complete when any rank returns."""
    module = getattr(model, "module", model)
    canonical = gather_canonical_state(module)
    path = save_hf(module.spec, canonical, out_dir, tokenizer) if canonical is not None else None
    dist.barrier()
    return path


_LAYER_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt$")


def read_checkpoint_canonical(checkpoint_dir, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Canonical tensors from a DeepSpeed pipeline checkpoint: the tag directory holding
    layer_XX-model_YY-model_states.pt files, or its parent with a `latest` file."""
    path = Path(checkpoint_dir)
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    prefixes = pipeline_layer_prefixes(spec)
    shards = defaultdict(dict)
    tp = 0
    for file in sorted(path.glob("layer_*-model_*-model_states.pt")):
        layer, tp_rank = map(int, _LAYER_FILE.search(file.name).groups())
        tp = max(tp, tp_rank + 1)
        state = torch.load(file, map_location="cpu", weights_only=True)
        for local_name, tensor in state.items():
            shards[prefixes[layer] + local_name][tp_rank] = tensor
    if not tp:
        raise FileNotFoundError(f"{path} holds no layer_*-model_*-model_states.pt files")
    return merge_canonical(spec, shards, tp)


def export_hf_from_checkpoint(checkpoint_dir, spec: ModelSpec, out_dir, tokenizer=None) -> Path:
    """One process: a DeepSpeed checkpoint of any layout -> HF directory."""
    return save_hf(spec, read_checkpoint_canonical(checkpoint_dir, spec), out_dir, tokenizer)
