"""The spool of kept documents that pass 1 of ``data prepare`` writes and pass 3 turns into shards.

Without a given tokenizer the spool holds the kept texts, one record each (a ``SPOOL_HEADER``:
is-val flag and UTF-8 length, then the UTF-8 text); pass 2 trains the tokenizer on them and pass 3
encodes them in chunks.  With a given tokenizer pass 1 spools the documents' tokens back to back
(their lengths and splits are kept in memory) and pass 3 only copies them into the shards.
"""

from __future__ import annotations

import array
import collections
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from .shards import ShardWriter
from .workers import ordered_map, tokenize_chunk

SPOOL_FILE = "kept-documents.spool"
SPOOL_HEADER = struct.Struct("<BQ")  # is_val flag, UTF-8 length in bytes
_TOKENIZE_CHUNK_DOCUMENTS = 1024  # per tokenisation task
_TOKENIZE_CHUNK_CHARS = 1 << 18
_REPLAY_DOCUMENTS = 1 << 16  # per block read back from a token spool


def write_spooled_text(spool: BinaryIO, is_val: bool, text: str) -> None:
    """Append one kept text to a text spool."""
    data = text.encode("utf-8")
    spool.write(SPOOL_HEADER.pack(is_val, len(data)))
    spool.write(data)


def read_spool(path: Path, overrides: dict[int, bool]) -> Iterator[tuple[bool, str, int]]:
    """Stream ``(is_val, text, utf8_bytes)`` of the spooled kept documents, applying the split ``overrides``."""
    with open(path, "rb") as spool:
        index = 0
        while True:
            header = spool.read(SPOOL_HEADER.size)
            if not header:
                return
            flag, size = SPOOL_HEADER.unpack(header)
            text = spool.read(size).decode("utf-8")
            yield overrides.get(index, bool(flag)), text, size
            index += 1


def _write_splits(writers: dict[str, ShardWriter], tokens, lengths, is_val) -> None:
    """Append documents (concatenated ``tokens``, their ``lengths``, bool ``is_val`` each) to the train/val writers."""
    import numpy as np

    token_is_val = np.repeat(is_val, lengths)
    for split, select_docs, select_tokens in (("train", ~is_val, ~token_is_val), ("val", is_val, token_is_val)):
        if select_docs.any():
            writers[split].write(tokens[select_tokens], lengths[select_docs])


def replay_token_spool(path: Path, token_lengths: array.array, is_val_flags: bytearray,
                       overrides: dict[int, bool], dtype_name: str, writers: dict[str, ShardWriter]) -> None:
    """Write the documents of a token spool (pass 1 with a given tokenizer) to the shards, in order.

    ``token_lengths`` (int64 tokens per document) and ``is_val_flags`` (one byte per document) are
    what the clean pass recorded for the spooled documents.
    """
    import numpy as np

    lengths = np.frombuffer(token_lengths, dtype=np.int64) if token_lengths else np.zeros(0, np.int64)
    is_val = np.frombuffer(is_val_flags, dtype=bool).copy()
    for index, value in overrides.items():
        is_val[index] = value
    with open(path, "rb") as spool:
        for start in range(0, len(lengths), _REPLAY_DOCUMENTS):
            block = slice(start, start + _REPLAY_DOCUMENTS)
            tokens = np.fromfile(spool, dtype=dtype_name, count=int(lengths[block].sum()))
            _write_splits(writers, tokens, lengths[block], is_val[block])


def tokenize_text_spool(pool, spool_path: Path, overrides: dict[int, bool], tokenizer_path: str, eod_id: int,
                        writers: dict[str, ShardWriter], in_flight: int, workers_cpu: dict[str, float], bar) -> int:
    """Pass 3 after training: encode the spooled kept texts in chunks and write them to the shards; return their UTF-8 bytes."""
    import numpy as np

    text_bytes = 0
    flag_chunks: collections.deque = collections.deque()

    def tasks() -> Iterator[tuple[str, int, list[str]]]:
        nonlocal text_bytes
        chunk: list[tuple[bool, str]] = []
        chars = 0
        for is_val, text, size in read_spool(spool_path, overrides):
            chunk.append((is_val, text))
            chars += len(text)
            text_bytes += size
            if len(chunk) >= _TOKENIZE_CHUNK_DOCUMENTS or chars >= _TOKENIZE_CHUNK_CHARS:
                flag_chunks.append([v for v, _ in chunk])
                yield tokenizer_path, eod_id, [t for _, t in chunk]
                chunk, chars = [], 0
        if chunk:
            flag_chunks.append([v for v, _ in chunk])
            yield tokenizer_path, eod_id, [t for _, t in chunk]

    for tokens, lengths, worker_cpu_s in ordered_map(pool, tokenize_chunk, tasks(), in_flight):
        workers_cpu["tokenize"] += worker_cpu_s
        _write_splits(writers, tokens, lengths, np.asarray(flag_chunks.popleft(), dtype=bool))
        bar.update(len(lengths))
    return text_bytes
