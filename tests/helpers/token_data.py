"""Token data in every format a run reads, written by the tests from known documents: Megatron's
MMIDIDX pair byte by byte from the published layout (not with llmlaunch's writer, so the reader is
checked against the format, not against itself), datatrove's .ds files as its TokenizedFile writes
them, a parquet folder of input_ids rows; and windows computed by hand."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def known_documents(count: int, seed: int, vocab: int = 500, eod: int = 0) -> list[list[int]]:
    """`count` documents of 3-60 ids in [1, vocab), each ending with the end-of-document id."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, int(rng.integers(3, 60))).tolist() + [eod] for _ in range(count)]


def write_megatron(prefix: Path, documents: list[list[int]]) -> Path:
    """PREFIX.bin / PREFIX.idx as megatron/core/datasets/indexed_dataset.py lays them out: uint16
    (dtype code 8), one sequence per document."""
    tokens = np.concatenate([np.asarray(d, "<u2") for d in documents])
    Path(f"{prefix}.bin").write_bytes(tokens.tobytes())
    lengths = np.array([len(d) for d in documents], "<i4")
    pointers = np.concatenate([[0], np.cumsum(lengths.astype("<i8"))[:-1]]) * 2
    with open(f"{prefix}.idx", "wb") as idx:
        idx.write(b"MMIDIDX\x00\x00")
        idx.write(struct.pack("<Q", 1))                          # version
        idx.write(struct.pack("<B", 8))                          # uint16
        idx.write(struct.pack("<Q", len(documents)))             # sequences
        idx.write(struct.pack("<Q", len(documents) + 1))         # document indices + sentinel
        idx.write(lengths.tobytes())
        idx.write(pointers.astype("<i8").tobytes())
        idx.write(np.arange(len(documents) + 1, dtype="<i8").tobytes())
    return prefix


def write_parquet(folder: Path, documents: list[list[int]], files: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(documents) // files)
    for n in range(files):
        part = documents[n * step:(n + 1) * step]
        pq.write_table(pa.table({"input_ids": pa.array(part, pa.list_(pa.int32())),
                                 "text": [f"doc {i}" for i in range(len(part))]}),
                       folder / f"part-{n:05d}.parquet", row_group_size=7)
    return folder


def write_datatrove(folder: Path, documents: list[list[int]], token_size: int = 2) -> Path:
    from llmlaunch.data.datatrove_format import write_datatrove_file

    folder.mkdir(parents=True, exist_ok=True)
    half = len(documents) // 2
    write_datatrove_file(folder / "000_00000.ds", documents[:half], token_size, "test-tokenizer")
    write_datatrove_file(folder / "000_00001.ds", documents[half:], token_size, "test-tokenizer")
    return folder


def windows_by_hand(documents: list[list[int]], order, windows, seq_len: int) -> list[list[int]]:
    """The windows of one epoch: documents laid end to end in `order`, window w the tokens
    [w * seq_len, w * seq_len + seq_len + 1), taken in the order `windows`."""
    stream = [t for d in order for t in documents[d]]
    return [stream[w * seq_len:w * seq_len + seq_len + 1] for w in windows]


def prepare_checked(config, run_dir, **kwargs):
    """The supervisor's data step (launcher/run_data.py: prepare_run_data) for a test's config, at
    the layout the supervisor builds once from it."""
    from llmlaunch.launcher.run_data import prepare_run_data

    return prepare_run_data(config, config.layout_obj(), run_dir, **kwargs)
