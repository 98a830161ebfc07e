"""Is this data for this model, for this run? Checked once, before any rank starts
(launcher/run_data.py), from a built sample index's index.json (data/sample_index.py), for every
source kind; the loader checks every batch's ids again (vocab_check.py), with the same message.

- Vocabulary: a prepared directory's manifest says the vocabulary it was tokenized with; every
  other kind's largest id was read once when the index was built. A model with fewer embedding
  rows would index past its table. With data.tokenizer, its vocabulary must fit the model and hold
  the data's ids.
- Size: together the sources hold at least one global batch of windows, and each source at least
  its share of one; evaluation data at least train.eval_batches global batches, without repeating a
  window.
- The files against their manifest or index: checked by the index builder (sources.check_files).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .blend import deficit_first
from .errors import DataError
from .sample_index import INDEX_FILE
from .vocab_check import out_of_vocab_message


def _held(source: dict, seq_len: int) -> str:
    held = (f"tokenized with a vocabulary of {source['vocab_size']}" if source["vocab_size"]
            is not None else f"token ids up to {source['max_token_id']}")
    return f"{source['tokens']:,} {source['dtype']} tokens, {held}"


def check_index_against_model(directory: Path, *, vocab: int, global_batch: int,
                              samples: int | None = None, eval_samples: int | None = None,
                              tokenizer=None) -> str:
    """DataError naming the source, what it holds and the setting that would fit; else a summary
    of what the sources hold (one line)."""
    meta = json.loads((Path(directory) / INDEX_FILE).read_text())
    seq_len, sources, weights = meta["seq_len"], meta["sources"], meta["weights"]
    for source, weight in zip(sources, weights):
        where = f"data source {source['path']!r}"
        share = global_batch if len(sources) == 1 else math.ceil(weight * global_batch)
        if eval_samples is None and source["windows"] < share:
            what = "one global batch" if len(sources) == 1 else \
                f"its share ({share}) of one global batch"
            raise DataError(f"{where} holds {source['tokens']:,} tokens: {source['windows']} "
                            f"sequence(s) of {seq_len + 1} tokens, fewer than {what} of "
                            f"{global_batch}; give more data, or a shorter model.seq_len or "
                            "smaller batch")
        needed = source["vocab_size"] if source["vocab_size"] is not None else \
            source["max_token_id"] + 1
        if needed > vocab:
            if source["vocab_size"] is not None:
                raise DataError(f"{where} was tokenized with a vocabulary of "
                                f"{source['vocab_size']}, but model.vocab is {vocab}: set "
                                f"model.vocab to at least {source['vocab_size']}, or prepare the "
                                f"data with `llmlaunch data prepare --vocab-size {vocab}`")
            raise DataError(out_of_vocab_message(Path(source["path"]),
                                                 f"token ids up to {source['max_token_id']}",
                                                 needed, vocab))
        if tokenizer is not None and needed > tokenizer.vocab_size:
            raise DataError(f"{where} holds ids up to {needed - 1}, beyond the vocabulary of "
                            f"data.tokenizer {str(tokenizer.path)!r} ({tokenizer.vocab_size:,}): "
                            "it was tokenized with another tokenizer")
    if eval_samples is not None:
        counts = _counts(weights, eval_samples)
        for source, count in zip(sources, counts):
            if count > source["windows"]:
                raise DataError(f"evaluation source {source['path']!r} holds {source['windows']} "
                                f"sequence(s) of {seq_len + 1} tokens; train.eval_batches asks it "
                                f"for {count}: lower train.eval_batches or give more evaluation "
                                "data")
    if len(sources) == 1:
        return _held(sources[0], seq_len) + _epochs(sources, weights, samples)
    return "; ".join(f"{s['name']} ({w:.0%}): {_held(s, seq_len)}" for s, w in
                     zip(sources, weights)) + _epochs(sources, weights, samples)


def _counts(weights, samples: int) -> list[int]:
    order = deficit_first(weights, samples) if samples else []
    return [int((order == s).sum()) for s in range(len(weights))] if samples else [0] * len(weights)


def _epochs(sources, weights, samples) -> str:
    if not samples:
        return ""
    reads = ", ".join(f"{s['name']} {w * samples / s['windows']:.2f}" for s, w in
                      zip(sources, weights))
    return f" (epochs over the run: {reads})"
