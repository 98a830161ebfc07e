"""The options of ``llmlaunch data prepare`` (:class:`PrepareConfig`) and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .clean import NearDupConfig
from .errors import DataError
from .quality import QualityThresholds
from .text import NORMALIZATION_FORMS
from .tokenizer import EOD_TOKEN

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_SHARD_SIZE_TOKENS = 100_000_000


@dataclass(frozen=True)
class PrepareConfig:
    """All options of ``llmlaunch data prepare`` (see ``llmlaunch.data.cli`` for the flags)."""

    inputs: Sequence[str]
    out: str | Path
    vocab_size: int | None = None
    tokenizer: str | Path | None = None
    eval_inputs: Sequence[str] = ()
    seed: int = 0
    workers: int = 1
    force: bool = False
    text_field: str = "text"
    text_split: str = "blank-line"
    normalization: str = "NFC"
    val_fraction: float = 0.01
    eod_token: str = EOD_TOKEN
    shard_size_tokens: int = DEFAULT_SHARD_SIZE_TOKENS
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    near_dup: NearDupConfig = field(default_factory=NearDupConfig)
    decontam_ngram_words: int = 13
    progress: bool | None = None  # None: show a progress bar only when stderr is a terminal
    work: str | Path | None = None  # --tasks: the stages' work folder (None: .OUT.work beside --out)


def validate_config(config: PrepareConfig) -> None:
    """Raise ``DataError`` for option values that cannot work."""
    if config.vocab_size is not None and config.tokenizer is not None:
        raise DataError("give either --vocab-size or --tokenizer, not both")
    if config.vocab_size is not None and config.vocab_size < 257:
        raise DataError("--vocab-size must be at least 257 (256 bytes + end-of-document token)")
    if config.seed < 0:
        raise DataError("--seed must be >= 0")
    if config.workers < 1:
        raise DataError("--workers must be >= 1")
    if not 0.0 <= config.val_fraction < 1.0:
        raise DataError("--val-fraction must be in [0, 1)")
    if config.normalization not in NORMALIZATION_FORMS:
        raise DataError(f"--normalization must be one of {', '.join(NORMALIZATION_FORMS)}")
    if config.shard_size_tokens < 1:
        raise DataError("--shard-size-tokens must be >= 1")
    if config.decontam_ngram_words < 1:
        raise DataError("--decontam-ngram must be >= 1")
    if not 0.0 < config.near_dup.threshold <= 1.0:
        raise DataError("--near-dup-threshold must be in (0, 1]")
    if config.near_dup.num_perm < 2 or config.near_dup.shingle_words < 1:
        raise DataError("--near-dup-num-perm must be >= 2 and --near-dup-shingle-words >= 1")
    if not config.eod_token:
        raise DataError("--eod-token must not be empty")
