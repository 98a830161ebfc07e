"""Writing token shards and their document index (the format is specified in docs/data.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

FORMAT_NAME = "llmlaunch-token-shards"
FORMAT_VERSION = 1
UINT16_MAX_VOCAB = 65535


def token_dtype_name(vocab_size: int) -> str:
    """``"uint16"`` when the vocabulary has at most 65,535 entries, else ``"uint32"``."""
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


def shard_file_names(split: str, number: int) -> tuple[str, str]:
    """File names of shard ``number`` of ``split``: (tokens ``.bin``, index ``.idx``)."""
    stem = f"{split}-{number:05d}"
    return f"{stem}.bin", f"{stem}.idx"


class _HashedFile:
    """A binary file being written, with its SHA-256 kept up to date."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "wb")
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)

    def close(self) -> str:
        self.handle.close()
        return self.sha256.hexdigest()


class ShardWriter:
    """Appends documents of one split to ``<split>-NNNNN.bin`` / ``.idx`` shards in ``directory``.

    A shard is closed before a document that would push it past ``shard_size_tokens`` (a document
    longer than that gets a shard of its own); documents never straddle shards.
    """

    def __init__(self, directory: Path, split: str, dtype_name: str, shard_size_tokens: int) -> None:
        import numpy as np

        self._np = np
        self.directory = directory
        self.split = split
        self.dtype = np.dtype(dtype_name).newbyteorder("<")
        self.shard_size_tokens = shard_size_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.tokens = 0
        self._tokens_file: _HashedFile | None = None
        self._index_file: _HashedFile | None = None
        self._shard_tokens = 0
        self._shard_documents = 0

    def _open_shard(self) -> None:
        tokens_name, index_name = shard_file_names(self.split, len(self.shards))
        self._names = (tokens_name, index_name)
        self._tokens_file = _HashedFile(self.directory / tokens_name)
        self._index_file = _HashedFile(self.directory / index_name)
        self._index_file.write(self._np.zeros(1, dtype="<u8").tobytes())
        self._shard_tokens = 0
        self._shard_documents = 0

    def _close_shard(self) -> None:
        assert self._tokens_file is not None and self._index_file is not None
        self.shards.append(
            {
                "tokens_file": self._names[0],
                "index_file": self._names[1],
                "documents": self._shard_documents,
                "tokens": self._shard_tokens,
                "tokens_sha256": self._tokens_file.close(),
                "index_sha256": self._index_file.close(),
            }
        )
        self._tokens_file = self._index_file = None

    def write(self, tokens, lengths) -> None:
        """Append documents given as concatenated ``tokens`` and their ``lengths`` (in tokens)."""
        np = self._np
        lengths = np.asarray(lengths, dtype=np.int64)
        done_docs = done_tokens = 0
        while done_docs < len(lengths):
            if self._tokens_file is None:
                self._open_shard()
            rest = lengths[done_docs:]
            ends = self._shard_tokens + np.cumsum(rest)
            count = int(np.searchsorted(ends, self.shard_size_tokens, side="right"))
            if count == 0:
                if self._shard_documents > 0:
                    self._close_shard()
                    continue
                count = 1  # an over-long document gets a shard of its own
            n_tokens = int(ends[count - 1]) - self._shard_tokens
            chunk = tokens[done_tokens : done_tokens + n_tokens]
            self._tokens_file.write(chunk.astype(self.dtype, copy=False).tobytes())
            self._index_file.write(ends[:count].astype("<u8").tobytes())
            self._shard_tokens += n_tokens
            self._shard_documents += count
            self.documents += count
            self.tokens += n_tokens
            done_docs += count
            done_tokens += n_tokens

    def close(self) -> dict[str, Any]:
        """Close the open shard; return the split's manifest entry."""
        if self._tokens_file is not None:
            self._close_shard()
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}
