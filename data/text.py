"""Text normalisation and word splitting shared by the cleaning steps.

Two views of a document are used:

* the *normalised text* (``normalize_text``): Unicode NFC by default (NFKC on request), line endings
  folded to ``\\n``, trailing spaces on each line removed, leading/trailing whitespace stripped.
  This is the text that is hashed for exact dedup, filtered, and tokenised.
* the *match words* (``match_words``): NFKC + case-folded, apostrophes deleted, every other
  character that is not a letter or digit treated as a separator.  Used for decontamination
  n-grams and MinHash shingles, so that case and punctuation cannot hide an overlap.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator, Sequence

NORMALIZATION_FORMS = ("NFC", "NFKC")

_TRAILING_SPACE_RE = re.compile(r"[ \t\f\v]+\n")
_MATCH_WORD_RE = re.compile(r"[^\W_]+")
_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc\u2018`")


def normalize_text(text: str, form: str = "NFC") -> str:
    """Return ``text`` in Unicode normal form ``form`` with ``\\n`` line ends, no trailing blanks, stripped."""
    text = unicodedata.normalize(form, text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if " \n" in text or "\t\n" in text or "\f\n" in text or "\v\n" in text:  # else the regex cannot match
        text = _TRAILING_SPACE_RE.sub("\n", text)
    return text.strip()


def match_words(text: str) -> list[str]:
    """Split ``text`` into lower-case words with punctuation removed (NFKC, case-folded, apostrophes deleted)."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    return _MATCH_WORD_RE.findall(folded)


def word_ngrams(words: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """Yield the consecutive ``n``-word tuples of ``words`` (nothing when there are fewer than ``n`` words)."""
    return zip(*(words[i:] for i in range(n)))
