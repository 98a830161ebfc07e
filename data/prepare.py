"""The ``llmlaunch data prepare`` pipeline: raw text -> cleaned, tokenised, sharded output directory.

Passes (everything streams; only dedup state -- digests, MinHash LSH -- the eval n-grams and, with
a given tokenizer, 9 bytes per kept document stay in memory):

1. *clean*: read documents in input order, analyse them in chunks (``--workers`` processes,
   results consumed in chunk order): normalisation, digest, quality filters (for a whole chunk at
   once), decontamination, MinHash -- and, when the tokenizer is given (``--tokenizer``), the
   encoding of the documents that passed, in the same task.  The order-dependent dedup decisions
   are taken in this process; the kept documents are spooled to a file in the temporary output
   directory (their tokens with a given tokenizer, else their text);
2. *tokenizer*: train a byte-level BPE on the kept training documents (or copy ``--tokenizer``);
3. *tokenize*: encode the spooled texts in chunks (``--workers`` processes, fixed order) -- or,
   with a given tokenizer, read the spooled tokens back -- and append them to the train/val shard
   writers;
4. write ``manifest.json``, delete the spool, rename the temporary directory to ``--out``.

Same inputs, options and seed give byte-identical output, whatever ``--workers`` is
(tests/test_data_golden.py pins the bytes).

``--workers N > 1`` uses a ``spawn`` process pool (safe with threads, torch or tokenizers already
loaded in the caller).  As with any ``spawn`` pool, a script that calls :func:`prepare` must guard
its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import array
import collections
import hashlib
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import clean
from .clean import CleanContext, NearDupConfig
from .errors import DataError
from .quality import FILTER_NAMES, QualityThresholds
from .readers import InputFile, InputStats, expand_inputs, iter_all_documents
from .shards import FORMAT_NAME, FORMAT_VERSION, ShardWriter, token_dtype_name
from .text import NORMALIZATION_FORMS
from .tokenizer import EOD_TOKEN

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_SHARD_SIZE_TOKENS = 100_000_000
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val")
_SPOOL_FILE = "kept-documents.spool"
_SPOOL_HEADER = struct.Struct("<BQ")  # is_val flag, UTF-8 length in bytes
_CHUNK_DOCUMENTS = 256  # per cleaning task
_CHUNK_CHARS = 1 << 18
_TOKENIZE_CHUNK_DOCUMENTS = 1024  # per tokenisation task
_TOKENIZE_CHUNK_CHARS = 1 << 18
_IN_FLIGHT_PER_WORKER = 3
_REPLAY_DOCUMENTS = 1 << 16  # per block read back from a token spool


@dataclass(frozen=True)
class PrepareConfig:
    """All options of ``llmlaunch data prepare`` (see ``llmlaunch.data.cli`` for the flags)."""

    inputs: Sequence[str]
    out: str | Path
    vocab_size: int | None = None
    tokenizer: str | Path | None = None
    eval_inputs: Sequence[str] = ()
    seed: int = 0
    workers: int = 1
    force: bool = False
    text_field: str = "text"
    text_split: str = "blank-line"
    normalization: str = "NFC"
    val_fraction: float = 0.01
    eod_token: str = EOD_TOKEN
    shard_size_tokens: int = DEFAULT_SHARD_SIZE_TOKENS
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    near_dup: NearDupConfig = field(default_factory=NearDupConfig)
    decontam_ngram_words: int = 13
    progress: bool | None = None  # None: show a progress bar only when stderr is a terminal


@dataclass
class PrepareResult:
    """What ``prepare`` produced: the output directory, its manifest, and (non-deterministic) timings.

    ``timings_s``: wall seconds per stage; ``cpu_s``: CPU seconds per stage of this process plus,
    for the ``clean`` and ``tokenize`` stages, the work done in worker processes (not their start-up).
    With a given tokenizer the encoding happens in the ``clean`` stage.
    """

    out: Path
    manifest: dict[str, Any]
    timings_s: dict[str, float]
    cpu_s: dict[str, float]
    input_bytes: int
    tokenized_text_bytes: int


# ------------------------------------------------------------------------------------------------
# Worker side.  The same functions run in-process for --workers 1, so the output cannot differ.
# ------------------------------------------------------------------------------------------------

_WORKER_CONTEXT: CleanContext | None = None
_WORKER_TOKENIZERS: dict[str, Any] = {}


@dataclass(frozen=True)
class _Encoding:
    """How pass 1 tokenises kept documents when the tokenizer is given: file, EOD id, token dtype."""

    tokenizer_path: str
    eod_id: int
    dtype: str


def _init_worker(context: CleanContext, limit_tokenizer_threads: bool, tokenizer_path: str | None = None) -> None:
    """Pool initializer: remember the cleaning context; one tokenizer thread per worker process.

    Also pays the one-time costs (numpy import, loading a given tokenizer) up front, not in the first task.
    """
    global _WORKER_CONTEXT
    if limit_tokenizer_threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        # a worker is one thread: no BLAS thread pool (its threads spin for a while after numpy's import)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    _WORKER_CONTEXT = context
    import numpy  # noqa: F401  (used by the quality filters and the encoder)

    if tokenizer_path is not None:
        _worker_tokenizers(tokenizer_path)


def _reset_worker_state() -> None:
    """Forget the in-process worker state (after a --workers 1 run)."""
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = None
    _WORKER_TOKENIZERS.clear()


def _worker_tokenizers(path: str) -> tuple[Any, Any]:
    """The tokenizer at ``path`` and its ASCII twin (``tokenizer.ascii_twin``), loaded once per process."""
    tokenizers = _WORKER_TOKENIZERS.get(path)
    if tokenizers is None:
        from tokenizers import Tokenizer

        from .tokenizer import ascii_twin

        tokenizer = Tokenizer.from_file(path)
        tokenizers = _WORKER_TOKENIZERS[path] = (tokenizer, ascii_twin(tokenizer))
    return tokenizers


def _clean_chunk(task: tuple[list[str], _Encoding | None]):
    """Analyse a chunk of raw documents with the worker's cleaning context; with an encoding, tokenise the kept ones.

    Returns (analyses, encoded, CPU seconds used).  ``encoded`` is None without an encoding; else the
    kept analyses come back without their text and ``encoded`` is (tokens in ``encoding.dtype``, int64
    lengths, int64 UTF-8 sizes) of the kept documents in order.
    """
    from .tokenizer import encode_documents

    assert _WORKER_CONTEXT is not None, "worker not initialised"
    started = time.process_time()
    raw_documents, encoding = task
    analyses = clean.analyze_documents(raw_documents, _WORKER_CONTEXT)
    encoded = None
    if encoding is not None:
        import numpy as np

        texts = [a.text for a in analyses if a.verdict == clean.KEPT]
        tokenizer, ascii_tokenizer = _worker_tokenizers(encoding.tokenizer_path)
        tokens, lengths = encode_documents(tokenizer, texts, encoding.eod_id, ascii_tokenizer=ascii_tokenizer)
        sizes = np.fromiter((len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts), np.int64, len(texts))
        encoded = (tokens.astype(encoding.dtype), lengths, sizes)
        analyses = [a._replace(text=None) if a.text is not None else a for a in analyses]
    return analyses, encoded, time.process_time() - started


def _tokenize_chunk(task: tuple[str, int, list[str]]):
    """Encode a chunk with the tokenizer at ``task[0]``, EOD id ``task[1]`` after each document.

    Returns (uint32 tokens, int64 lengths, CPU seconds used).
    """
    from .tokenizer import encode_documents

    started = time.process_time()
    path, eod_id, texts = task
    tokenizer, ascii_tokenizer = _worker_tokenizers(path)
    tokens, lengths = encode_documents(tokenizer, texts, eod_id, ascii_tokenizer=ascii_tokenizer)
    return tokens, lengths, time.process_time() - started


def _ordered_map(pool, function: Callable, items: Iterable, in_flight: int) -> Iterator:
    """``map(function, items)`` on ``pool`` (or in-process if None), results in input order, bounded in flight."""
    if pool is None:
        for item in items:
            yield function(item)
        return
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.apply_async(function, (item,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _chunks(texts: Iterable[str], max_documents: int = _CHUNK_DOCUMENTS, max_chars: int = _CHUNK_CHARS) -> Iterator[list[str]]:
    """Group ``texts`` into lists of at most ``max_documents`` documents / about ``max_chars`` characters."""
    chunk: list[str] = []
    chars = 0
    for text in texts:
        chunk.append(text)
        chars += len(text)
        if len(chunk) >= max_documents or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


# ------------------------------------------------------------------------------------------------
# Small helpers.
# ------------------------------------------------------------------------------------------------


def validate_config(config: PrepareConfig) -> None:
    """Raise ``DataError`` for option values that cannot work."""
    if config.vocab_size is not None and config.tokenizer is not None:
        raise DataError("give either --vocab-size or --tokenizer, not both")
    if config.vocab_size is not None and config.vocab_size < 257:
        raise DataError("--vocab-size must be at least 257 (256 bytes + end-of-document token)")
    if config.seed < 0:
        raise DataError("--seed must be >= 0")
    if config.workers < 1:
        raise DataError("--workers must be >= 1")
    if not 0.0 <= config.val_fraction < 1.0:
        raise DataError("--val-fraction must be in [0, 1)")
    if config.normalization not in NORMALIZATION_FORMS:
        raise DataError(f"--normalization must be one of {', '.join(NORMALIZATION_FORMS)}")
    if config.shard_size_tokens < 1:
        raise DataError("--shard-size-tokens must be >= 1")
    if config.decontam_ngram_words < 1:
        raise DataError("--decontam-ngram must be >= 1")
    if not 0.0 < config.near_dup.threshold <= 1.0:
        raise DataError("--near-dup-threshold must be in (0, 1]")
    if config.near_dup.num_perm < 2 or config.near_dup.shingle_words < 1:
        raise DataError("--near-dup-num-perm must be >= 2 and --near-dup-shingle-words >= 1")
    if not config.eod_token:
        raise DataError("--eod-token must not be empty")


def split_unit_value(seed: int, digest: bytes) -> float:
    """A uniform value in [0, 1) from ``seed`` and a document digest; documents below ``val_fraction`` go to val."""
    mixed = hashlib.blake2b(seed.to_bytes(8, "little") + digest, digest_size=8).digest()
    return int.from_bytes(mixed, "little") / 2.0**64


def _progress(enabled: bool, **kwargs):
    """A tqdm progress bar on stderr (a no-op bar when disabled)."""
    from tqdm import tqdm

    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kwargs)


def _file_sha256(path: Path) -> str:
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


def _input_entry(inp: InputFile, stats: InputStats | None) -> dict[str, Any]:
    """Manifest record of one input file."""
    stats = stats or InputStats()
    return {
        "path": str(inp.path),
        "format": inp.format + (".gz" if inp.gzipped else ""),
        "bytes": stats.bytes,
        "sha256": stats.sha256,
        "documents": stats.documents,
    }


def _current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished ``tmp`` directory to ``out`` (replacing an existing ``out`` only with ``force``)."""
    if out.exists() or out.is_symlink():
        if not force:
            raise DataError(f"output directory already exists: {out} (use --force to replace it)")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.rename(tmp, out)


# ------------------------------------------------------------------------------------------------
# The pipeline.
# ------------------------------------------------------------------------------------------------


class _CleanPass:
    """State of pass 1: removal counters, dedup indices, spool writer, validation-split bookkeeping."""

    def __init__(self, config: PrepareConfig, spool_path: Path) -> None:
        self.config = config
        self.removed = {"empty": 0, "exact_dup": 0}
        self.removed.update({name: 0 for name in FILTER_NAMES})
        self.removed.update({"decontaminated": 0, "near_dup": 0})
        self.documents_in = 0
        self.kept = 0
        self.val = 0
        self.exact = clean.ExactDeduplicator()
        self.near = clean.NearDuplicateIndex(config.near_dup, config.seed) if config.near_dup.enabled else None
        self.spool = open(spool_path, "wb")
        self.min_unit = (2.0, -1)  # (value, kept index) of the document most eligible for val
        self.max_unit = (-1.0, -1)
        # with a given tokenizer the spool holds tokens; the documents' lengths and splits are kept here
        self.token_lengths = array.array("q")
        self.is_val = bytearray()
        self.text_bytes = 0

    def decide(self, analysis: clean.Analysis) -> bool | None:
        """Apply the order-dependent steps to one analysed document: None if removed, else whether it goes to val."""
        self.documents_in += 1
        verdict = analysis.verdict
        if verdict == clean.EMPTY:
            self.removed["empty"] += 1
            return None
        if self.exact.seen_before(analysis.digest):
            self.removed["exact_dup"] += 1
            return None
        if verdict != clean.KEPT:
            self.removed[verdict] += 1
            return None
        if self.near is not None and not self.near.add_if_new(self.kept, analysis.signature):
            self.removed["near_dup"] += 1
            return None
        unit = split_unit_value(self.config.seed, analysis.digest)
        is_val = unit < self.config.val_fraction
        self.min_unit = min(self.min_unit, (unit, self.kept))
        self.max_unit = max(self.max_unit, (unit, self.kept))
        self.kept += 1
        self.val += is_val
        return is_val

    def consume(self, analysis: clean.Analysis) -> None:
        """Decide one analysed document and spool its text if kept."""
        is_val = self.decide(analysis)
        if is_val is not None:
            data = analysis.text.encode("utf-8")
            self.spool.write(_SPOOL_HEADER.pack(is_val, len(data)))
            self.spool.write(data)

    def consume_encoded(self, analyses: list[clean.Analysis], tokens, lengths, sizes) -> None:
        """Decide a chunk whose ``KEPT`` documents the worker tokenised (``tokens``, ``lengths``, ``sizes``, in order); spool the tokens of those kept."""
        import numpy as np

        keep = np.zeros(len(lengths), dtype=bool)
        position = 0
        for analysis in analyses:
            is_val = self.decide(analysis)
            if analysis.verdict == clean.KEPT:
                if is_val is not None:
                    keep[position] = True
                    self.is_val.append(is_val)
                position += 1
        if keep.all():
            self.spool.write(tokens.tobytes())
        elif keep.any():
            self.spool.write(tokens[np.repeat(keep, lengths)].tobytes())
        self.token_lengths.extend(lengths[keep].tolist())
        self.text_bytes += int(sizes[keep].sum())

    def split_overrides(self) -> dict[int, bool]:
        """Kept-index -> is_val corrections so that val has >= 1 document and train >= 1 (when >= 2 kept)."""
        overrides: dict[int, bool] = {}
        if self.kept >= 2 and self.config.val_fraction > 0 and self.val == 0:
            overrides[self.min_unit[1]] = True
        elif self.kept >= 1 and self.val == self.kept:
            overrides[self.max_unit[1]] = False
        return overrides


def _read_spool(path: Path, overrides: dict[int, bool]) -> Iterator[tuple[bool, str, int]]:
    """Stream ``(is_val, text, utf8_bytes)`` of the spooled kept documents, applying the split ``overrides``."""
    with open(path, "rb") as spool:
        index = 0
        while True:
            header = spool.read(_SPOOL_HEADER.size)
            if not header:
                return
            flag, size = _SPOOL_HEADER.unpack(header)
            text = spool.read(size).decode("utf-8")
            yield overrides.get(index, bool(flag)), text, size
            index += 1


def _load_eval_ngrams(config: PrepareConfig) -> tuple[frozenset, list[dict[str, Any]], int, int]:
    """Read the ``--eval`` files: (n-gram set, manifest entries, eval documents, eval docs shorter than n)."""
    if not config.eval_inputs:
        return frozenset(), [], 0, 0
    files = expand_inputs(config.eval_inputs, role="eval")
    stats: dict[Path, InputStats] = {}
    documents = iter_all_documents(files, text_field=config.text_field, text_split=config.text_split, stats=stats)
    grams, too_short = clean.eval_ngram_set(documents, config.decontam_ngram_words)
    entries = [_input_entry(f, stats.get(f.path)) for f in files]
    return grams, entries, sum(e["documents"] for e in entries), too_short


def _make_pool(workers: int, context: CleanContext, tokenizer_path: str | None):
    """A ``spawn`` process pool for ``workers`` > 1 (None means: run in this process)."""
    if workers == 1:
        _init_worker(context, False, tokenizer_path)
        return None
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(context, True, tokenizer_path)
    )


def _write_splits(writers: dict[str, ShardWriter], tokens, lengths, is_val) -> None:
    """Append documents (concatenated ``tokens``, their ``lengths``, bool ``is_val`` each) to the train/val writers."""
    import numpy as np

    token_is_val = np.repeat(is_val, lengths)
    for split, select_docs, select_tokens in (("train", ~is_val, ~token_is_val), ("val", is_val, token_is_val)):
        if select_docs.any():
            writers[split].write(tokens[select_tokens], lengths[select_docs])


def _replay_token_spool(path: Path, state: _CleanPass, overrides: dict[int, bool], dtype_name: str,
                        writers: dict[str, ShardWriter]) -> None:
    """Write the documents of a token spool (pass 1 with a given tokenizer) to the shards, in order."""
    import numpy as np

    lengths = np.frombuffer(state.token_lengths, dtype=np.int64) if state.token_lengths else np.zeros(0, np.int64)
    is_val = np.frombuffer(state.is_val, dtype=bool).copy()
    for index, value in overrides.items():
        is_val[index] = value
    with open(path, "rb") as spool:
        for start in range(0, len(lengths), _REPLAY_DOCUMENTS):
            block = slice(start, start + _REPLAY_DOCUMENTS)
            tokens = np.fromfile(spool, dtype=dtype_name, count=int(lengths[block].sum()))
            _write_splits(writers, tokens, lengths[block], is_val[block])


def _tokenize_text_spool(pool, spool_path: Path, overrides: dict[int, bool], tokenizer_path: str, eod_id: int,
                        writers: dict[str, ShardWriter], in_flight: int, workers_cpu: dict[str, float], bar) -> int:
    """Pass 3 after training: encode the spooled kept texts in chunks and write them to the shards; return their UTF-8 bytes."""
    import numpy as np

    text_bytes = 0
    flag_chunks: collections.deque = collections.deque()

    def tasks() -> Iterator[tuple[str, int, list[str]]]:
        nonlocal text_bytes
        chunk: list[tuple[bool, str]] = []
        chars = 0
        for is_val, text, size in _read_spool(spool_path, overrides):
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

    for tokens, lengths, worker_cpu_s in _ordered_map(pool, _tokenize_chunk, tasks(), in_flight):
        workers_cpu["tokenize"] += worker_cpu_s
        _write_splits(writers, tokens, lengths, np.asarray(flag_chunks.popleft(), dtype=bool))
        bar.update(len(lengths))
    return text_bytes


def prepare(config: PrepareConfig) -> PrepareResult:
    """Run the whole pipeline; raises ``DataError`` (leaving ``config.out`` untouched) on bad input."""
    validate_config(config)
    out = Path(config.out)
    if (out.exists() or out.is_symlink()) and not config.force:
        raise DataError(f"output directory already exists: {out} (use --force to replace it)")
    inputs = expand_inputs(config.inputs, role="input")
    given_tokenizer = None
    if config.tokenizer is not None:
        from .tokenizer import load_tokenizer

        given_tokenizer = load_tokenizer(config.tokenizer, config.eod_token)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    workers_cpu = {"clean": 0.0, "tokenize": 0.0}  # spent in pool processes (0 for --workers 1)
    started = time.perf_counter()
    eval_ngrams, eval_entries, eval_documents, eval_too_short = _load_eval_ngrams(config)
    timings["eval_ngrams"] = time.perf_counter() - started

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes it private; --out should not be
    context = CleanContext(
        normalization=config.normalization,
        thresholds=config.thresholds,
        eval_ngrams=eval_ngrams,
        decontam_ngram_words=config.decontam_ngram_words,
        near_dup=config.near_dup,
        seed=config.seed,
    )
    show = sys.stderr.isatty() if config.progress is None else config.progress
    in_flight = config.workers * _IN_FLIGHT_PER_WORKER
    # With a given tokenizer, pass 1 also tokenises (in the same worker task as the filters) and
    # spools tokens; pass 3 then only copies them into shards.  Otherwise pass 1 spools the kept
    # text, pass 2 trains on it and pass 3 tokenises it.
    encoding = None
    if given_tokenizer is not None:
        given_dtype = token_dtype_name(given_tokenizer[0].get_vocab_size(with_added_tokens=True))
        encoding = _Encoding(str(config.tokenizer), given_tokenizer[1], given_dtype)
    pool = None
    state: _CleanPass | None = None
    try:
        pool = _make_pool(config.workers, context, encoding.tokenizer_path if encoding else None)
        # Pass 1: clean (and tokenise, with a given tokenizer).
        started, cpu_started = time.perf_counter(), time.process_time()
        spool_path = tmp / _SPOOL_FILE
        state = _CleanPass(config, spool_path)
        input_stats: dict[Path, InputStats] = {}
        documents = iter_all_documents(
            inputs, text_field=config.text_field, text_split=config.text_split, stats=input_stats
        )
        tasks = ((chunk, encoding) for chunk in _chunks(documents))
        with _progress(show, desc="clean" if encoding is None else "clean+tokenize", unit="doc") as bar:
            for analyses, encoded, worker_cpu_s in _ordered_map(pool, _clean_chunk, tasks, in_flight):
                workers_cpu["clean"] += worker_cpu_s
                if encoded is None:
                    for analysis in analyses:
                        state.consume(analysis)
                else:
                    state.consume_encoded(analyses, *encoded)
                bar.update(len(analyses))
        state.spool.close()
        state.near = None  # free the LSH index
        timings["clean"] = time.perf_counter() - started
        cpu["clean"] = time.process_time() - cpu_started + (workers_cpu["clean"] if pool is not None else 0.0)
        if state.kept == 0:
            counts = ", ".join(f"{k}={v}" for k, v in state.removed.items() if v)
            raise DataError(f"no documents left after cleaning ({state.documents_in} read; removed: {counts})")
        overrides = state.split_overrides()

        # Pass 2: tokenizer.
        started, cpu_started = time.perf_counter(), time.process_time()
        tokenizer_path = tmp / TOKENIZER_FILE
        if given_tokenizer is not None:
            tokenizer, eod_id = given_tokenizer
            shutil.copyfile(config.tokenizer, tokenizer_path)
            tokenizer_info = {"file": TOKENIZER_FILE, "source": "given", "given_path": str(config.tokenizer)}
        else:
            from .tokenizer import train_bpe

            requested = config.vocab_size or DEFAULT_VOCAB_SIZE
            train_texts = (text for is_val, text, _ in _read_spool(spool_path, overrides) if not is_val)
            tokenizer = train_bpe(train_texts, requested, config.eod_token)
            tokenizer.save(str(tokenizer_path), pretty=True)
            eod_id = tokenizer.token_to_id(config.eod_token)
            tokenizer_info = {"file": TOKENIZER_FILE, "source": "trained", "requested_vocab_size": requested}
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        tokenizer_info["sha256"] = _file_sha256(tokenizer_path)
        del tokenizer
        dtype_name = token_dtype_name(vocab_size)
        timings["tokenizer"] = time.perf_counter() - started
        cpu["tokenizer"] = time.process_time() - cpu_started

        # Pass 3: tokenize (unless pass 1 did) and write shards.
        started, cpu_started = time.perf_counter(), time.process_time()
        writers = {split: ShardWriter(tmp, split, dtype_name, config.shard_size_tokens) for split in SPLITS}
        if encoding is not None:
            _replay_token_spool(spool_path, state, overrides, dtype_name, writers)
            text_bytes = state.text_bytes
        else:
            with _progress(show, desc="tokenize", unit="doc", total=state.kept) as bar:
                text_bytes = _tokenize_text_spool(
                    pool, spool_path, overrides, str(tokenizer_path), eod_id, writers, in_flight, workers_cpu, bar
                )
        splits = {split: writers[split].close() for split in SPLITS}
        timings["tokenize"] = time.perf_counter() - started
        cpu["tokenize"] = time.process_time() - cpu_started + (workers_cpu["tokenize"] if pool is not None else 0.0)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        os.remove(spool_path)

        manifest = _manifest(
            config, inputs, input_stats, state, splits, vocab_size, dtype_name, eod_id, tokenizer_info,
            eval_entries, eval_documents, eval_too_short, len(eval_ngrams),
        )
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        _install(tmp, out, config.force)
    except BaseException:
        if state is not None:
            state.spool.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _reset_worker_state()
    input_bytes = sum(s.bytes for s in input_stats.values())
    return PrepareResult(out, manifest, timings, cpu, input_bytes, text_bytes)


def _manifest(
    config: PrepareConfig,
    inputs: Sequence[InputFile],
    input_stats: dict[Path, InputStats],
    state: _CleanPass,
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
        "inputs": [_input_entry(inp, input_stats.get(inp.path)) for inp in inputs],
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

