"""A run's tokenizer (run.yaml ``data.tokenizer``, ``data prepare --tokenizer``): a Hugging Face
tokenizer directory (``tokenizer.json`` with, optionally, ``tokenizer_config.json`` and
``special_tokens_map.json``) or a ``tokenizer.json`` alone, read offline with ``tokenizers``.

Its vocabulary (special tokens included) is what the model's embedding must cover; its end-of-document
token is the one given, else ``eos_token`` of ``tokenizer_config.json`` (or of
``special_tokens_map.json``), else ``<|endoftext|>``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

TOKENIZER_JSON = "tokenizer.json"
DEFAULT_EOD = "<|endoftext|>"


@dataclass(frozen=True)
class RunTokenizer:
    path: Path
    """The tokenizer.json."""
    directory: Path | None
    """The directory given (its other tokenizer files are copied by export-hf), or None."""
    vocab_size: int
    eod_token: str
    eod_id: int


def _eos_from(directory: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if path.is_file():
            try:
                eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token")
            except (OSError, ValueError, AttributeError):
                raise DataError(f"{path}: not a JSON object") from None
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and eos:
                return eos
    return None


def load_run_tokenizer(path: str | Path, eod_token: str = "", label: str = "data.tokenizer") -> RunTokenizer:
    """Read a tokenizer directory or tokenizer.json (DataError naming `label` when unusable)."""
    from tokenizers import Tokenizer

    path = Path(path)
    directory = path if path.is_dir() else None
    file = path / TOKENIZER_JSON if directory else path
    if not file.is_file():
        raise DataError(f"{label} {str(path)!r}: no {TOKENIZER_JSON} there (give a Hugging Face "
                        "tokenizer directory or its tokenizer.json; nothing is downloaded)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:   # tokenizers raises a bare Exception for parse errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{file}: not a valid tokenizer.json ({reason}; {label})") from None
    eod = eod_token or (_eos_from(directory or file.parent)) or DEFAULT_EOD
    eod_id = tokenizer.token_to_id(eod)
    if eod_id is None:
        raise DataError(f"{label} {str(file)!r} has no end-of-document token {eod!r}: set "
                        "data.eod_token (or --eod-token) to the one it uses")
    return RunTokenizer(path=file, directory=directory,
                        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
                        eod_token=eod, eod_id=eod_id)
