"""Throughput of ``llmlaunch data prepare`` against Hugging Face ``tokenizers`` on the same text.

Builds a few MB of English text by recombining sentences of the shipped corpus (seeded, so every
document is distinct), trains a tokenizer on it once, then runs ``prepare --tokenizer ...
--no-near-dup`` with each ``--workers`` value and compares

* the tokenisation stage of ``prepare`` (spool read, encode, EOD, IPC, shard writing) and
* ``prepare`` end to end (reading, normalisation, quality filters, exact dedup, tokenisation)

with ``Tokenizer.encode_batch`` of the same documents in this process: multi-threaded (rayon, as
``--workers 1`` runs in-process) and single-threaded (as each ``--workers N`` process runs).  The
ratio to watch is tokenisation stage MB/s per worker / encode_batch MB/s per thread (goal >= 0.8).
Because a shared machine makes wall-clock rates noisy, the ratios are also given per CPU-second
(the CPU time of this process and the worker processes), which is what "per worker" means when
every worker has a core to itself.  ``prepare`` calls ``encode_batch_fast`` (same ids, no
character offsets), which is timed too.

    python benchmarks/bench_data_prepare.py [--mb 4] [--workers 1 2] [--vocab-size 8192]

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llmlaunch.data import default_corpus_path
from llmlaunch.data.clean import NearDupConfig
from llmlaunch.data.prepare import PrepareConfig, prepare
from llmlaunch.data.text import normalize_text

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def corpus_sentences() -> list[str]:
    """All sentences of the shipped corpus."""
    sentences = []
    with open(default_corpus_path(), encoding="utf-8") as handle:
        for line in handle:
            for paragraph in json.loads(line)["text"].split("\n\n"):
                sentences.extend(s for s in _SENTENCE_END.split(paragraph) if len(s.split()) >= 4)
    return sentences


def synthetic_documents(megabytes: float, seed: int = 0) -> list[str]:
    """Distinct documents of 8-20 corpus sentences in 1-3 paragraphs, about ``megabytes`` MB in all."""
    rng = random.Random(seed)
    sentences = corpus_sentences()
    documents, total = [], 0
    while total < megabytes * 1e6:
        picked = rng.sample(sentences, rng.randint(8, 20))
        cuts = sorted(rng.sample(range(1, len(picked)), rng.randint(0, 2)))
        paragraphs = [" ".join(picked[a:b]) for a, b in zip([0, *cuts], [*cuts, len(picked)])]
        document = "\n\n".join(paragraphs)
        documents.append(document)
        total += len(document.encode("utf-8"))
    return documents


def time_encode_batch(tokenizer, texts: list[str], threads: str, repeats: int = 2, method: str = "encode_batch") -> tuple[float, float]:
    """Best-of-``repeats`` (wall s, CPU s) of ``tokenizer.<method>`` over ``texts`` in prepare-sized chunks."""
    encode = getattr(tokenizer, method)
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads == "all" else "false"
    try:
        best_wall = best_cpu = float("inf")
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            chunk, chars = [], 0
            for text in texts:
                chunk.append(text)
                chars += len(text)
                if len(chunk) >= 1024 or chars >= 1 << 18:
                    encode(chunk, add_special_tokens=False)
                    chunk, chars = [], 0
            if chunk:
                encode(chunk, add_special_tokens=False)
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        return best_wall, best_cpu
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of text to generate (default: 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--workers values to run (default: 1 2)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings for every measurement (default: 2)")
    args = parser.parse_args(argv)

    from tokenizers import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-data-prepare-"))
    try:
        documents = synthetic_documents(args.mb, args.seed)
        source = work / "input.jsonl"
        with open(source, "w", encoding="utf-8") as handle:
            for document in documents:
                handle.write(json.dumps({"text": document}) + "\n")
        normalised = [normalize_text(d) for d in documents]
        text_mb = sum(len(t.encode("utf-8")) for t in normalised) / 1e6
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        print(f"text: {text_mb:.2f} MB in {len(documents)} documents (input file {source.stat().st_size / 1e6:.2f} MB)")

        base = PrepareConfig(inputs=[str(source)], out=work / "trained", vocab_size=args.vocab_size, seed=args.seed,
                             near_dup=NearDupConfig(enabled=False), progress=False)
        started = time.perf_counter()
        trained = prepare(base)
        print(f"prepare with tokenizer training (--workers 1): {time.perf_counter() - started:.2f} s, "
              f"vocab {trained.manifest['vocab_size']}, {trained.manifest['tokens_out']} tokens, "
              f"{trained.manifest['documents_out']}/{trained.manifest['documents_in']} documents kept")
        tokenizer_path = work / "tokenizer.json"
        shutil.copyfile(trained.out / "tokenizer.json", tokenizer_path)
        tokenizer = Tokenizer.from_file(str(tokenizer_path))

        hf_all_wall, hf_all_cpu = time_encode_batch(tokenizer, normalised, "all", args.repeats)
        hf_one_wall, hf_one_cpu = time_encode_batch(tokenizer, normalised, "one", args.repeats)
        print(f"HF encode_batch, all threads: {text_mb / hf_all_wall:6.2f} MB/s wall, {text_mb / hf_all_cpu:6.2f} MB per CPU-s")
        print(f"HF encode_batch, one thread:  {text_mb / hf_one_wall:6.2f} MB/s wall, {text_mb / hf_one_cpu:6.2f} MB per CPU-s")
        if hasattr(tokenizer, "encode_batch_fast"):  # what prepare calls: same ids, no offsets
            fast_wall, fast_cpu = time_encode_batch(tokenizer, normalised, "one", args.repeats, "encode_batch_fast")
            print(f"HF encode_batch_fast, one thread: {text_mb / fast_wall:6.2f} MB/s wall, {text_mb / fast_cpu:6.2f} MB per CPU-s")
        hf_per_cpu = text_mb / hf_one_cpu
        print()
        print("Per worker = MB per CPU-second of all processes involved (robust to a busy machine), as a ratio to")
        print("HF encode_batch on one thread; 'wall' columns are MB/s of elapsed time.")
        print("workers | end-to-end: wall MB/s, per-CPU ratio | tokenize stage: wall MB/s, per-CPU ratio, wall ratio*")
        for workers in args.workers:
            out = work / f"w{workers}"
            config = PrepareConfig(inputs=[str(source)], out=out, tokenizer=str(tokenizer_path), seed=args.seed,
                                   workers=workers, near_dup=NearDupConfig(enabled=False), progress=False)
            best = {}
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = prepare(config)
                elapsed = time.perf_counter() - started
                shutil.rmtree(out)
                sample = {
                    "wall": elapsed,
                    "cpu": sum(result.cpu_s.values()),
                    "stage_wall": result.timings_s["tokenize"],
                    "stage_cpu": result.cpu_s["tokenize"],
                }
                best = {k: min(v, best.get(k, float("inf"))) for k, v in sample.items()}
            stage_mb = result.tokenized_text_bytes / 1e6
            reference_wall = hf_all_wall if workers == 1 else hf_one_wall / workers
            print(f"{workers:7d} | {text_mb / best['wall']:6.2f} MB/s, {text_mb / best['cpu'] / hf_per_cpu:4.2f}"
                  f"          | {stage_mb / best['stage_wall']:6.2f} MB/s, {stage_mb / best['stage_cpu'] / hf_per_cpu:4.2f},"
                  f" {reference_wall / best['stage_wall'] * stage_mb / text_mb:4.2f}")
        print("* wall ratio: --workers 1 against HF on all threads (both in-process), N > 1 against N x HF on one thread")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
