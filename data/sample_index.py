"""The sample index: the order a run reads its sources in, built once into memory-mapped files.

``RUN_DIR/data-index/KEY/`` where KEY hashes the sources (kind, resolved path, weight, split and
every file's size and modification time), the seed, the sequence length and the global batch. It is
built by one process before the ranks start (launcher/run_data.py), into a temporary folder renamed
into place, and reused while KEY matches; every rank opens its ``.npy`` files with ``mmap_mode="r"``
and loads none of them.

Per source s (its documents in one token space, data/sources.py):

* ``docs-s.npy``: int64 token offsets of its documents' boundaries (documents + 1 entries);
* per epoch e, built when the run's length first reaches it: ``epoch-s-e-docs.npy`` a random
  permutation of the documents, ``epoch-s-e-ends.npy`` the cumulative lengths in that order, and
  ``epoch-s-e-windows.npy`` a random permutation of the epoch's windows (data/permutation.py).

Packing: an epoch lays the source's documents end to end in its shuffled order, as Megatron-LM does,
and cuts that stream into W = (tokens - 1) // seq_len windows of seq_len + 1 tokens (window w is
tokens [w * seq_len, w * seq_len + seq_len + 1): consecutive windows share one token, the last target
of one being the first input of the next). A window runs across document boundaries; the documents
carry their own end-of-document token (every writer llmlaunch reads appends one: ``data prepare``,
datatrove's tokenizer, Megatron's ``--append-eod``), so nothing is inserted. The tail of fewer than
seq_len tokens is not trained on in that epoch; the next epoch shuffles again, so a different tail is.

Epochs: source s's j-th sample is window ``windows_e[j mod W]`` of epoch ``e = j div W``. A source
that the blend draws from more often than it holds windows is read again, reshuffled (upsampling),
never truncated; each source's epochs are its own.

Blend: global sample g -> (source, j) by data/blend.py, ``blend.npy`` + ``blend-counts.npy``.
A step t trains on global samples [t * global_batch, (t + 1) * global_batch), so resuming at any step,
on any dp, reads what an uninterrupted run would (consumed samples are the only state).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .blend import Blend, blend_period, deficit_first, normalized, running_counts
from .errors import DataError
from .permutation import write_permutation
from .sources import SourceSpec, TokenSource, open_source, source_kind

INDEX_DIR = "data-index"
INDEX_FILE = "index.json"
FORMAT_NAME = "llmlaunch-sample-index"
FORMAT_VERSION = 1
SCAN_CHUNK = 1 << 24


def index_key(sources: list[TokenSource], *, seed: int, seq_len: int, global_batch: int) -> str:
    described = [{"kind": s.kind, "path": str(Path(s.spec.path).resolve()), "weight": s.spec.weight,
                  "split": s.spec.split, "name": s.label, "files": s.fingerprint()} for s in sources]
    blob = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "sources": described,
                       "seed": seed, "seq_len": seq_len, "global_batch": global_batch},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def windows_of(tokens: int, seq_len: int) -> int:
    """Windows of seq_len + 1 tokens one epoch of `tokens` tokens holds."""
    return max(0, (tokens - 1) // seq_len)


def epoch_seed(seed: int, source: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, source, epoch]))


def scan_max_id(source: TokenSource) -> int:
    """The largest token id a source holds (one chunked pass; -1 when empty)."""
    largest = -1
    for file in source.files:
        array = file.array()
        for start in range(0, len(array), SCAN_CHUNK):
            largest = max(largest, int(np.max(array[start:start + SCAN_CHUNK])))
    return largest


class _Lock:
    """An exclusive lock on the index folder while one process builds in it."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.handle = open(root / ".lock", "w")

    def __enter__(self):
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _write_docs(source: TokenSource, path: Path) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype="<i8", shape=(source.documents + 1,))
    out[0] = 0
    position = 1
    for ends in source.document_ends():
        out[position:position + len(ends)] = ends
        position += len(ends)
    if position != source.documents + 1:
        raise DataError(f"{source.label}: {position - 1} document ends, expected {source.documents}")
    if source.documents and (out[-1] != source.tokens):
        raise DataError(f"{source.label}: its documents end at token {int(out[-1])}, its files "
                        f"hold {source.tokens}")
    out.flush()


def _write_epoch(directory: Path, s: int, e: int, seed: int, docs: np.ndarray, windows: int) -> None:
    """The three files of source s's epoch e, each written aside and renamed."""
    rng = epoch_seed(seed, s, e)
    documents = len(docs) - 1
    stem = directory / f"epoch-{s}-{e}"
    tmp = {name: Path(f"{stem}-{name}.tmp.npy") for name in ("docs", "ends", "windows")}
    write_permutation(tmp["docs"], documents, rng)
    order = np.load(tmp["docs"], mmap_mode="r")
    ends = np.lib.format.open_memmap(tmp["ends"], mode="w+", dtype="<i8", shape=(documents,))
    carry = 0
    for start in range(0, documents, SCAN_CHUNK):
        picked = np.asarray(order[start:start + SCAN_CHUNK], np.int64)
        lengths = np.asarray(docs[picked + 1]) - np.asarray(docs[picked])
        chunk = np.cumsum(lengths) + carry
        ends[start:start + len(chunk)] = chunk
        carry = int(chunk[-1])
    ends.flush()
    del ends, order
    write_permutation(tmp["windows"], windows, rng)
    for name, path in tmp.items():
        os.replace(path, f"{stem}-{name}.npy")


def build_index(specs: list[SourceSpec], root: Path, *, seed: int, seq_len: int, global_batch: int,
                samples: int, log=lambda line: None) -> Path:
    """Build (or reuse, or extend to `samples`) the index of `specs`; returns its folder. One
    process at a time (a lock on `root`); every file is complete or absent."""
    from .columnar import ensure_converted

    root = Path(root)
    with _Lock(root):
        for spec in specs:
            if _is_columnar(spec):
                ensure_converted(spec, root)
        sources = [open_source(spec, root) for spec in specs]
        return build_for_sources(sources, root, seed=seed, seq_len=seq_len,
                                 global_batch=global_batch, samples=samples, log=log)


def build_for_sources(sources: list[TokenSource], root: Path, *, seed: int, seq_len: int,
                      global_batch: int, samples: int, log=lambda line: None) -> Path:
    """build_index for opened sources (the caller holds the lock; benchmarks pass synthetic
    ones)."""
    key = index_key(sources, seed=seed, seq_len=seq_len, global_batch=global_batch)
    directory = Path(root) / key
    if not (directory / INDEX_FILE).is_file():
        _build_base(directory, sources, seed=seed, seq_len=seq_len, global_batch=global_batch,
                    log=log)
    meta = json.loads((directory / INDEX_FILE).read_text())
    needed = SampleIndex(directory, sources).blend.samples_by_source(samples)
    for s, source in enumerate(meta["sources"]):
        epochs = -(-int(needed[s]) // source["windows"])
        docs = np.load(directory / f"docs-{s}.npy", mmap_mode="r")
        for e in range(epochs):
            if not (directory / f"epoch-{s}-{e}-windows.npy").is_file():
                log(f"data index: {source['name']}: epoch {e} ({source['windows']:,} windows)")
                _write_epoch(directory, s, e, seed, docs, source["windows"])
    return directory


def _is_columnar(spec: SourceSpec) -> bool:
    return source_kind(spec) == "columnar"


SCANNED_FILE = "scanned.json"


def _read_once(root: Path, source: TokenSource) -> int | None:
    """What needs a full read of a source, done once per set of files (path, size, time) and
    remembered in ROOT/scanned.json: a prepared source's SHA-256s against its manifest, any other
    kind's largest id (None for prepared data: its manifest says the vocabulary)."""
    path = root / SCANNED_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    key = hashlib.sha256(json.dumps(source.fingerprint()).encode()).hexdigest()
    if key not in known:
        if hasattr(source, "check_hashes"):
            source.check_hashes()
        known[key] = {"max_token_id": scan_max_id(source) if source.vocab_size is None else None}
        tmp = root / f".{SCANNED_FILE}.tmp"
        tmp.write_text(json.dumps(known, indent=1) + "\n")
        os.replace(tmp, path)
    return known[key]["max_token_id"]


def _build_base(directory: Path, sources: list[TokenSource], *, seed: int, seq_len: int,
                global_batch: int, log) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        described = []
        for s, source in enumerate(sources):
            source.check_files()
            largest = _read_once(directory.parent, source)
            windows = windows_of(source.tokens, seq_len)
            if windows == 0:
                raise DataError(f"data source {source.label!r} ({source.spec.path}) holds "
                                f"{source.tokens:,} tokens: not one window of {seq_len + 1}")
            log(f"data index: {source.label}: {source.documents:,} documents, "
                f"{source.tokens:,} tokens, {windows:,} windows")
            _write_docs(source, tmp / f"docs-{s}.npy")
            described.append({"name": source.label, "kind": source.kind, "path": source.spec.path,
                              "split": source.spec.split, "weight": source.spec.weight,
                              "documents": source.documents, "tokens": source.tokens,
                              "windows": windows, "dtype": source.dtype,
                              "vocab_size": source.vocab_size, "eod_id": source.eod_id,
                              "max_token_id": largest})
        period = blend_period(global_batch)
        order = deficit_first([s.spec.weight for s in sources], period)
        np.save(tmp / "blend.npy", order)
        np.save(tmp / "blend-counts.npy", running_counts(order, len(sources)))
        (tmp / INDEX_FILE).write_text(json.dumps({
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "seed": seed,
            "seq_len": seq_len, "global_batch": global_batch, "blend_period": period,
            "weights": normalized([s.spec.weight for s in sources]), "sources": described},
            indent=2) + "\n")
        if directory.exists():   # a half-built index of an older llmlaunch: replaced whole
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Epoch:
    """One epoch's order of a source's documents and windows (memory-mapped), or the natural order
    (shuffle off: evaluation)."""

    def __init__(self, docs: np.ndarray, directory: Path | None = None, stem: str = ""):
        self.docs = docs
        if directory is None:
            self.order, self.ends, self.windows = None, docs[1:], None
        else:
            self.order = np.load(directory / f"{stem}-docs.npy", mmap_mode="r")
            self.ends = np.load(directory / f"{stem}-ends.npy", mmap_mode="r")
            self.windows = np.load(directory / f"{stem}-windows.npy", mmap_mode="r")

    def window(self, source: TokenSource, position: int, seq_len: int) -> np.ndarray:
        w = int(self.windows[position]) if self.windows is not None else position
        start, length = w * seq_len, seq_len + 1
        out = np.empty(length, np.int64)
        at = int(np.searchsorted(self.ends, start, side="right"))
        offset = start - (int(self.ends[at - 1]) if at else 0)
        filled = 0
        while filled < length:
            doc = int(self.order[at]) if self.order is not None else at
            first, last = int(self.docs[doc]), int(self.docs[doc + 1])
            take = min(length - filled, last - first - offset)
            if take > 0:
                source.read(first + offset, take, out[filled:filled + take])
                filled += take
            at, offset = at + 1, 0
        return out


class SampleIndex:
    """A built index, memory-mapped: global sample -> its tokens (module docstring)."""

    def __init__(self, directory: Path, sources: list[TokenSource], shuffle: bool = True):
        self.directory = Path(directory)
        meta = json.loads((self.directory / INDEX_FILE).read_text())
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{self.directory}: not a llmlaunch sample index of version "
                            f"{FORMAT_VERSION}")
        self.meta, self.sources, self.shuffle = meta, sources, shuffle
        self.seq_len = int(meta["seq_len"])
        self.windows = [int(s["windows"]) for s in meta["sources"]]
        self.names = [s["name"] for s in meta["sources"]]
        self.docs = [np.load(self.directory / f"docs-{s}.npy", mmap_mode="r")
                     for s in range(len(sources))]
        self.blend = Blend(np.load(self.directory / "blend.npy", mmap_mode="r"),
                           np.load(self.directory / "blend-counts.npy", mmap_mode="r"))
        self._epochs: dict[tuple[int, int], _Epoch] = {}

    def epoch(self, s: int, e: int) -> _Epoch:
        key = (s, e)
        if key not in self._epochs:
            if not self.shuffle:
                self._epochs[key] = _Epoch(self.docs[s])
            else:
                stem = f"epoch-{s}-{e}"
                if not (self.directory / f"{stem}-windows.npy").is_file():
                    raise DataError(f"{self.directory}: source {self.names[s]!r} has no epoch {e} "
                                    "yet: the pre-start data check builds the epochs a run needs "
                                    "(python -m llmlaunch.launcher.run_data)")
                for old in [k for k in self._epochs if k[0] == s]:
                    del self._epochs[old]   # one open epoch per source: bounded mappings
                self._epochs[key] = _Epoch(self.docs[s], self.directory, stem)
        return self._epochs[key]

    def source_sample(self, s: int, j: int) -> np.ndarray:
        """The j-th sample source s gives (its epochs one after another)."""
        e, position = divmod(int(j), self.windows[s])
        return self.epoch(s, e).window(self.sources[s], position, self.seq_len)

    def sample(self, g: int) -> tuple[int, np.ndarray]:
        """(source, int64 tokens [seq_len + 1]) of global sample g."""
        s, j = self.blend.locate(g)
        return s, self.source_sample(s, j)

    def samples(self, first: int, count: int) -> np.ndarray:
        """Global samples [first, first + count) stacked, int64 [count, seq_len + 1]."""
        out = np.empty((count, self.seq_len + 1), np.int64)
        for row in range(count):
            out[row] = self.sample(first + row)[1]
        return out

    def samples_by_source(self, end: int) -> dict[str, int]:
        """{source name: samples among global samples [0, end)}."""
        return dict(zip(self.names, map(int, self.blend.samples_by_source(end))))


def index_root(run_dir: Path) -> Path:
    return Path(run_dir) / INDEX_DIR


def find_index(specs: list[SourceSpec], root: Path, *, seed: int, seq_len: int,
               global_batch: int) -> SampleIndex:
    """Open the index a rank reads (built before the ranks started): DataError when absent."""
    sources = [open_source(spec, root) for spec in specs]
    key = index_key(sources, seed=seed, seq_len=seq_len, global_batch=global_batch)
    directory = Path(root) / key
    if not (directory / INDEX_FILE).is_file():
        raise DataError(f"no sample index {directory} for this run's data, seed, seq_len and "
                        "global batch: the pre-start data check builds it (python -m "
                        "llmlaunch.launcher.run_data --config RUN.yaml)")
    return SampleIndex(directory, sources)
