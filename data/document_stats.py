"""Views and statistics of one normalised document, as the quality filters measure it.

:class:`Doc` computes each view (words, content words, lines, paragraphs, word counts, n-gram
repetition fractions) once, on first use, and the filters of :mod:`llmlaunch.data.quality` share
them.  ``top_ngram_chars_fraction`` and ``duplicate_ngram_chars_fraction`` are the one-document
reference of what :func:`llmlaunch.data.ngrams.ngram_fractions` computes for a batch.

Definitions (the papers leave them informal):

* *words*: whitespace-separated tokens of the normalised text.
* *content words*: words with ``EDGE_PUNCTUATION`` (ASCII punctuation and common typographic
  marks) stripped from both ends, dropping those that become empty; the word count, mean word
  length and symbol ratio use these.
* a word "has an alphabetic character" if it contains a Unicode letter.
* *lines*: non-blank lines; *paragraphs*: blocks separated by blank lines.
* n-gram repetition is measured over words, in characters of the words involved (Gopher Table A1).
"""

from __future__ import annotations

import itertools
import operator
import re
import string
from collections import Counter
from operator import itemgetter
from typing import Any, Callable, Sequence

# Stripped from the ends of words before measuring them: ASCII punctuation plus common typographic marks.
EDGE_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026\u2013\u2014\u00b7\u2022\u00bf\u00a1"
_WORD_WITH_LETTER_RE = re.compile(r"\S*?[^\W\d_]\S*")


class _lazy:
    """``functools.cached_property`` without the lock that Python < 3.12 takes on every first access."""

    def __init__(self, compute: Callable[[Any], Any]) -> None:
        self.compute = compute
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


class Doc:
    """Views of one normalised document shared by the filters, each computed once on first use.

    ``first_failing_filters`` fills the n-gram fractions of a whole batch at once
    (:mod:`llmlaunch.data.ngrams`); a lone ``Doc`` computes them with the functions below.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.top_ngram: dict[int, float] = {}  # n -> top_ngram_chars_fraction(words, n)
        self.duplicate_ngram: dict[int, float] = {}  # n -> duplicate_ngram_chars_fraction(words, n)

    @_lazy
    def words(self) -> list[str]:
        """Whitespace-separated tokens."""
        return self.text.split()

    @_lazy
    def content_words(self) -> list[str]:
        """Words with edge punctuation stripped, empty ones dropped."""
        return list(filter(None, map(str.strip, self.words, itertools.repeat(EDGE_PUNCTUATION))))

    @_lazy
    def _ascii(self) -> _AsciiCounts | None:
        """Word counts taken from the bytes of an ASCII document (None for other text)."""
        return _AsciiCounts(self.text) if self.text.isascii() else None

    @_lazy
    def content_word_count(self) -> int:
        """``len(content_words)``."""
        return self._ascii.content_words if self._ascii else len(self.content_words)

    @_lazy
    def content_word_chars(self) -> int:
        """Characters in ``content_words``."""
        return self._ascii.content_chars if self._ascii else sum(map(len, self.content_words))

    @_lazy
    def alphabetic_word_count(self) -> int:
        """Words containing a letter (``[^\\W\\d_]``: a Unicode letter, not a digit or underscore)."""
        return self._ascii.alphabetic_words if self._ascii else len(_WORD_WITH_LETTER_RE.findall(self.text))

    @_lazy
    def lines(self) -> list[str]:
        """Non-blank lines, stripped."""
        return list(filter(None, map(str.strip, self.text.split("\n"))))

    @_lazy
    def paragraphs(self) -> list[str]:
        """Blank-line separated blocks, stripped."""
        return _paragraphs(self.text)

    def top_ngram_fraction(self, n: int) -> float:
        """``top_ngram_chars_fraction(words, n)``."""
        if n not in self.top_ngram:
            self.top_ngram[n] = top_ngram_chars_fraction(self.words, n)
        return self.top_ngram[n]

    def duplicate_ngram_fraction(self, n: int) -> float:
        """``duplicate_ngram_chars_fraction(words, n)``."""
        if n not in self.duplicate_ngram:
            self.duplicate_ngram[n] = duplicate_ngram_chars_fraction(self.words, n)
        return self.duplicate_ngram[n]


# ASCII documents (nearly all English web text) get their word counts from a few C-speed passes
# over the bytes (translate + count / one regex) instead of string operations per word.  The
# results are the same integers as the definitions above: tests/test_data_quality.py compares them
# on random text.  In ASCII, EDGE_PUNCTUATION is string.punctuation and letters are A-Z, a-z.
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.split() splits at
_ASCII_PUNCTUATION = string.punctuation.encode()
_ASCII_NON_LETTERS = bytes(c for c in range(128) if not chr(c).isspace() and not chr(c).isalpha())
_MARK_WORDS = bytes(32 if c in _ASCII_SPACE else 97 for c in range(256))  # space -> " ", rest -> "a"
_MARK_EDGES = bytes(32 if c in _ASCII_SPACE else 112 if c in _ASCII_PUNCTUATION else 97 for c in range(256))  # "p": punct
_EDGE_RUN_RE = re.compile(rb"p(?:(?<= p)p*|p*(?= ))")  # punctuation run at the start or end of a word


def _count_nonempty_words(marked: bytes) -> int:
    """Words (runs of ``a``) in text whose characters were mapped to ``a`` / `` `` (deleted ones gone)."""
    return marked.count(b" a") + marked.startswith(b"a")


class _AsciiCounts:
    """``content_word_count``, ``content_word_chars`` and ``alphabetic_word_count`` of an ASCII text."""

    __slots__ = ("content_words", "content_chars", "alphabetic_words")

    def __init__(self, text: str) -> None:
        data = text.encode("ascii")
        # a word is a content word if something is left once its punctuation is deleted
        self.content_words = _count_nonempty_words(data.translate(_MARK_WORDS, _ASCII_PUNCTUATION))
        # ... and keeps its characters from its first to its last non-punctuation character
        edges = _EDGE_RUN_RE.findall(b" " + data.translate(_MARK_EDGES) + b" ")
        self.content_chars = len(data.translate(None, _ASCII_SPACE)) - sum(map(len, edges))
        self.alphabetic_words = _count_nonempty_words(data.translate(_MARK_WORDS, _ASCII_NON_LETTERS))


def _paragraphs(text: str) -> list[str]:
    """Blocks of ``text`` separated by blank lines."""
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    if current:
        blocks.append("\n".join(current).strip())
    return blocks


def duplicate_fractions(items: Sequence[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier item, fraction of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / len(items), (dup_chars / total_chars if total_chars else 0.0)


def top_ngram_chars_fraction(words: Sequence[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram (counted with multiplicity) / all word characters.

    Gopher Table A1 ("fraction of characters in the most common n-gram"); 0 if no n-gram repeats.
    """
    if len(words) < n:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = max(counts.items(), key=itemgetter(1))  # first-seen among equally frequent n-grams
    if count < 2:
        return 0.0
    total_chars = sum(map(len, words))
    return count * sum(map(len, gram)) / total_chars if total_chars else 0.0


def duplicate_ngram_chars_fraction(words: Sequence[str], n: int) -> float:
    """Characters of words inside repeated word n-grams / all word characters (Gopher Table A1).

    An n-gram occurrence is a repeat if the same n-gram occurred at an earlier position; the n
    words of every repeat are marked, and each marked word's characters are counted once.
    """
    count = len(words) - n + 1
    if count < 2:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n))))
    # gram -> index of its first occurrence (later duplicates are overwritten by earlier ones)
    first_index = dict(zip(reversed(grams), range(count - 1, -1, -1)))
    if len(first_index) == count:
        return 0.0
    repeats = itertools.compress(range(count), map(operator.ne, map(first_index.__getitem__, grams), range(count)))
    covered = bytearray(len(words))
    marks = b"\x01" * n
    for start in repeats:
        covered[start : start + n] = marks
    total_chars = sum(map(len, words))
    dup_chars = sum(itertools.compress(map(len, words), covered))
    return dup_chars / total_chars if total_chars else 0.0
