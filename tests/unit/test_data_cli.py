"""CLI glue: flag parsing, the summary, lazy imports, and one run in a fresh interpreter."""

import argparse
import json
import subprocess
import sys

import pytest

from llmlaunch.data import default_corpus_path
from llmlaunch.cli.data import add_prepare_arguments, config_from_args


def parse(argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return parser.parse_args(argv)


def test_flags_map_onto_the_config():
    args = parse(["--input", "a.txt", "b.jsonl", "--input", "c/", "--out", "o", "--eval", "e1", "--eval", "e2",
                  "--seed", "4", "--workers", "2", "--vocab-size", "1000", "--no-near-dup", "--near-dup-threshold",
                  "0.7", "--decontam-ngram", "8", "--quality", "min_words=20", "--val-fraction", "0.05",
                  "--normalization", "NFKC", "--text-field", "content"])
    config = config_from_args(args)
    assert list(config.inputs) == ["a.txt", "b.jsonl", "c/"] and list(config.eval_inputs) == ["e1", "e2"]
    assert (config.seed, config.workers, config.vocab_size, config.tokenizer) == (4, 2, 1000, None)
    assert config.near_dup.enabled is False and config.near_dup.threshold == 0.7
    assert config.decontam_ngram_words == 8 and config.thresholds.min_words == 20
    assert config.val_fraction == 0.05 and config.normalization == "NFKC" and config.text_field == "content"


@pytest.mark.parametrize(
    "argv",
    [
        ["--out", "o"],  # --input is required
        ["--input", "a", "--out", "o", "--vocab-size", "500", "--tokenizer", "t.json"],  # mutually exclusive
        ["--input", "a", "--out", "o", "--workers", "0"],
        ["--input", "a", "--out", "o", "--normalization", "NFD"],
    ],
)
def test_invalid_flags_are_rejected_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2


def test_fresh_interpreter_imports_lazily_and_runs_prepare(tmp_path):
    with open(default_corpus_path(), encoding="utf-8") as handle:
        (tmp_path / "in.jsonl").write_text("".join(handle.readlines()[:20]), encoding="utf-8")
    script = (
        "import argparse, sys\n"
        "from llmlaunch.cli.data import add_prepare_arguments, run_prepare\n"
        "import llmlaunch.data.loader\n"
        "heavy = [m for m in ('tokenizers', 'datasketch', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "p = argparse.ArgumentParser(); add_prepare_arguments(p)\n"
        "sys.exit(run_prepare(p.parse_args(sys.argv[1:])))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out"),
         "--vocab-size", "300", "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert f"documents: 20 in, {manifest['documents_out']} out" in result.stdout
    assert f"tokens: {manifest['tokens_out']}" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal, no warnings


def test_cli_module_does_not_import_numpy():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, llmlaunch.cli.data; print('numpy' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr
