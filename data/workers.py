"""The worker side of ``data prepare``: the process pool, its initializer and the chunk tasks.

``--workers N > 1`` runs the tasks in a ``spawn`` pool; ``--workers 1`` runs the same functions in
this process (``make_pool`` returns None and ``ordered_map`` maps in-process), so the output cannot
differ.  Results always come back in input order.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from . import clean
from .clean import CleanContext

_CHUNK_DOCUMENTS = 256  # per cleaning task
_CHUNK_CHARS = 1 << 18
IN_FLIGHT_PER_WORKER = 3

_WORKER_CONTEXT: CleanContext | None = None
_WORKER_TOKENIZERS: dict[str, Any] = {}


@dataclass(frozen=True)
class Encoding:
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


def reset_worker_state() -> None:
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


def clean_chunk(task: tuple[list[str], Encoding | None]):
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


def tokenize_chunk(task: tuple[str, int, list[str]]):
    """Encode a chunk with the tokenizer at ``task[0]``, EOD id ``task[1]`` after each document.

    Returns (uint32 tokens, int64 lengths, CPU seconds used).
    """
    from .tokenizer import encode_documents

    started = time.process_time()
    path, eod_id, texts = task
    tokenizer, ascii_tokenizer = _worker_tokenizers(path)
    tokens, lengths = encode_documents(tokenizer, texts, eod_id, ascii_tokenizer=ascii_tokenizer)
    return tokens, lengths, time.process_time() - started


def ordered_map(pool, function: Callable, items: Iterable, in_flight: int) -> Iterator:
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


def chunks(texts: Iterable[str], max_documents: int = _CHUNK_DOCUMENTS, max_chars: int = _CHUNK_CHARS) -> Iterator[list[str]]:
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


def make_pool(workers: int, context: CleanContext, tokenizer_path: str | None):
    """A ``spawn`` process pool for ``workers`` > 1 (None means: run in this process)."""
    if workers == 1:
        _init_worker(context, False, tokenizer_path)
        return None
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(context, True, tokenizer_path)
    )
