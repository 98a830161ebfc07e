"""Pipeline-module transformer: a decoder-only LM (gpt2 / llama) as a DeepSpeed PipelineModule with
Megatron-style tensor parallelism, plus Hugging Face export and import. See docs/model.md.

Importing this package loads neither torch nor DeepSpeed (the CLI imports the package tree on login
nodes); the names below are resolved from their submodules on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_pipeline_model": "pipeline", "LMPipeline": "pipeline", "LMLoss": "pipeline",
    "LocalLM": "pipeline", "count_parameters": "pipeline", "check_layout": "pipeline",
    "canonical_named_parameters": "pipeline",
    "TensorParallelGroup": "tp", "ColumnParallelLinear": "tp", "RowParallelLinear": "tp",
    "VocabParallelEmbedding": "tp", "vocab_parallel_cross_entropy": "tp", "gather_logits": "tp",
    "next_token_batch": "batches", "replica_micro_batches": "batches",
    "init_distributed": "distributed",
    "export_hf": "hf", "export_hf_from_checkpoint": "hf", "save_hf": "hf",
    "gather_canonical_state": "hf", "local_canonical_state": "hf",
    "read_checkpoint_canonical": "hf", "spec_from_hf_config": "hf", "hf_config": "hf",
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
