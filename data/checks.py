"""Is this one path's data for this model? The summary of a prepared directory or flat file for the
0.1 loader (data/loader.py) and scripts; a run checks its sources before any rank starts through
data/source_checks.py (every source kind, from the sample index), and every rank's loader checks
each batch's ids (vocab_check.py), with the same messages.

- A prepared directory: its manifest says the vocabulary it was tokenized with; a model with fewer
  embedding rows than that would index past its table (a CPU run trains on anyway, with a loss that
  looks good and means nothing). Its format must be llmlaunch's.
- A flat token file (.bin, .npy): its dtype and its largest token id, read once (one pass over the
  file). A file of random bytes or text read as uint16 holds ids far above any small vocabulary and
  is refused the same way; with a vocabulary of 65536 or more a flat file cannot be told apart from
  token data by its ids.
- Either: at least one global batch of windows of seq_len + 1 tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .loader import FLAT_DTYPES, MANIFEST_FILE, open_token_arrays
from .vocab_check import out_of_vocab_message
from .shards import FORMAT_NAME

# Tokens read per chunk when scanning a flat file for its largest id.
SCAN_CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class DataSummary:
    """What a data path holds."""

    path: Path
    kind: str
    """'prepared' (a `llmlaunch data prepare` directory) or 'flat' (.bin / .npy token file)."""
    dtype: str
    tokens: int
    vocab_size: int | None
    """The vocabulary the manifest records (prepared data)."""
    max_token_id: int | None
    """The largest id in the file (flat data; -1 when empty)."""

    @property
    def ids_needed(self) -> int:
        """Embedding rows a model needs for this data."""
        return self.vocab_size if self.vocab_size is not None else self.max_token_id + 1

    def describe(self) -> str:
        held = (f"tokenized with a vocabulary of {self.vocab_size}" if self.vocab_size is not None
                else f"token ids up to {self.max_token_id}")
        return f"{self.tokens:,} {self.dtype} tokens, {held}"


def summarize(path: Path, split: str = "train", dtype: str | None = None) -> DataSummary:
    """Read what `path` holds (DataError when it is no token data llmlaunch can read)."""
    path = Path(path)
    directory = path.parent if path.name == MANIFEST_FILE else path
    if directory.is_dir():
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise DataError(f"data.path {str(directory)!r} is a directory without {MANIFEST_FILE}: "
                            "give a directory written by `llmlaunch data prepare`, or a .bin/.npy "
                            "token file")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest_path}: cannot read manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise DataError(f"{manifest_path}: not a `llmlaunch data prepare` manifest (format "
                            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
        arrays = open_token_arrays(directory, split)
        return DataSummary(path=directory, kind="prepared", dtype=manifest["dtype"],
                           tokens=sum(len(a) for a in arrays),
                           vocab_size=int(manifest["vocab_size"]), max_token_id=None)
    arrays = open_token_arrays(path, split, dtype)
    max_id = -1
    for array in arrays:
        for start in range(0, len(array), SCAN_CHUNK_TOKENS):
            max_id = max(max_id, int(np.max(array[start:start + SCAN_CHUNK_TOKENS])))
    found = arrays[0].dtype.name if arrays else (dtype or FLAT_DTYPES[0])
    return DataSummary(path=path, kind="flat", dtype=found, tokens=sum(len(a) for a in arrays),
                       vocab_size=None, max_token_id=max_id)


def check_against_model(summary: DataSummary, *, vocab: int, seq_len: int,
                        global_batch: int) -> None:
    """DataError naming the file, what it holds and the setting that would fit, when the model
    cannot train on it."""
    windows = max(0, (summary.tokens - 1) // seq_len)
    if windows < global_batch:
        raise DataError(f"data.path {str(summary.path)!r} holds {summary.tokens:,} tokens: "
                        f"{windows} sequence(s) of {seq_len + 1} tokens, fewer than one global batch "
                        f"of {global_batch}; give more data, or a shorter model.seq_len or smaller "
                        "batch")
    if summary.ids_needed > vocab:
        if summary.vocab_size is not None:
            raise DataError(f"data.path {str(summary.path)!r} was tokenized with a vocabulary of "
                            f"{summary.vocab_size}, but model.vocab is {vocab}: set model.vocab to "
                            f"at least {summary.vocab_size}, or prepare the data with `llmlaunch "
                            f"data prepare --vocab-size {vocab}`")
        raise DataError(out_of_vocab_message(summary.path, f"token ids up to {summary.max_token_id}",
                                             summary.ids_needed, vocab))
