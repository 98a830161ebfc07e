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

This module runs the passes; their parts live in :mod:`~llmlaunch.data.prepare_config` (the
options), :mod:`~llmlaunch.data.workers` (the pool and its chunk tasks),
:mod:`~llmlaunch.data.clean_pass` (the dedup and split decisions of pass 1),
:mod:`~llmlaunch.data.spool` (the kept documents between pass 1 and pass 3) and
:mod:`~llmlaunch.data.manifest` (``manifest.json``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import clean
from .clean import CleanContext
from .clean_pass import CleanPass
from .errors import DataError
from .manifest import build_manifest, file_sha256, input_entry, write_manifest
from .prepare_config import DEFAULT_VOCAB_SIZE, PrepareConfig, validate_config
from .readers import InputStats, expand_inputs, iter_all_documents
from .shards import ShardWriter, token_dtype_name
from .spool import SPOOL_FILE, read_spool, replay_token_spool, tokenize_text_spool
from .workers import IN_FLIGHT_PER_WORKER, Encoding, chunks, clean_chunk, make_pool, ordered_map, reset_worker_state

TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")


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


def _progress(enabled: bool, **kwargs):
    """A tqdm progress bar on stderr (a no-op bar when disabled)."""
    from tqdm import tqdm

    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kwargs)


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


def _load_eval_ngrams(config: PrepareConfig) -> tuple[frozenset, list[dict[str, Any]], int, int]:
    """Read the ``--eval`` files: (n-gram set, manifest entries, eval documents, eval docs shorter than n)."""
    if not config.eval_inputs:
        return frozenset(), [], 0, 0
    files = expand_inputs(config.eval_inputs, role="eval")
    stats: dict[Path, InputStats] = {}
    documents = iter_all_documents(files, text_field=config.text_field, text_split=config.text_split, stats=stats)
    grams, too_short = clean.eval_ngram_set(documents, config.decontam_ngram_words)
    entries = [input_entry(f, stats.get(f.path)) for f in files]
    return grams, entries, sum(e["documents"] for e in entries), too_short


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
    in_flight = config.workers * IN_FLIGHT_PER_WORKER
    # With a given tokenizer, pass 1 also tokenises (in the same worker task as the filters) and
    # spools tokens; pass 3 then only copies them into shards.  Otherwise pass 1 spools the kept
    # text, pass 2 trains on it and pass 3 tokenises it.
    encoding = None
    if given_tokenizer is not None:
        given_dtype = token_dtype_name(given_tokenizer[0].get_vocab_size(with_added_tokens=True))
        encoding = Encoding(str(config.tokenizer), given_tokenizer[1], given_dtype)
    pool = None
    state: CleanPass | None = None
    try:
        pool = make_pool(config.workers, context, encoding.tokenizer_path if encoding else None)
        # Pass 1: clean (and tokenise, with a given tokenizer).
        started, cpu_started = time.perf_counter(), time.process_time()
        spool_path = tmp / SPOOL_FILE
        state = CleanPass(config, spool_path)
        input_stats: dict[Path, InputStats] = {}
        documents = iter_all_documents(
            inputs, text_field=config.text_field, text_split=config.text_split, stats=input_stats
        )
        tasks = ((chunk, encoding) for chunk in chunks(documents))
        with _progress(show, desc="clean" if encoding is None else "clean+tokenize", unit="doc") as bar:
            for analyses, encoded, worker_cpu_s in ordered_map(pool, clean_chunk, tasks, in_flight):
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
            train_texts = (text for is_val, text, _ in read_spool(spool_path, overrides) if not is_val)
            tokenizer = train_bpe(train_texts, requested, config.eod_token)
            tokenizer.save(str(tokenizer_path), pretty=True)
            eod_id = tokenizer.token_to_id(config.eod_token)
            tokenizer_info = {"file": TOKENIZER_FILE, "source": "trained", "requested_vocab_size": requested}
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        tokenizer_info["sha256"] = file_sha256(tokenizer_path)
        del tokenizer
        dtype_name = token_dtype_name(vocab_size)
        timings["tokenizer"] = time.perf_counter() - started
        cpu["tokenizer"] = time.process_time() - cpu_started

        # Pass 3: tokenize (unless pass 1 did) and write shards.
        started, cpu_started = time.perf_counter(), time.process_time()
        writers = {split: ShardWriter(tmp, split, dtype_name, config.shard_size_tokens) for split in SPLITS}
        if encoding is not None:
            replay_token_spool(spool_path, state.token_lengths, state.is_val, overrides, dtype_name, writers)
            text_bytes = state.text_bytes
        else:
            with _progress(show, desc="tokenize", unit="doc", total=state.kept) as bar:
                text_bytes = tokenize_text_spool(
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

        manifest = build_manifest(
            config, inputs, input_stats, state, splits, vocab_size, dtype_name, eod_id, tokenizer_info,
            eval_entries, eval_documents, eval_too_short, len(eval_ngrams),
        )
        write_manifest(tmp, manifest)
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
        reset_worker_state()
    input_bytes = sum(s.bytes for s in input_stats.values())
    return PrepareResult(out, manifest, timings, cpu, input_bytes, text_bytes)
