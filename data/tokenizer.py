"""Byte-level BPE tokenizer: train one with Hugging Face ``tokenizers`` or load a ``tokenizer.json``.

A trained tokenizer uses the GPT-2 byte-level pre-tokenizer and decoder (every byte is in the
base alphabet, so any text encodes without unknown tokens), an NFC normaliser, and one special
token, the end-of-document marker (``<|endoftext|>`` by default, id 0).  ``encode_documents``
appends that marker after every document.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DataError

EOD_TOKEN = "<|endoftext|>"
BYTE_ALPHABET_SIZE = 256
MIN_FREQUENCY = 2


def train_bpe(texts: Iterable[str], vocab_size: int, eod_token: str = EOD_TOKEN):
    """Train a byte-level BPE tokenizer with ``vocab_size`` entries (256 bytes + ``eod_token`` + merges).

    The result may be smaller than ``vocab_size`` when the text runs out of pairs seen
    ``MIN_FREQUENCY`` times.  Training is deterministic for the same texts in the same order.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < BYTE_ALPHABET_SIZE + 1:
        raise DataError(f"--vocab-size must be at least {BYTE_ALPHABET_SIZE + 1} (256 bytes + end-of-document token)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=[eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path, eod_token: str = EOD_TOKEN):
    """Load ``tokenizer.json`` and return ``(tokenizer, eod_id)``; ``DataError`` if unreadable or lacking ``eod_token``."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for parse errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a valid tokenizer.json ({reason})") from None
    eod_id = tokenizer.token_to_id(eod_token)
    if eod_id is None:
        raise DataError(f"{path}: tokenizer has no end-of-document token {eod_token!r} (set --eod-token)")
    return tokenizer, eod_id


# Normalisers that leave ASCII text unchanged: prepare's text is already in a Unicode normal form,
# so for its (nearly always) ASCII documents the tokenizer's own NFC pass is work without effect.
_ASCII_IDENTITY_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")


def ascii_twin(tokenizer):
    """A copy of ``tokenizer`` without its normaliser if that normaliser cannot change ASCII text, else None.

    Encoding ASCII text with the twin gives the same ids, without the normalisation pass.
    """
    from tokenizers import Tokenizer, normalizers

    normalizer = tokenizer.normalizer
    if normalizer is None or not any(isinstance(normalizer, getattr(normalizers, name)) for name in _ASCII_IDENTITY_NORMALIZERS):
        return None
    twin = Tokenizer.from_str(tokenizer.to_str())
    twin.normalizer = None
    return twin


def encode_documents(tokenizer, texts: Sequence[str], eod_id: int, ascii_tokenizer=None):
    """Encode ``texts`` and append ``eod_id`` to each: returns (uint32 token array, int64 per-document lengths).

    Special-token strings inside a document (e.g. a literal ``<|endoftext|>``) are encoded as plain
    text, so the end-of-document id only ever appears where this function puts it.  ASCII texts go
    to ``ascii_tokenizer`` when given (see :func:`ascii_twin`).
    """
    import numpy as np

    texts = list(texts)
    if ascii_tokenizer is None or all(text.isascii() for text in texts):
        ids = _encode_ids(ascii_tokenizer or tokenizer, texts)
    else:
        ascii_ids = iter(_encode_ids(ascii_tokenizer, [t for t in texts if t.isascii()]))
        other_ids = iter(_encode_ids(tokenizer, [t for t in texts if not t.isascii()]))
        ids = [next(ascii_ids) if text.isascii() else next(other_ids) for text in texts]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    ends = np.cumsum(lengths)
    tokens = np.full(int(ends[-1]) if len(ends) else 0, eod_id, dtype=np.uint32)
    body = np.ones(tokens.size, dtype=bool)
    body[ends - 1] = False
    tokens[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint32, count=tokens.size - len(ids))
    return tokens, lengths


def _encode_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens added; special-token strings encoded as text)."""
    if not texts:
        return []
    tokenizer.encode_special_tokens = True
    # encode_batch_fast (tokenizers >= 0.20) skips character offsets; the ids are the same.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
