"""datatrove's tokenized output (its ``DocumentTokenizer`` / ``DocumentTokenizerMerger``), read with
numpy memmaps; :func:`write_datatrove_file` writes the same files (tests, small conversions).

The format, as datatrove/pipeline/tokens/tokenizer.py (``TokenizedFile``) writes it:

* ``NAME.ds``: the documents' tokens back to back, little-endian ``uint16`` (``token_size`` 2, the
  default) or ``uint32`` (``token_size`` 4), each document followed by the EOS token when the
  tokenizer step was given one;
* ``NAME.ds.index``: one little-endian ``uint64`` per document, the token offset where it *ends*
  (no leading zero, no count);
* ``NAME.ds.metadata`` (optional, text): ``TOKENIZER|TOKEN_SIZE`` on the first line (older
  datatrove: the tokenizer name alone, token size 2), the token count on the second;
* ``NAME.ds.loss`` (optional): a loss mask, one byte per token, which pre-training does not read.

A source is one ``.ds`` file or a folder of them (read in sorted order, recursively).

llmlaunch does not depend on datatrove: reading needs nothing but numpy, and datatrove itself pulls
loguru, multiprocess, dill and the Hub client.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

SUFFIX = ".ds"


def datatrove_files(path: str | Path) -> list[Path]:
    """The ``.ds`` files of a source path (a file, or a folder searched recursively), sorted."""
    path = Path(path)
    if path.is_file() and path.suffix == SUFFIX:
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob(f"*{SUFFIX}") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return []


def read_metadata(ds: Path) -> tuple[str | None, int | None, int | None]:
    """(tokenizer, token size, token count) from ``NAME.ds.metadata`` (Nones when absent)."""
    meta = Path(f"{ds}.metadata")
    if not meta.is_file():
        return None, None, None
    lines = meta.read_text(encoding="utf-8", errors="replace").splitlines()
    tokenizer, size, count = None, None, None
    if lines:
        name, sep, tail = lines[0].rpartition("|")
        if sep and tail.strip() in ("2", "4"):
            tokenizer, size = name, int(tail)
        else:
            tokenizer, size = lines[0], 2
    if len(lines) > 1 and lines[1].strip().isdigit():
        count = int(lines[1])
    return tokenizer, size, count


class DatatroveFile:
    """One ``.ds`` file and its document ends, memory-mapped."""

    def __init__(self, ds: Path, token_size: int | None = None):
        self.path = ds
        index = Path(f"{ds}.index")
        if not index.is_file():
            raise DataError(f"{ds}: no {index.name} beside it (datatrove writes one per .ds file)")
        self.tokenizer, meta_size, self.meta_tokens = read_metadata(ds)
        size = token_size or meta_size or 2
        if size not in (2, 4):
            raise DataError(f"{ds}: token size {size}, datatrove writes 2 or 4")
        self.dtype = np.dtype("<u2" if size == 2 else "<u4")
        index_bytes = index.stat().st_size
        if index_bytes % 8:
            raise DataError(f"{index}: {index_bytes} bytes is not a whole number of uint64 ends")
        self.ends = np.memmap(index, "<u8", "r") if index_bytes else np.zeros(0, "<u8")
        self.documents = len(self.ends)
        self.tokens = int(self.ends[-1]) if self.documents else 0

    def check(self) -> None:
        """The .ds holds exactly the tokens its index and metadata say (DataError otherwise)."""
        got = self.path.stat().st_size
        if got != self.tokens * self.dtype.itemsize:
            raise DataError(f"{self.path}: {got} bytes, its .index ends at token {self.tokens} "
                            f"({self.tokens * self.dtype.itemsize} bytes of {self.dtype.name})")
        if self.meta_tokens is not None and self.meta_tokens != self.tokens:
            raise DataError(f"{self.path}.metadata says {self.meta_tokens} tokens, the index "
                            f"{self.tokens}")
        for start in range(0, self.documents, 1 << 22):
            chunk = np.asarray(self.ends[max(0, start - 1):start + (1 << 22)], np.int64)
            if (np.diff(chunk) < 0).any():
                raise DataError(f"{self.path}.index: document ends are not increasing")


def write_datatrove_file(ds: str | Path, documents, token_size: int = 2,
                         tokenizer: str = "") -> Path:
    """Write ``documents`` (token id sequences, each already ending in EOS if wanted) as datatrove's
    ``TokenizedFile`` does: ``.ds``, ``.ds.index`` and ``.ds.metadata``."""
    ds = Path(ds)
    dtype = np.dtype("<u2" if token_size == 2 else "<u4")
    lengths = np.array([len(d) for d in documents], np.int64)
    tokens = np.concatenate([np.asarray(d, np.int64) for d in documents]) if len(documents) else \
        np.zeros(0, np.int64)
    if len(tokens) and tokens.max() > np.iinfo(dtype).max:
        raise ValueError(f"token id {tokens.max()} does not fit token_size {token_size}")
    ds.write_bytes(tokens.astype(dtype).tobytes())
    Path(f"{ds}.index").write_bytes(np.cumsum(lengths).astype("<u8").tobytes())
    Path(f"{ds}.metadata").write_text(f"{tokenizer or 'Unknown Tokenizer'}|{token_size}\n"
                                      f"{int(lengths.sum())}\n{int(lengths.sum())}T")
    return ds
