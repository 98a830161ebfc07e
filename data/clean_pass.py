"""Pass 1 of ``data prepare`` in the parent process: the order-dependent dedup and split decisions.

Workers analyse documents (:mod:`llmlaunch.data.workers`); :class:`CleanPass` consumes their
analyses in input order, counts removals, keeps the exact and near-duplicate indices, assigns each
kept document to train or val, and spools the kept documents (:mod:`llmlaunch.data.spool`).
"""

from __future__ import annotations

import array
import hashlib
from pathlib import Path

from . import clean
from .prepare_config import PrepareConfig
from .quality import FILTER_NAMES
from .spool import write_spooled_text


def split_unit_value(seed: int, digest: bytes) -> float:
    """A uniform value in [0, 1) from ``seed`` and a document digest; documents below ``val_fraction`` go to val."""
    mixed = hashlib.blake2b(seed.to_bytes(8, "little") + digest, digest_size=8).digest()
    return int.from_bytes(mixed, "little") / 2.0**64


class CleanPass:
    """State of pass 1: removal counters, dedup indices, spool writer, validation-split bookkeeping."""

    def __init__(self, config: PrepareConfig, spool_path: Path) -> None:
        self.config = config
        self.removed = {"empty": 0, "exact_dup": 0}
        self.removed.update({name: 0 for name in FILTER_NAMES})
        self.removed.update({"decontaminated": 0, "near_dup": 0})
        self.documents_in = 0
        self.kept = 0
        self.val = 0
        self.exact = clean.ExactDeduplicator()
        self.near = clean.NearDuplicateIndex(config.near_dup, config.seed) if config.near_dup.enabled else None
        self.spool = open(spool_path, "wb")
        self.min_unit = (2.0, -1)  # (value, kept index) of the document most eligible for val
        self.max_unit = (-1.0, -1)
        # with a given tokenizer the spool holds tokens; the documents' lengths and splits are kept here
        self.token_lengths = array.array("q")
        self.is_val = bytearray()
        self.text_bytes = 0

    def decide(self, analysis: clean.Analysis) -> bool | None:
        """Apply the order-dependent steps to one analysed document: None if removed, else whether it goes to val."""
        self.documents_in += 1
        verdict = analysis.verdict
        if verdict == clean.EMPTY:
            self.removed["empty"] += 1
            return None
        if self.exact.seen_before(analysis.digest):
            self.removed["exact_dup"] += 1
            return None
        if verdict != clean.KEPT:
            self.removed[verdict] += 1
            return None
        if self.near is not None and not self.near.add_if_new(self.kept, analysis.signature):
            self.removed["near_dup"] += 1
            return None
        unit = split_unit_value(self.config.seed, analysis.digest)
        is_val = unit < self.config.val_fraction
        self.min_unit = min(self.min_unit, (unit, self.kept))
        self.max_unit = max(self.max_unit, (unit, self.kept))
        self.kept += 1
        self.val += is_val
        return is_val

    def consume(self, analysis: clean.Analysis) -> None:
        """Decide one analysed document and spool its text if kept."""
        is_val = self.decide(analysis)
        if is_val is not None:
            write_spooled_text(self.spool, is_val, analysis.text)

    def consume_encoded(self, analyses: list[clean.Analysis], tokens, lengths, sizes) -> None:
        """Decide a chunk whose ``KEPT`` documents the worker tokenised (``tokens``, ``lengths``, ``sizes``, in order); spool the tokens of those kept."""
        import numpy as np

        keep = np.zeros(len(lengths), dtype=bool)
        position = 0
        for analysis in analyses:
            is_val = self.decide(analysis)
            if analysis.verdict == clean.KEPT:
                if is_val is not None:
                    keep[position] = True
                    self.is_val.append(is_val)
                position += 1
        if keep.all():
            self.spool.write(tokens.tobytes())
        elif keep.any():
            self.spool.write(tokens[np.repeat(keep, lengths)].tobytes())
        self.token_lengths.extend(lengths[keep].tolist())
        self.text_bytes += int(sizes[keep].sum())

    def split_overrides(self) -> dict[int, bool]:
        """Kept-index -> is_val corrections so that val has >= 1 document and train >= 1 (when >= 2 kept)."""
        overrides: dict[int, bool] = {}
        if self.kept >= 2 and self.config.val_fraction > 0 and self.val == 0:
            overrides[self.min_unit[1]] = True
        elif self.kept >= 1 and self.val == self.kept:
            overrides[self.max_unit[1]] = False
        return overrides
