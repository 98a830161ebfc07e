"""``data prepare --tasks N``: the same output as one process, from N tasks on any number of hosts.

Three stages, each a pure function of the inputs, the options and the earlier stages' files in the
work folder (``--work``, default ``.OUT.work`` beside ``--out``), so any engine can run them: N local
processes (:func:`run_local`, a ``spawn`` pool), or Slurm array jobs of the same command with
``--stage S --task I`` (data/prepare_slurm.py). The tokenizer must be given (``--tokenizer``):
training one needs every document in one place.

1. ``scan`` (task i of N): the input files k with k mod N = i, in order. Per document what one
   process decides without looking at any other (normalisation, quality filters, decontamination,
   digest, MinHash signature, the validation coin), and the tokens of those that pass, into
   ``scan/file-k/``. Each document's exact-dedup digest and each of its LSH band keys go to one of
   N partitions by a hash of the key (``digests-p-ti.npy``, ``bands-p-ti.npy``).
2. ``dedup`` (task p of N): partition p of every scan task. Exact duplicates: every document whose
   digest an earlier one had. Near duplicates: documents sharing a band key (the same rows of the
   signature, which is what puts two documents in one bucket of datasketch's MinHashLSH) are
   candidate pairs; a pair whose signatures agree on at least the threshold is written out, earlier
   document first (``pairs-p.npy``). Each partition is deduplicated on its own: a band key is in
   exactly one partition, as in datatrove's MinHash stage 2 (bucket by band signature).
3. ``finish`` (one task): walks the documents in input order and takes the order-dependent
   decisions exactly as one process does: a document is a near duplicate iff a confirmed pair joins
   it to an earlier *kept* document (datatrove's stage 3 instead clusters pairs with union-find and
   keeps one per cluster; llmlaunch keeps the single-process rule, so both paths agree). Then the
   validation split, the shards (one sequential pass, the same ShardWriter), the manifest, and the
   rename to ``--out``.

Memory: scan and dedup hold one file's or one partition's records (dedup also every pair of a
bucket); finish holds a set of the kept documents, the exact duplicates and the confirmed pairs, and
one input file's tokens at a time.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import clean
from .clean_pass import split_unit_value
from .errors import DataError
from .quality import FILTER_NAMES
from .readers import InputStats, expand_inputs, iter_documents
from .shards import ShardWriter, token_dtype_name
from .workers import chunks

VERDICTS = ("kept", "empty", *FILTER_NAMES, "decontaminated")
STAGES = ("scan", "dedup", "finish")


def work_dir(config) -> Path:
    out = Path(config.out)
    return Path(config.work) if getattr(config, "work", None) else out.parent / f".{out.name}.work"


def _lsh_bands(config) -> tuple[int, int]:
    """(bands, rows) of datasketch's MinHashLSH for the threshold and permutations."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=config.near_dup.threshold, num_perm=config.near_dup.num_perm)
    return lsh.b, lsh.r


def _context(config, eval_ngrams):
    return clean.CleanContext(normalization=config.normalization, thresholds=config.thresholds,
                              eval_ngrams=eval_ngrams, decontam_ngram_words=config.decontam_ngram_words,
                              near_dup=config.near_dup, seed=config.seed)


def _partition(keys: np.ndarray, tasks: int) -> np.ndarray:
    """A partition in [0, tasks) for each row of uint32 `keys` (deterministic mixing)."""
    mixed = np.zeros(len(keys), np.uint64)
    for column in range(keys.shape[1]):
        mixed = (mixed * np.uint64(0x9E3779B97F4A7C15) + keys[:, column].astype(np.uint64)) \
            & np.uint64(0xFFFFFFFFFFFFFFFF)
    return (mixed % np.uint64(tasks)).astype(np.int64)


def band_dtype(rows: int) -> np.dtype:
    return np.dtype([("band", "<u2"), ("key", f"V{rows * 4}"), ("file", "<u4"), ("doc", "<u4")])


DIGEST_DTYPE = np.dtype([("digest", "V16"), ("file", "<u4"), ("doc", "<u4")])


def scan(config, task: int, tasks: int, tokenizer) -> None:
    """Stage 1 for task `task` (module docstring)."""
    from .prepare import _load_eval_ngrams
    from .tokenizer import encode_documents

    tok, eod_id = tokenizer
    dtype = token_dtype_name(tok.get_vocab_size(with_added_tokens=True))
    inputs = expand_inputs(config.inputs, role="input")
    eval_ngrams = _load_eval_ngrams(config)[0]
    context = _context(config, eval_ngrams)
    bands, rows = _lsh_bands(config)
    work = work_dir(config)
    digests, band_records = [], []
    for k, inp in enumerate(inputs):
        if k % tasks != task:
            continue
        folder = work / "scan" / f"file-{k}"
        tmp = Path(tempfile.mkdtemp(prefix=f".file-{k}.", dir=work / "scan"))
        stats = InputStats()
        verdicts, doc_digests, signatures, units, lengths = [], [], [], [], []
        with open(tmp / "tokens.bin", "wb") as spool:
            for chunk in chunks(iter_documents(inp, text_field=config.text_field,
                                               text_split=config.text_split, stats=stats)):
                analyses = clean.analyze_documents(chunk, context)
                kept = [a.text for a in analyses if a.verdict == clean.KEPT]
                tokens, kept_lengths = encode_documents(tok, kept, eod_id)
                spool.write(tokens.astype(dtype).tobytes())
                kept_lengths = iter(kept_lengths.tolist())
                for a in analyses:
                    verdicts.append(VERDICTS.index(a.verdict))
                    doc_digests.append(a.digest or bytes(16))
                    signatures.append(a.signature or bytes(4 * config.near_dup.num_perm))
                    is_kept = a.verdict == clean.KEPT
                    units.append(split_unit_value(config.seed, a.digest) if is_kept else 2.0)
                    lengths.append(next(kept_lengths) if is_kept else 0)
        n = len(verdicts)
        sig = np.frombuffer(b"".join(signatures), "<u4").reshape(n, -1)
        np.save(tmp / "verdicts.npy", np.array(verdicts, np.uint8))
        np.save(tmp / "units.npy", np.array(units, np.float64))
        np.save(tmp / "lengths.npy", np.array(lengths, np.int64))
        np.save(tmp / "signatures.npy", sig)
        (tmp / "stats.json").write_text(json.dumps({"bytes": stats.bytes, "sha256": stats.sha256,
                                                    "documents": stats.documents}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        verdict = np.array(verdicts, np.uint8)
        nonempty = np.flatnonzero(verdict != VERDICTS.index("empty"))
        record = np.zeros(len(nonempty), DIGEST_DTYPE)
        record["digest"] = np.frombuffer(b"".join(doc_digests), "V16")[nonempty]
        record["file"], record["doc"] = k, nonempty
        digests.append(record)
        if config.near_dup.enabled:
            kept = np.flatnonzero(verdict == 0)
            for band in range(bands):
                part = np.zeros(len(kept), band_dtype(rows))
                part["band"], part["file"], part["doc"] = band, k, kept
                part["key"] = np.ascontiguousarray(sig[kept, band * rows:(band + 1) * rows]) \
                    .view(f"V{rows * 4}").ravel()
                band_records.append(part)
    _write_partitions(work, "digests", task, tasks, digests, DIGEST_DTYPE,
                      lambda r: np.frombuffer(r["digest"].tobytes(), "<u4").reshape(len(r), 4))
    _write_partitions(work, "bands", task, tasks, band_records, band_dtype(rows),
                      lambda r: np.concatenate([r["band"][:, None].astype("<u4"), np.frombuffer(
                          r["key"].tobytes(), "<u4").reshape(len(r), rows)], axis=1))


def _write_partitions(work: Path, name: str, task: int, tasks: int, parts, dtype, keys) -> None:
    records = np.concatenate(parts) if parts else np.zeros(0, dtype)
    where = _partition(keys(records), tasks) if len(records) else np.zeros(0, np.int64)
    folder = work / name
    folder.mkdir(exist_ok=True)
    for p in range(tasks):
        tmp = folder / f".{p}-t{task}.npy"
        np.save(tmp, records[where == p])
        tmp.rename(folder / f"{p}-t{task}.npy")


def _gather(work: Path, name: str, p: int, tasks: int) -> np.ndarray:
    paths = [work / name / f"{p}-t{t}.npy" for t in range(tasks)]
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        raise DataError(f"data prepare --stage dedup: {missing[0]} is missing: every scan task "
                        "must have finished")
    return np.concatenate([np.load(x) for x in paths])


def dedup(config, task: int, tasks: int) -> None:
    """Stage 2 for partition `task` (module docstring)."""
    work = work_dir(config)
    digests = _gather(work, "digests", task, tasks)
    digests = np.sort(digests, order=["digest", "file", "doc"])
    repeat = np.zeros(len(digests), bool)
    if len(digests):
        repeat[1:] = digests["digest"][1:] == digests["digest"][:-1]
    exact = np.stack([digests["file"][repeat], digests["doc"][repeat]], axis=1) if len(digests) \
        else np.zeros((0, 2), np.uint32)
    pairs = np.zeros((0, 4), np.int64)
    if config.near_dup.enabled:
        pairs = _confirmed_pairs(config, work, _gather(work, "bands", task, tasks))
    out = work / "dedup"
    out.mkdir(exist_ok=True)
    for name, array in (("exact", exact), ("pairs", pairs)):
        np.save(out / f".{name}-{task}.npy", array)
        (out / f".{name}-{task}.npy").rename(out / f"{name}-{task}.npy")


def _confirmed_pairs(config, work: Path, bands: np.ndarray) -> np.ndarray:
    """(file_a, doc_a, file_b, doc_b) of candidate pairs, a before b, whose signatures agree on at
    least the threshold."""
    bands = np.sort(bands, order=["band", "key", "file", "doc"])
    if not len(bands):
        return np.zeros((0, 4), np.int64)
    same = (bands["band"][1:] == bands["band"][:-1]) & (bands["key"][1:] == bands["key"][:-1])
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.append(starts[1:], len(bands))
    signatures: dict[int, np.ndarray] = {}
    found = set()
    for start, end in zip(starts, ends):
        if end - start < 2:
            continue
        members = [(int(f), int(d)) for f, d in zip(bands["file"][start:end], bands["doc"][start:end])]
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                if (members[a], members[b]) in found:
                    continue
                sig_a, sig_b = (_signature(work, signatures, *m) for m in (members[a], members[b]))
                if float(np.mean(sig_a == sig_b)) >= config.near_dup.threshold:
                    found.add((members[a], members[b]))
    return np.array(sorted((fa, da, fb, db) for (fa, da), (fb, db) in found), np.int64) \
        .reshape(-1, 4)


def _signature(work: Path, cache: dict, file: int, doc: int) -> np.ndarray:
    if file not in cache:
        cache[file] = np.load(work / "scan" / f"file-{file}" / "signatures.npy", mmap_mode="r")
    return np.asarray(cache[file][doc])


def finish(config, tasks: int, tokenizer, tokenizer_path: Path) -> dict:
    """Stage 3 (module docstring): the output directory, as one process writes it."""
    from .manifest import build_manifest, file_sha256, write_manifest
    from .prepare import TOKENIZER_FILE, _install, _load_eval_ngrams

    work = work_dir(config)
    inputs = expand_inputs(config.inputs, role="input")
    tok, eod_id = tokenizer
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype_name(vocab_size)
    exact = {(int(f), int(d)) for p in range(tasks)
             for f, d in np.load(work / "dedup" / f"exact-{p}.npy")}
    later: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for p in range(tasks):
        for fa, da, fb, db in np.load(work / "dedup" / f"pairs-{p}.npy").tolist():
            later.setdefault((fb, db), []).append((fa, da))
    removed = {"empty": 0, "exact_dup": 0, **{n: 0 for n in FILTER_NAMES}, "decontaminated": 0,
               "near_dup": 0}
    kept_flags, documents_in, kept_units = [], 0, []
    kept_set: set[tuple[int, int]] = set()
    for k in range(len(inputs)):
        verdicts = np.load(work / "scan" / f"file-{k}" / "verdicts.npy")
        units = np.load(work / "scan" / f"file-{k}" / "units.npy")
        keep = np.zeros(len(verdicts), bool)
        for d, code in enumerate(verdicts.tolist()):
            documents_in += 1
            verdict = VERDICTS[code]
            if verdict == "empty":
                removed["empty"] += 1
            elif (k, d) in exact:
                removed["exact_dup"] += 1
            elif verdict != "kept":
                removed[verdict] += 1
            elif any(j in kept_set for j in later.get((k, d), ())):
                removed["near_dup"] += 1
            else:
                keep[d] = True
                kept_set.add((k, d))
                kept_units.append(float(units[d]))
        kept_flags.append(keep)
    if not kept_units:
        counts = ", ".join(f"{n}={v}" for n, v in removed.items() if v)
        raise DataError(f"no documents left after cleaning ({documents_in} read; removed: {counts})")
    units = np.array(kept_units)
    is_val = units < config.val_fraction
    if len(units) >= 2 and config.val_fraction > 0 and not is_val.any():
        is_val[int(np.argmin(units))] = True
    elif is_val.all():
        is_val[int(np.argmax(units))] = False
    out = Path(config.out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        writers = {s: ShardWriter(tmp, s, dtype, config.shard_size_tokens) for s in ("train", "val")}
        position, stats = 0, {}
        for k, inp in enumerate(inputs):
            folder = work / "scan" / f"file-{k}"
            lengths = np.load(folder / "lengths.npy")
            spooled = np.fromfile(folder / "tokens.bin", dtype)
            starts = np.concatenate([[0], np.cumsum(lengths)])
            for d in np.flatnonzero(kept_flags[k]).tolist():
                split = "val" if is_val[position] else "train"
                writers[split].write(spooled[starts[d]:starts[d + 1]], [lengths[d]])
                position += 1
            made = json.loads((folder / "stats.json").read_text())
            stats[inp.path] = InputStats(bytes=made["bytes"], documents=made["documents"],
                                         sha256=made["sha256"])
        splits = {s: w.close() for s, w in writers.items()}
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
        info = {"file": TOKENIZER_FILE, "source": "given", "given_path": str(config.tokenizer),
                "sha256": file_sha256(tmp / TOKENIZER_FILE)}
        grams, entries, eval_docs, too_short = _load_eval_ngrams(config)
        state = SimpleNamespace(kept=len(units), documents_in=documents_in, removed=removed)
        manifest = build_manifest(config, inputs, stats, state, splits, vocab_size, dtype, eod_id,
                                  info, entries, eval_docs, too_short, len(grams))
        write_manifest(tmp, manifest)
        _install(tmp, out, config.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stage_files in ("scan", "digests", "bands", "dedup"):
        shutil.rmtree(work / stage_files, ignore_errors=True)
    try:
        work.rmdir()   # kept while it holds the Slurm tasks' logs
    except OSError:
        pass
    return manifest


def run_stage(config, stage: str, task: int, tasks: int) -> dict | None:
    """One task of one stage (what a Slurm array task runs)."""
    from .tokenizer import load_tokenizer

    if config.tokenizer is None:
        raise DataError("data prepare --tasks needs --tokenizer (a tokenizer is trained on every "
                        "document in one place: train one first, or give your model's)")
    if stage not in STAGES or not 0 <= task < tasks:
        raise DataError(f"--stage must be one of {', '.join(STAGES)} and --task in [0, {tasks})")
    tokenizer = load_tokenizer(config.tokenizer, config.eod_token)
    (work_dir(config) / "scan").mkdir(parents=True, exist_ok=True)
    if stage == "scan":
        scan(config, task, tasks, tokenizer)
    elif stage == "dedup":
        dedup(config, task, tasks)
    else:
        return finish(config, tasks, tokenizer, Path(config.tokenizer))
    return None


def _task(args):
    config, stage, task, tasks = args
    run_stage(config, stage, task, tasks)


def run_local(config, tasks: int, processes: int) -> dict:
    """All stages on this machine: each stage's tasks in a `spawn` pool of `processes`."""
    import multiprocessing

    out = Path(config.out)
    if (out.exists() or out.is_symlink()) and not config.force:
        raise DataError(f"output directory already exists: {out} (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(min(tasks, processes)) as pool:
        for stage in ("scan", "dedup"):
            pool.map(_task, [(config, stage, t, tasks) for t in range(tasks)])
    return run_stage(config, "finish", 0, tasks)
