"""Token ids against the model's vocabulary: the one message for data the model cannot embed, and
the loader's cheap per-batch check (checks.py checks whole data sets before the ranks start)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError


def out_of_vocab_message(path: Path, held: str, needed: int, vocab: int) -> str:
    """The one message for data whose ids the model cannot embed (pre-start check and loader)."""
    return (f"data source {str(path)!r} holds {held}, but model.vocab is {vocab}: set model.vocab to "
            f"at least {needed}, or prepare the data with `llmlaunch data prepare --vocab-size "
            f"{vocab}`; ids that high in a flat file can also mean it is not token data at all")


def check_batch(batch: np.ndarray, path: Path, vocab: int) -> None:
    """The loader's per-batch check: every id below the model's vocabulary (the same message)."""
    largest = int(batch.max()) if batch.size else -1
    if largest >= vocab:
        raise DataError(out_of_vocab_message(Path(path), f"token ids up to {largest}",
                                             largest + 1, vocab))
