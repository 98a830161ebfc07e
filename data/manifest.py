"""``manifest.json`` of a ``data prepare`` output directory: what it holds and how it was made.

The manifest has no timestamps or host names: apart from its ``versions`` entry (the software
that ran), the same inputs and options give the same bytes.  See docs/data.md for its fields.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

from .clean_pass import CleanPass
from .prepare_config import PrepareConfig
from .readers import InputFile, InputStats
from .shards import FORMAT_NAME, FORMAT_VERSION

MANIFEST_FILE = "manifest.json"


def build_manifest(
    config: PrepareConfig,
    inputs: Sequence[InputFile],
    input_stats: dict[Path, InputStats],
    state: CleanPass,
    splits: dict[str, dict[str, Any]],
    vocab_size: int,
    dtype_name: str,
    eod_id: int,
    tokenizer_info: dict[str, Any],
    eval_entries: list[dict[str, Any]],
    eval_documents: int,
    eval_too_short: int,
    eval_ngram_count: int,
) -> dict[str, Any]:
    """Build ``manifest.json`` (no timestamps or host names: it must be reproducible)."""
    tokens_out = sum(s["tokens"] for s in splits.values())
    documents_out = sum(s["documents"] for s in splits.values())
    assert documents_out == state.kept
    assert state.documents_in == documents_out + sum(state.removed.values())
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "documents_in": state.documents_in,
        "documents_out": documents_out,
        "tokens_out": tokens_out,
        "removed": dict(state.removed),
        "dtype": dtype_name,
        "byte_order": "little",
        "index_dtype": "uint64",
        "vocab_size": vocab_size,
        "eod_token": config.eod_token,
        "eod_id": eod_id,
        "tokenizer": tokenizer_info,
        "splits": splits,
        "shards": [name for s in splits.values() for shard in s["shards"] for name in (shard["tokens_file"], shard["index_file"])],
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "inputs": [input_entry(inp, input_stats.get(inp.path)) for inp in inputs],
        "eval_inputs": eval_entries,
        "cleaning": {
            "normalization": config.normalization,
            "text_split": config.text_split,
            "text_field": config.text_field,
            "quality_thresholds": config.thresholds.to_dict(),
            "near_dup": {
                "enabled": config.near_dup.enabled,
                "threshold": config.near_dup.threshold,
                "num_perm": config.near_dup.num_perm,
                "shingle_words": config.near_dup.shingle_words,
            },
            "decontamination": {
                "ngram_words": config.decontam_ngram_words,
                "eval_documents": eval_documents,
                "eval_documents_shorter_than_ngram": eval_too_short,
                "eval_ngrams": eval_ngram_count,
            },
        },
        "shard_size_tokens": config.shard_size_tokens,
        "versions": _versions(),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` to ``directory / MANIFEST_FILE`` (indented JSON, UTF-8, final newline)."""
    with open(directory / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def input_entry(inp: InputFile, stats: InputStats | None) -> dict[str, Any]:
    """Manifest record of one input file."""
    stats = stats or InputStats()
    return {
        "path": str(inp.path),
        "format": inp.format + (".gz" if inp.gzipped else ""),
        "bytes": stats.bytes,
        "sha256": stats.sha256,
        "documents": stats.documents,
    }


def file_sha256(path: Path) -> str:
    """SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    """Versions of the software that shapes the output."""
    import numpy
    import tokenizers

    try:
        import llmlaunch

        llmlaunch_version = str(getattr(llmlaunch, "__version__", "unknown"))
    except ImportError:  # pragma: no cover - the package is always importable when this runs
        llmlaunch_version = "unknown"
    return {
        "python": platform.python_version(),
        "llmlaunch": llmlaunch_version,
        "tokenizers": tokenizers.__version__,
        "datasketch": _datasketch_version(),
        "numpy": numpy.__version__,
    }


def _datasketch_version() -> str:
    """``datasketch.__version__`` without importing datasketch (and scipy, ~0.4 s) when near-dup did not need it."""
    if "datasketch" not in sys.modules:
        import importlib.metadata

        try:
            return importlib.metadata.version("datasketch")  # what datasketch 2.x sets __version__ to
        except importlib.metadata.PackageNotFoundError:
            pass
    import datasketch

    return datasketch.__version__
