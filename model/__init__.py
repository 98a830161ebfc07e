"""Pipeline-module transformer: a decoder-only LM (gpt2 / llama) as a DeepSpeed PipelineModule with
Megatron-style tensor parallelism, plus Hugging Face export and import. See docs/model.md.

Importing this package loads neither torch nor DeepSpeed (the CLI imports the package tree on login
nodes); the names below are resolved from their submodules on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_pipeline_model": "pipeline", "LMPipeline": "pipeline", "LMLoss": "lm",
    "LocalLM": "lm", "count_parameters": "lm", "check_layout": "lm", "RankContext": "rank_context",
    "canonical_named_parameters": "sharding",
    "TensorParallelGroup": "tp", "ColumnParallelLinear": "tp", "RowParallelLinear": "tp",
    "VocabParallelEmbedding": "tp", "vocab_parallel_cross_entropy": "tp", "gather_logits": "tp",
    "next_token_batch": "batches", "replica_micro_batches": "batches",
    "init_distributed": "distributed",
    "export_hf": "hf_export", "export_hf_from_checkpoint": "hf_export", "save_hf": "hf_export",
    "gather_canonical_state": "hf_export", "local_canonical_state": "hf_export",
    "read_checkpoint_canonical": "hf_export", "spec_from_hf_config": "hf_mapping",
    "hf_config": "hf_mapping", "count_hf_params": "hf_count", "HFWeights": "hf_import",
    "normalised_hf_config": "hf_count",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
