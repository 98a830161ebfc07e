"""The shipped corpus is what ``tools/make_corpus.py`` generates, byte for byte."""

import importlib.util
from pathlib import Path

from llmlaunch.data import default_corpus_path

MAKE_CORPUS = Path(__file__).resolve().parents[2] / "tools" / "make_corpus.py"


def load_make_corpus():
    """``tools/make_corpus.py`` as a module (tools/ is not a package and is not installed)."""
    spec = importlib.util.spec_from_file_location("make_corpus", MAKE_CORPUS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_corpus_regenerates_the_shipped_corpus(tmp_path):
    out = tmp_path / "corpus.jsonl"
    assert load_make_corpus().main(["--out", str(out)]) == 0
    assert out.read_bytes() == default_corpus_path().read_bytes()
