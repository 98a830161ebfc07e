"""Parquet and Arrow token columns (a Hugging Face dataset of ``input_ids``, say), converted once.

Parquet is compressed and cannot be memory-mapped, so before any rank starts the index builder
streams the token column, one record batch at a time, into a Megatron pair (data/megatron.py) in
the run's index cache, keyed by the files' paths, sizes and modification times; every rank then reads
that pair. One row is one document. Arrow IPC files (``.arrow``: the file or the stream format,
what ``datasets.save_to_disk`` writes) go the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import DataError
from .megatron import MegatronWriter

TOKEN_COLUMNS = ("input_ids", "tokens", "token_ids", "ids")
CONVERTED_DIR = "converted"


def _fingerprint(files: list[Path], column: str) -> str:
    parts = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return hashlib.sha256(json.dumps([parts, column]).encode()).hexdigest()[:16]


COLUMNAR_SUFFIXES = (".parquet", ".arrow")


def columnar_files(path: Path) -> list[Path]:
    """The .parquet/.arrow files of a source path (a file, or a folder searched recursively)."""
    if path.is_file() and path.suffix in COLUMNAR_SUFFIXES:
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in COLUMNAR_SUFFIXES and p.is_file())
    return []


def converted_prefix(spec, cache_dir: Path) -> Path:
    """Where the Megatron conversion of a columnar source lives in the cache."""
    files = columnar_files(Path(spec.path))
    return Path(cache_dir) / CONVERTED_DIR / _fingerprint(files, spec.column) / "tokens"


def _batches(path: Path):
    """Record batches of one .parquet or .arrow file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet/Arrow needs the 'pyarrow' package") from None
    try:
        if path.suffix == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=8192)
            return
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        except pa.ArrowInvalid:
            source.seek(0)
            yield from pa.ipc.open_stream(source)
    except DataError:
        raise
    except Exception as exc:   # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({exc})") from None


def _token_column(batch, path: Path, column: str):
    names = batch.schema.names
    name = column or next((c for c in TOKEN_COLUMNS if c in names), None)
    if name is None or name not in names:
        raise DataError(f"{path}: no token column {column or ' / '.join(TOKEN_COLUMNS)!r} "
                        f"(columns: {', '.join(names)}; set the source's column)")
    return batch.column(names.index(name)), name


def _flat(array, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of a list<int> arrow array."""
    import pyarrow as pa

    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)) or \
            not pa.types.is_integer(array.type.value_type):
        raise DataError(f"{path}: column {name!r} is {array.type}, not a list of token ids")
    offsets = np.asarray(array.offsets, np.int64)
    values = np.asarray(array.values.to_numpy(zero_copy_only=False), np.int64)[offsets[0]:offsets[-1]]
    lengths = np.diff(offsets)
    if array.null_count:
        lengths = np.where(np.asarray(array.is_null(), bool), 0, lengths)
    return values, lengths


def ensure_converted(spec, cache_dir: Path) -> Path:
    """The Megatron prefix of a columnar source, converting it (atomically) when not yet done."""
    prefix = converted_prefix(spec, cache_dir)
    if Path(f"{prefix}.idx").is_file():
        return prefix
    files = columnar_files(Path(spec.path))
    largest, pending = 0, []
    tmp = prefix.parent.with_name(prefix.parent.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    # first pass: the largest id, to pick the dtype (uint16 when it fits, as Megatron does)
    for path in files:
        for batch in _batches(path):
            values, _ = _flat(*_token_column(batch, path, spec.column), path)
            if len(values):
                if values.min() < 0:
                    raise DataError(f"{path}: negative token id {values.min()}")
                largest = max(largest, int(values.max()))
        pending.append(path)
    writer = MegatronWriter(tmp / "tokens", np.uint16 if largest < 65536 else np.int32)
    for path in pending:
        for batch in _batches(path):
            values, lengths = _flat(*_token_column(batch, path, spec.column), path)
            writer.add_documents(values, lengths)
    writer.close()
    if prefix.parent.exists():
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, prefix.parent)
    return prefix

