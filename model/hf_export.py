"""Hugging Face export: every rank's TP slices -> merged canonical tensors -> HF names ->
save_pretrained. From a live model `export_hf` (collective); from a DeepSpeed checkpoint directory,
one process, `export_hf_from_checkpoint`. Any layout exports the same way, through the canonical
state (model/sharding.py).
"""
from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from llmlaunch.topology.model_spec import ModelSpec

from .hf_mapping import canonical_to_hf, hf_config
from .sharding import (canonical_named_parameters, canonical_shapes, merge_shards,
                       pipeline_layer_prefixes, tp_split)


def save_hf(spec: ModelSpec, canonical: dict[str, torch.Tensor], out_dir,
            tokenizer=None) -> Path:
    """Write the family's HF model directory (GPT2LMHeadModel, LlamaForCausalLM,
    MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM) from canonical tensors
    (save_pretrained), plus the tokenizer when given: an object with save_pretrained, a tokenizer
    file, or a directory of tokenizer files."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bos, eos = _special_token_ids(tokenizer)
    config = hf_config(spec, bos_token_id=bos, eos_token_id=eos)
    with torch.device("meta"):           # no random init of a model we overwrite anyway
        model = AutoModelForCausalLM.from_config(config)
    state = canonical_to_hf(spec, canonical)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if spec.tied_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise RuntimeError(f"HF state mismatch: missing {sorted(set(missing) - allowed_missing)}, "
                           f"unexpected {sorted(unexpected)}")
    if spec.tied_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
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
    shards = {name: {0: p.detach().cpu()} for name, p in canonical_named_parameters(model)}
    return merge_canonical(model.spec, shards, tp=1)


def gather_canonical_state(model) -> dict[str, torch.Tensor] | None:
    """Collective over all ranks of an LMPipeline (or its DeepSpeed engine): global rank 0 gets the
    canonical tensors, the others None. Data-parallel replica 0 supplies the slices; an MoE
    model's experts come from the replicas 0..ep-1 of the first expert-data-parallel group, which
    hold E/ep experts each."""
    module = getattr(model, "module", model)
    local = {}
    dp_rank = module._grid.get_data_parallel_rank()
    ep = getattr(getattr(module, "layout", None), "ep", 1)
    for name, param in canonical_named_parameters(module):
        supplier = dp_rank < ep if getattr(param, "is_expert", False) else dp_rank == 0
        if supplier and not getattr(param, "ds_pipe_replicated", False):  # last stage's tied copy
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
