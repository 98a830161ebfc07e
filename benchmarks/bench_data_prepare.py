"""Throughput of ``llmlaunch data prepare`` against Hugging Face ``tokenizers`` on the same text.

Builds a few MB of English text by recombining sentences of the shipped corpus (seeded, so every
document is distinct), trains a tokenizer on it once, then compares

* the bare tokenizer: ``Tokenizer.encode_batch`` of the normalised documents on ONE thread, in
  prepare-sized batches, in this process (tokenizer already loaded), and
* ``prepare --tokenizer ... --no-near-dup`` end to end (reading, normalisation, the quality filters
  with default thresholds, exact dedup, tokenisation, shard writing, manifest) for each ``--workers``.

The goal (docs/data.md) is a per-worker ratio >= 0.8: prepare's MB/s divided by ``--workers``,
over the bare tokenizer's MB/s on one thread.  It is reported two ways:

* wall: elapsed time; meaningful only when every worker has a core to itself;
* CPU: MB per CPU-second, counting this process and its child processes (the workers, including
  their start-up: interpreter, imports, tokenizer load).  On a shared, loaded machine this is the
  robust measure of work per worker.  ``steady`` leaves out one-time costs (pool start-up,
  imports): it sums the CPU that prepare's stages report (parent + worker tasks).

Every figure is the best of ``--repeats`` runs.

    python benchmarks/bench_data_prepare.py [--mb 4] [--workers 1 2] [--vocab-size 8192] [--repeats 3]

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llmlaunch.data import default_corpus_path
from llmlaunch.data.clean import NearDupConfig
from llmlaunch.data.prepare import prepare
from llmlaunch.data.prepare_config import PrepareConfig
from llmlaunch.data.text import normalize_text

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BATCH_DOCUMENTS, _BATCH_CHARS = 256, 1 << 18  # prepare's documents per worker task


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


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its waited-for child processes so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_encode(tokenizer, texts: list[str], repeats: int, method: str = "encode_batch") -> tuple[float, float]:
    """Best-of-``repeats`` (wall s, CPU s) of ``tokenizer.<method>`` on one thread over ``texts`` in prepare-sized batches."""
    encode = getattr(tokenizer, method)
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers on every call
    try:
        best_wall = best_cpu = float("inf")
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), cpu_seconds()
            batch, chars = [], 0
            for text in texts:
                batch.append(text)
                chars += len(text)
                if len(batch) >= _BATCH_DOCUMENTS or chars >= _BATCH_CHARS:
                    encode(batch, add_special_tokens=False)
                    batch, chars = [], 0
            if batch:
                encode(batch, add_special_tokens=False)
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, cpu_seconds() - cpu)
        return best_wall, best_cpu
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def time_prepare(config: PrepareConfig, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall s, CPU s (process + children) and steady CPU s (stage sums) of ``prepare(config)``.

    ``--workers 1`` encodes in this process, where tokenizers would use every core; it is held to
    one thread here so that it measures one worker (a ``--workers N`` process has one thread).
    """
    best: dict[str, float] = {}
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), cpu_seconds()
            result = prepare(config)
            sample = {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu, "steady": sum(result.cpu_s.values())}
            shutil.rmtree(result.out)
            best = {key: min(value, best.get(key, float("inf"))) for key, value in sample.items()}
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of text to generate (default: 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--workers values to run (default: 1 2)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings for every measurement (default: 3)")
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
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
              f"python {sys.version.split()[0]}")
        print(f"text: {text_mb:.2f} MB in {len(documents)} documents (input file {source.stat().st_size / 1e6:.2f} MB)")

        trained = prepare(PrepareConfig(inputs=[str(source)], out=work / "trained", vocab_size=args.vocab_size,
                                        seed=args.seed, near_dup=NearDupConfig(enabled=False), progress=False))
        manifest = trained.manifest
        print(f"tokenizer: vocab {manifest['vocab_size']} trained by prepare; {manifest['tokens_out']} tokens, "
              f"{manifest['documents_out']}/{manifest['documents_in']} documents kept")
        tokenizer_path = work / "tokenizer.json"
        shutil.copyfile(trained.out / "tokenizer.json", tokenizer_path)
        tokenizer = Tokenizer.from_file(str(tokenizer_path))

        bare_wall, bare_cpu = time_encode(tokenizer, normalised, args.repeats)
        fast_wall, fast_cpu = time_encode(tokenizer, normalised, args.repeats, "encode_batch_fast")
        bare_mbs, bare_per_cpu = text_mb / bare_wall, text_mb / bare_cpu
        print()
        print(f"bare tokenizer, encode_batch, 1 thread: {bare_mbs:6.2f} MB/s wall, {bare_per_cpu:6.2f} MB per CPU-s")
        print(f"  (encode_batch_fast, 1 thread:         {text_mb / fast_wall:6.2f} MB/s wall, {text_mb / fast_cpu:6.2f} MB per CPU-s)")
        print()
        print("prepare --no-near-dup, whole run | wall: MB/s  per worker  ratio | CPU: MB/CPU-s  ratio | steady: ratio | one-time CPU s")
        for workers in args.workers:
            config = PrepareConfig(inputs=[str(source)], out=work / f"w{workers}", tokenizer=str(tokenizer_path),
                                   seed=args.seed, workers=workers, near_dup=NearDupConfig(enabled=False), progress=False)
            best = time_prepare(config, args.repeats)
            mbs = text_mb / best["wall"]
            print(f"  --workers {workers}                     | {mbs:10.2f}  {mbs / workers:10.2f}  {mbs / workers / bare_mbs:5.2f}"
                  f" | {text_mb / best['cpu']:12.2f}  {text_mb / best['cpu'] / bare_per_cpu:5.2f}"
                  f" | {text_mb / best['steady'] / bare_per_cpu:13.2f} | {max(best['cpu'] - best['steady'], 0.0):14.2f}")
        print("ratio: prepare's MB/s per worker (wall) or MB per CPU-s (CPU: process + children; steady: without")
        print("one-time costs such as starting the worker processes) over the bare tokenizer's on 1 thread; goal >= 0.8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
