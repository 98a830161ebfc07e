"""End-to-end tests of ``data prepare`` through ``add_prepare_arguments`` + ``run_prepare``."""

import argparse
import gzip
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from llmlaunch.data import DataError, default_corpus_path
from llmlaunch.cli.data import add_prepare_arguments, run_prepare
from llmlaunch.data.text import match_words, normalize_text

VOCAB = "400"


def corpus_documents(count, start=0):
    """``count`` documents of the shipped corpus starting at ``start``."""
    with open(default_corpus_path(), encoding="utf-8") as handle:
        lines = handle.readlines()[start : start + count]
    return [json.loads(line)["text"] for line in lines]


def write_jsonl(path, texts):
    """Write ``texts`` as JSONL with a ``text`` field."""
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def parse(argv):
    """Parse ``data prepare`` arguments exactly as the CLI will."""
    parser = argparse.ArgumentParser(prog="llmlaunch data prepare")
    add_prepare_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def prepare(*argv):
    """Run ``data prepare`` with ``argv``; return the manifest."""
    args = parse(argv)
    assert run_prepare(args) == 0
    return json.loads((Path(args.out) / "manifest.json").read_text())


def directory_bytes(directory):
    """{file name: bytes} of every file in ``directory``."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def decode_split(out, manifest, split):
    """Documents of ``split`` decoded from the shards (EOD-terminated, via the index files)."""
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    documents = []
    for shard in manifest["splits"][split]["shards"]:
        tokens = np.fromfile(out / shard["tokens_file"], dtype="<" + ("u2" if manifest["dtype"] == "uint16" else "u4"))
        offsets = np.fromfile(out / shard["index_file"], dtype="<u8")
        assert offsets[0] == 0 and offsets[-1] == len(tokens) == shard["tokens"]
        assert len(offsets) == shard["documents"] + 1
        for start, end in zip(offsets[:-1], offsets[1:]):
            ids = tokens[start:end].tolist()
            assert ids[-1] == manifest["eod_id"] and manifest["eod_id"] not in ids[:-1]
            documents.append(tokenizer.decode(ids[:-1], skip_special_tokens=False))
    return documents


def leftovers(parent, name):
    """Entries in ``parent`` that belong to output ``name`` (the output itself or a temporary dir)."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def docs():
    return corpus_documents(30)


def test_shipped_corpus_is_small_and_fully_kept(tmp_path):
    corpus = default_corpus_path()
    assert corpus.stat().st_size < 1_000_000
    manifest = prepare("--input", corpus, "--out", tmp_path / "out", "--vocab-size", "1024")
    assert manifest["documents_in"] >= 300
    assert manifest["documents_out"] == manifest["documents_in"]
    assert manifest["splits"]["val"]["documents"] >= 1


def test_outputs_round_trip_and_manifest_is_complete(tmp_path, docs):
    docs = docs[:-1] + [docs[-1] + " A literal <|endoftext|> inside the text is only text."]
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out"
    manifest = prepare("--input", src, "--out", out, "--vocab-size", VOCAB, "--shard-size-tokens", "1500",
                       "--val-fraction", "0.2", "--seed", "7")
    for key in ("documents_in", "documents_out", "tokens_out", "removed", "inputs", "seed", "versions",
                "shards", "dtype", "vocab_size", "splits"):
        assert key in manifest
    assert set(manifest["versions"]) >= {"python", "tokenizers", "datasketch", "llmlaunch"}
    assert manifest["seed"] == 7 and manifest["dtype"] == "uint16" and manifest["vocab_size"] <= 400
    assert manifest["inputs"][0]["documents"] == 30 and len(manifest["inputs"][0]["sha256"]) == 64
    assert manifest["documents_in"] == manifest["documents_out"] + sum(manifest["removed"].values())
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert len(train["shards"]) > 1, "small --shard-size-tokens must produce several shards"
    assert all(s["tokens"] <= 1500 for s in train["shards"] if s["documents"] > 1)
    assert manifest["tokens_out"] == train["tokens"] + val["tokens"]
    assert sorted(manifest["shards"]) == sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".idx"))
    assert sorted(p.name for p in out.iterdir() if p.suffix not in (".bin", ".idx")) == ["manifest.json", "tokenizer.json"]
    # Every kept document comes back verbatim (after normalisation), each in exactly one split, in input order.
    decoded_train, decoded_val = decode_split(out, manifest, "train"), decode_split(out, manifest, "val")
    assert 1 <= len(decoded_val) < len(docs)
    expected = [normalize_text(d) for d in docs]
    assert sorted(decoded_train + decoded_val) == sorted(expected)
    assert decoded_train == [d for d in expected if d in set(decoded_train)]


def test_exact_and_near_duplicates_are_removed_and_distinct_docs_kept(tmp_path, docs):
    base = docs[0] + "\n\n" + docs[1]
    words = base.split(" ")
    words[40] = "purple"  # one changed word: still ~90% shingle overlap
    near = " ".join(words)
    exact = unicodedata.normalize("NFD", docs[2]).replace("\n", "\r\n") + "   \n"
    texts = [base] + docs[2:20] + [exact, near]
    manifest = prepare("--input", write_jsonl(tmp_path / "in.jsonl", texts), "--out", tmp_path / "out",
                       "--vocab-size", VOCAB)
    assert manifest["removed"]["exact_dup"] == 1
    assert manifest["removed"]["near_dup"] == 1
    assert manifest["documents_out"] == 19
    kept = decode_split(tmp_path / "out", manifest, "train") + decode_split(tmp_path / "out", manifest, "val")
    assert normalize_text(base) in kept and normalize_text(near) not in kept


def test_near_dup_threshold_and_switch_are_honoured(tmp_path, docs):
    words = docs[0].split(" ")
    words[10:14] = ["purple", "monkey", "dishwasher", "again"]
    texts = [docs[0], " ".join(words)] + docs[1:5]
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    loose = prepare("--input", src, "--out", tmp_path / "a", "--vocab-size", VOCAB, "--near-dup-threshold", "0.5")
    off = prepare("--input", src, "--out", tmp_path / "b", "--vocab-size", VOCAB, "--no-near-dup")
    assert loose["removed"]["near_dup"] == 1
    assert off["removed"]["near_dup"] == 0 and off["documents_out"] == 6


def test_quality_filters_are_counted_per_filter_and_configurable(tmp_path, docs):
    texts = docs[:5] + ["Too short to keep.", docs[5] + " Lorem ipsum dolor sit amet."]
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    manifest = prepare("--input", src, "--out", tmp_path / "a", "--vocab-size", VOCAB)
    assert manifest["removed"]["word_count"] == 1 and manifest["removed"]["lorem_ipsum"] == 1
    assert manifest["documents_out"] == 5
    config = tmp_path / "quality.yaml"
    config.write_text("min_words: 3\nmin_stop_words: 0\n")
    relaxed = prepare("--input", src, "--out", tmp_path / "b", "--vocab-size", VOCAB, "--quality-config", config,
                      "--quality", "disabled=lorem_ipsum")
    assert relaxed["documents_out"] == 7
    assert relaxed["cleaning"]["quality_thresholds"]["min_words"] == 3
    off = prepare("--input", src, "--out", tmp_path / "c", "--vocab-size", VOCAB, "--no-quality-filters")
    assert off["documents_out"] == 7


def test_planted_eval_ngram_with_other_case_and_punctuation_is_removed(tmp_path, docs):
    target = match_words(docs[3])[20:33]  # 13 words of a training document
    eval_text = "QUESTION: " + ", ".join(w.upper() for w in target) + "?! ANSWER: no."
    near_miss = " ".join(match_words(docs[4])[20:32])  # only 12 words of another document
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(eval_text + "\n\n" + near_miss + "\n")
    src = write_jsonl(tmp_path / "in.jsonl", docs[:10])
    manifest = prepare("--input", src, "--out", tmp_path / "out", "--vocab-size", VOCAB, "--eval", eval_file)
    assert manifest["removed"]["decontaminated"] == 1
    assert manifest["documents_out"] == 9
    kept = decode_split(tmp_path / "out", manifest, "train") + decode_split(tmp_path / "out", manifest, "val")
    assert normalize_text(docs[3]) not in kept and normalize_text(docs[4]) in kept
    assert manifest["cleaning"]["decontamination"]["ngram_words"] == 13


def test_output_is_byte_identical_across_runs_and_worker_counts(tmp_path, docs):
    src = write_jsonl(tmp_path / "in.jsonl", docs + [docs[0]])
    common = ["--input", src, "--vocab-size", VOCAB, "--val-fraction", "0.1", "--shard-size-tokens", "2000"]
    prepare(*common, "--out", tmp_path / "w1a", "--workers", "1")
    prepare(*common, "--out", tmp_path / "w1b", "--workers", "1")
    prepare(*common, "--out", tmp_path / "w2", "--workers", "2")
    first = directory_bytes(tmp_path / "w1a")
    assert first == directory_bytes(tmp_path / "w1b")
    assert first == directory_bytes(tmp_path / "w2")
    other_seed = prepare(*common, "--out", tmp_path / "s9", "--seed", "9")
    assert other_seed["seed"] == 9


def test_text_directories_globs_and_gzip_inputs(tmp_path, docs):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("\n\n".join(d.replace("\n\n", "\n") for d in docs[:3]) + "\n")
    (folder / "sub" / "b.md").write_text(docs[3].replace("\n\n", "\n"))
    (folder / "notes.csv").write_text("ignored,because,unsupported\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"body": docs[4]}) + "\n\n")
    (tmp_path / "d1.jsonl").write_text(json.dumps({"body": docs[5], "id": 1}) + "\n")
    (tmp_path / "d2.jsonl").write_text(json.dumps({"body": docs[6], "id": 2}) + "\n")
    manifest = prepare("--input", folder, tmp_path / "d*.jsonl", "--input", tmp_path / "c.jsonl.gz",
                       "--text-field", "body", "--out", tmp_path / "out", "--vocab-size", VOCAB)
    names = [Path(entry["path"]).name for entry in manifest["inputs"]]
    assert names == ["a.txt", "b.md", "d1.jsonl", "d2.jsonl", "c.jsonl.gz"]
    assert [entry["documents"] for entry in manifest["inputs"]] == [3, 1, 1, 1, 1]
    assert manifest["documents_out"] == 7


def test_whole_file_text_split(tmp_path, docs):
    (tmp_path / "one.txt").write_text(docs[0] + "\n\n" + docs[1])
    (tmp_path / "two.txt").write_text(docs[2])
    manifest = prepare("--input", tmp_path / "one.txt", tmp_path / "two.txt", "--text-split", "file",
                       "--out", tmp_path / "out", "--vocab-size", VOCAB)
    assert manifest["documents_in"] == 2


def test_given_tokenizer_is_used_and_copied(tmp_path, docs):
    src = write_jsonl(tmp_path / "in.jsonl", docs[:8])
    prepare("--input", src, "--out", tmp_path / "first", "--vocab-size", VOCAB)
    given = tmp_path / "first" / "tokenizer.json"
    manifest = prepare("--input", src, "--out", tmp_path / "second", "--tokenizer", given)
    assert (tmp_path / "second" / "tokenizer.json").read_bytes() == given.read_bytes()
    assert manifest["tokenizer"]["source"] == "given"
    assert (tmp_path / "second" / "train-00000.bin").read_bytes() == (tmp_path / "first" / "train-00000.bin").read_bytes()
    with pytest.raises(DataError, match="no end-of-document token"):
        prepare("--input", src, "--out", tmp_path / "third", "--tokenizer", given, "--eod-token", "<eos>")


def test_large_vocab_uses_uint32(tmp_path, docs):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"tok{i}": i + 1 for i in range(70_000)}}
    for i, char in enumerate(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = 70_001 + i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.save(str(tmp_path / "big.json"))
    manifest = prepare("--input", write_jsonl(tmp_path / "in.jsonl", docs[:3]), "--out", tmp_path / "out",
                       "--tokenizer", tmp_path / "big.json")
    assert manifest["dtype"] == "uint32"
    tokens = np.fromfile(tmp_path / "out" / "train-00000.bin", dtype="<u4")
    assert tokens.max() >= 70_001 and (tokens == 0).sum() == manifest["splits"]["train"]["documents"]


def bad_inputs(tmp_path):
    """(file, expected message fragment) pairs of unusable inputs."""
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(b"A fine first line.\nthen a broken byte \xff here\n")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": broken\n')
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"content": "x"}\n')
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n \n")
    corrupt_gz = tmp_path / "corrupt.jsonl.gz"
    corrupt_gz.write_bytes(gzip.compress(b'{"text": "x"}\n')[:-12] + b"garbage!")
    unsupported = tmp_path / "data.csv"
    unsupported.write_text("a,b\n")
    return [
        (bad_utf8, "invalid UTF-8"),
        (bad_json, "invalid JSON"),
        (no_field, "no 'text' field"),
        (empty, "input file is empty"),
        (blank, "no documents"),
        (corrupt_gz, "corrupt gzip"),
        (unsupported, "unsupported input file type"),
        (tmp_path / "missing.jsonl", "not found"),
    ]


def test_bad_inputs_give_one_line_errors_and_leave_nothing_behind(tmp_path, docs):
    good = write_jsonl(tmp_path / "good.jsonl", docs[:5])
    parent = tmp_path / "outputs"
    for bad, fragment in bad_inputs(tmp_path):
        with pytest.raises(DataError) as info:
            prepare("--input", good, bad, "--out", parent / "out", "--vocab-size", VOCAB)
        message = str(info.value)
        assert fragment in message and bad.name in message and "\n" not in message, message
        assert isinstance(info.value, ValueError)
        assert not parent.exists() or leftovers(parent, "out") == []


def test_error_midway_with_worker_processes_leaves_nothing_behind(tmp_path, docs):
    src = tmp_path / "late.jsonl"
    lines = [json.dumps({"text": d}) for d in docs * 10] + ['{"text": "unterminated']
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"late.jsonl:301: invalid JSON"):
        prepare("--input", src, "--out", tmp_path / "out", "--vocab-size", VOCAB, "--workers", "2")
    assert leftovers(tmp_path, "out") == []


def test_bad_eval_file_and_bad_tokenizer_are_reported(tmp_path, docs):
    good = write_jsonl(tmp_path / "good.jsonl", docs[:5])
    bad = tmp_path / "eval.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="eval.jsonl:1: invalid JSON"):
        prepare("--input", good, "--eval", bad, "--out", tmp_path / "out", "--vocab-size", VOCAB)
    broken = tmp_path / "tok.json"
    broken.write_text("{")
    with pytest.raises(DataError, match="tok.json: not a valid tokenizer.json"):
        prepare("--input", good, "--out", tmp_path / "out", "--tokenizer", broken)
    assert leftovers(tmp_path, "out") == []


def test_parquet_needs_pyarrow_or_is_read(tmp_path, docs):
    path = tmp_path / "docs.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1 not really parquet")
        with pytest.raises(DataError, match="docs.parquet: reading Parquet needs the 'pyarrow' package"):
            prepare("--input", path, "--out", tmp_path / "out", "--vocab-size", VOCAB)
        assert leftovers(tmp_path, "out") == []
    else:
        pq.write_table(pa.table({"text": docs[:4]}), path)
        manifest = prepare("--input", path, "--out", tmp_path / "out", "--vocab-size", VOCAB)
        assert manifest["documents_out"] == 4


def test_existing_output_needs_force(tmp_path, docs):
    src = write_jsonl(tmp_path / "in.jsonl", docs[:5])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="already exists.*--force"):
        prepare("--input", src, "--out", out, "--vocab-size", VOCAB)
    assert (out / "keep.txt").read_text() == "precious"
    manifest = prepare("--input", src, "--out", out, "--vocab-size", VOCAB, "--force")
    assert not (out / "keep.txt").exists() and manifest["documents_out"] == 5
    assert leftovers(tmp_path, "out") == ["out"]


def test_everything_removed_is_an_error(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["tiny doc", "another tiny doc"])
    with pytest.raises(DataError, match="no documents left after cleaning.*word_count=2"):
        prepare("--input", src, "--out", tmp_path / "out", "--vocab-size", VOCAB)
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--vocab-size", "100"], "at least 257"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--near-dup-threshold", "0"], "--near-dup-threshold"),
    ],
)
def test_bad_option_values_raise_data_error(tmp_path, docs, argv, message):
    src = write_jsonl(tmp_path / "in.jsonl", docs[:3])
    with pytest.raises(DataError, match=message):
        prepare("--input", src, "--out", tmp_path / "out", *argv)


def test_val_split_is_at_least_one_document_and_depends_on_seed(tmp_path, docs):
    src = write_jsonl(tmp_path / "in.jsonl", docs[:12])
    splits = []
    for seed in range(4):
        manifest = prepare("--input", src, "--out", tmp_path / f"s{seed}", "--vocab-size", VOCAB, "--seed", seed)
        assert manifest["splits"]["val"]["documents"] >= 1 and manifest["splits"]["train"]["documents"] >= 1
        splits.append(tuple(decode_split(tmp_path / f"s{seed}", manifest, "val")))
    assert len(set(splits)) > 1
    none = prepare("--input", src, "--out", tmp_path / "none", "--vocab-size", VOCAB, "--val-fraction", "0")
    assert none["splits"]["val"] == {"documents": 0, "tokens": 0, "shards": []}
