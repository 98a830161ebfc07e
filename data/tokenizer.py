"""Byte-level BPE tokenizer: train one with Hugging Face ``tokenizers`` or load a ``tokenizer.json``.

A trained tokenizer uses the GPT-2 byte-level pre-tokenizer and decoder (every byte is in the
base alphabet, so any text encodes without unknown tokens), an NFC normaliser, and one special
token, the end-of-document marker (``<|endoftext|>`` by default, id 0).  ``encode_documents``
appends that marker after every document.
"""

from __future__ import annotations

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


def encode_documents(tokenizer, texts: Sequence[str], eod_id: int):
    """Encode ``texts`` and append ``eod_id`` to each: returns (uint32 token array, int64 per-document lengths).

    Special-token strings inside a document (e.g. a literal ``<|endoftext|>``) are encoded as plain
    text, so the end-of-document id only ever appears where this function puts it.
    """
    import numpy as np

    tokenizer.encode_special_tokens = True
    # encode_batch_fast (tokenizers >= 0.20) skips character offsets; the ids are the same.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode(list(texts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    tokens = np.empty(int(lengths.sum()), dtype=np.uint32)
    ends = np.cumsum(lengths)
    tokens[ends - 1] = eod_id
    position = 0
    for encoding, end in zip(encodings, ends):
        ids = encoding.ids
        tokens[position : position + len(ids)] = ids
        position = int(end)
    return tokens, lengths
