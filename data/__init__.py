"""Data preparation: raw text to deduplicated, filtered, tokenized shards.

The heavy dependencies (numpy, tokenizers, datasketch) are imported lazily by the modules that need
them, so ``import llmlaunch.data`` stays cheap.  Entry points:

* ``llmlaunch.data.prepare.prepare(PrepareConfig(...))`` -- the pipeline behind ``llmlaunch data prepare``;
* ``llmlaunch.data.cli`` -- ``add_prepare_arguments`` / ``run_prepare`` for the command line;
* ``llmlaunch.data.loader`` -- ``TokenWindowDataset``, ``ShardSampler``, ``TokenWindowLoader`` (numpy only);
* ``default_corpus_path()`` -- the small English corpus shipped with the package.

The on-disk format is described in ``docs/data.md``.
"""

from pathlib import Path

from .errors import DataError

__all__ = ["DataError", "default_corpus_path"]

_CORPUS_FILE = "tiny_corpus.jsonl"


def default_corpus_path() -> Path:
    """Return the path of the small English corpus shipped in ``llmlaunch/data/corpus/`` (JSONL, field ``text``)."""
    return Path(__file__).resolve().parent / "corpus" / _CORPUS_FILE
