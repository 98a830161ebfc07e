"""Megatron-LM's indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``, the ``MMIDIDX`` format), read with
numpy memmaps and written by :class:`MegatronWriter` (the columnar sources' cache, and tests).

The format, as megatron/core/datasets/indexed_dataset.py writes it (NeMo and GPT-NeoX write the same):

* ``PREFIX.bin``: the token sequences back to back, little-endian, in the index's dtype.
* ``PREFIX.idx``: the 9 bytes ``MMIDIDX\\x00\\x00``, version ``<Q`` (1), dtype code ``<B``, sequence
  count ``<Q``, document count ``<Q``, then the sequence lengths (int32), the sequence byte offsets
  into ``.bin`` (int64) and the document indices (int64: the sequence where each document starts,
  with a final sentinel, so ``document count = documents + 1``); multimodal data adds one int8 mode
  per sequence, which a language model does not read.

A document is its sequences, in order. Megatron's builder writes them contiguously, so the ``.bin``
is one token stream; a file whose offsets skip or reorder bytes is refused (it is not what the
builder writes, and the windows of the stream would not be the documents).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
TOKEN_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5,
               np.dtype(np.uint8): 1, np.dtype(np.int16): 3}
HEADER = struct.Struct("<9sQBQQ")   # magic, version, dtype code, sequences, documents + 1
CHUNK = 1 << 22


def prefix_of(path: str | Path) -> Path:
    """PREFIX from PREFIX, PREFIX.bin or PREFIX.idx."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".bin", ".idx") else path


def is_megatron(path: str | Path) -> bool:
    prefix = prefix_of(path)
    return Path(f"{prefix}.idx").is_file() and Path(f"{prefix}.bin").is_file()


class MegatronIndex:
    """The ``.idx`` of one Megatron dataset, its arrays memory-mapped (nothing is loaded)."""

    def __init__(self, prefix: str | Path):
        self.prefix = prefix_of(prefix)
        self.idx_path, self.bin_path = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        try:
            with open(self.idx_path, "rb") as handle:
                head = handle.read(HEADER.size)
        except OSError as exc:
            raise DataError(f"{self.idx_path}: cannot read ({exc.strerror})") from None
        if len(head) < HEADER.size or head[:9] != MAGIC:
            raise DataError(f"{self.idx_path}: not a Megatron MMIDIDX index (no MMIDIDX header)")
        _, version, code, sequences, doc_entries = HEADER.unpack(head)
        if version != VERSION:
            raise DataError(f"{self.idx_path}: MMIDIDX version {version}, llmlaunch reads {VERSION}")
        if code not in DTYPE_CODES or np.dtype(DTYPE_CODES[code]).kind == "f":
            raise DataError(f"{self.idx_path}: dtype code {code} is not an integer token type")
        self.dtype = np.dtype(DTYPE_CODES[code]).newbyteorder("<")
        self.sequences, self.documents = int(sequences), int(doc_entries) - 1
        offset = HEADER.size
        need = offset + sequences * 4 + sequences * 8 + doc_entries * 8
        size = self.idx_path.stat().st_size
        if size < need:
            raise DataError(f"{self.idx_path}: {size} bytes, the header promises at least {need}")
        self.lengths = np.memmap(self.idx_path, "<i4", "r", offset, (sequences,)) if sequences else \
            np.zeros(0, "<i4")
        offset += sequences * 4
        self.pointers = np.memmap(self.idx_path, "<i8", "r", offset, (sequences,)) if sequences \
            else np.zeros(0, "<i8")
        offset += sequences * 8
        self.doc_index = np.memmap(self.idx_path, "<i8", "r", offset, (doc_entries,))

    @property
    def tokens(self) -> int:
        return int(self.lengths[-1]) + int(self.pointers[-1]) // self.dtype.itemsize \
            if self.sequences else 0

    def check(self) -> None:
        """The .bin holds exactly the sequences, back to back, and the documents cover them in order
        (one chunked pass over the index; DataError naming the file otherwise)."""
        expected_bytes = self.tokens * self.dtype.itemsize
        got = self.bin_path.stat().st_size if self.bin_path.is_file() else None
        if got is None:
            raise DataError(f"{self.bin_path}: missing (the .idx names it)")
        if got != expected_bytes:
            raise DataError(f"{self.bin_path}: {got} bytes, its .idx says {expected_bytes} "
                            f"({self.tokens} {self.dtype.name} tokens)")
        position = 0
        for start in range(0, self.sequences, CHUNK):
            lengths = np.asarray(self.lengths[start:start + CHUNK], np.int64)
            if (lengths < 0).any():
                raise DataError(f"{self.idx_path}: negative sequence length")
            expected = position + np.concatenate([[0], np.cumsum(lengths)[:-1]]) * self.dtype.itemsize
            if not np.array_equal(np.asarray(self.pointers[start:start + CHUNK]), expected):
                raise DataError(f"{self.idx_path}: sequences are not back to back in the .bin "
                                "(not as Megatron's builder writes them)")
            position = int(expected[-1]) + int(lengths[-1]) * self.dtype.itemsize
        previous = 0
        for start in range(0, len(self.doc_index), CHUNK):
            chunk = np.asarray(self.doc_index[start:start + CHUNK], np.int64)
            if (start == 0 and chunk[0] != 0) or chunk[0] < previous or (np.diff(chunk) < 0).any():
                raise DataError(f"{self.idx_path}: document indices are not in order from 0")
            previous = int(chunk[-1])
        if previous != self.sequences:
            raise DataError(f"{self.idx_path}: the last document ends at sequence {previous}, "
                            f"the index holds {self.sequences}")

    def document_ends(self, start: int, stop: int) -> np.ndarray:
        """Token offsets (in the .bin's stream) where documents start..stop-1 end, int64."""
        last_sequence = np.asarray(self.doc_index[start + 1:stop + 1], np.int64) - 1
        ends = np.zeros(len(last_sequence), np.int64)
        real = last_sequence >= 0
        ends[real] = (np.asarray(self.pointers[last_sequence[real]], np.int64) // self.dtype.itemsize
                      + np.asarray(self.lengths[last_sequence[real]], np.int64))
        if not real.all():   # leading empty documents end at 0
            ends = np.maximum.accumulate(ends)
        return ends


class MegatronWriter:
    """Writes ``PREFIX.bin`` / ``PREFIX.idx`` in the published format, one sequence per document
    (what Megatron's preprocess_data.py writes without sentence splitting)."""

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.prefix = prefix_of(prefix)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if np.dtype(dtype) not in TOKEN_CODES:
            raise ValueError(f"Megatron token dtype {np.dtype(dtype)} not supported")
        self._bin = open(f"{self.prefix}.bin", "wb")
        self._lengths: list[np.ndarray] = []

    def add_documents(self, tokens: np.ndarray, lengths) -> None:
        tokens = np.asarray(tokens)
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._lengths.append(np.asarray(lengths, np.int32))

    def close(self) -> None:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64))[:-1]]) \
            * self.dtype.itemsize if len(lengths) else np.zeros(0, np.int64)
        doc_index = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(f"{self.prefix}.idx", "wb") as handle:
            handle.write(HEADER.pack(MAGIC, VERSION, TOKEN_CODES[np.dtype(self.dtype.name)],
                                     len(lengths), len(doc_index)))
            handle.write(lengths.astype("<i4").tobytes())
            handle.write(pointers.astype("<i8").tobytes())
            handle.write(doc_index.astype("<i8").tobytes())
