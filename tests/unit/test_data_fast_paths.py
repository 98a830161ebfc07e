"""The fast paths of ``data prepare`` compute exactly what the plain definitions compute.

* ``document_stats.Doc`` counts ASCII documents' words from their bytes; ``ngrams.ngram_fractions``
  computes the Gopher repetition fractions for a batch with numpy; ``first_failing_filters`` runs
  the filters on a batch.  Each is compared with the one-document definitions on random text.
* ``tokenizer.encode_documents`` encodes ASCII text without the (no-op) Unicode normaliser.

tests/test_data_golden.py pins the bytes of whole runs against the pre-optimisation output.
"""

import itertools
import json
import random
import string
import sys

import pytest

from llmlaunch.data import default_corpus_path
from llmlaunch.data import document_stats as docstats
from llmlaunch.data import quality as q
from llmlaunch.data.ngrams import ngram_fractions

# characters chosen to hit every branch: every ASCII whitespace kind str.split() knows, runs of
# edge punctuation, digits, underscores, control characters, and some non-ASCII text
ASCII_PIECES = ["the", "and", "of", "cat", "a", "Z", "x1", "42", "3.5", "e.g.", "don't", "_", "__init__", "#", "...",
                "--", "-", "(", ")", '"', "'", "!?", "(see)", "$5,", "a.b.c", "\x00", "\x07", "\x7f", "**bold**", "-x-"]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", " \n "]
UNICODE_PIECES = ["caf\u00e9", "\u201cquoted\u201d", "\u2026", "\u2014", "\u00b2", "\u0663", "w\u0131th", "\U0001f600",
                  "\u00a0", "\u2003", "\u00bfqu\u00e9?", "\u6f22\u5b57"]


def random_text(rng, pieces, length):
    return "".join(rng.choice(pieces) + rng.choice(SEPARATORS) for _ in range(length)).strip()


def reference_counts(text):
    """The definitions: content words by stripping each word, letters by regex."""
    content = [w.strip(docstats.EDGE_PUNCTUATION) for w in text.split()]
    content = [w for w in content if w]
    return len(content), sum(map(len, content)), len(docstats._WORD_WITH_LETTER_RE.findall(text))


def test_ascii_word_counts_equal_the_definitions():
    rng = random.Random(1)
    checked_ascii = 0
    for trial in range(3000):
        pieces = ASCII_PIECES + (UNICODE_PIECES if trial % 4 == 0 else [])
        text = random_text(rng, pieces, rng.choice([1, 2, 5, 30, 120]))
        doc = docstats.Doc(text)
        assert (doc.content_word_count, doc.content_word_chars, doc.alphabetic_word_count) == reference_counts(text), text
        checked_ascii += text.isascii()
    assert checked_ascii > 2000
    for text in ["", ".", "...", "a", "-a-", "'a'", "x" * 50, " ".join(string.punctuation)]:
        doc = docstats.Doc(text)
        assert (doc.content_word_count, doc.content_word_chars, doc.alphabetic_word_count) == reference_counts(text)


def test_ngram_fractions_equal_the_one_document_definitions():
    rng = random.Random(2)
    vocabulary = "a b c d e f g h the of and".split()
    word_lists = [[], ["only"], ["x", "x"], ["a", "b"] * 3]
    for _ in range(400):
        words = [rng.choice(vocabulary[: rng.randint(2, len(vocabulary))]) for _ in range(rng.randint(0, 60))]
        if words and rng.random() < 0.5:  # plant a repeated phrase
            phrase = words[: rng.randint(1, 12)]
            for _ in range(rng.randint(1, 4)):
                at = rng.randint(0, len(words))
                words[at:at] = phrase
        word_lists.append(words)
    ns = list(range(1, 13))
    for start in range(0, len(word_lists), 37):  # batches that put documents side by side
        batch = word_lists[start : start + 37]
        top, duplicate = ngram_fractions(batch, ns, ns)
        for index, words in enumerate(batch):
            for n in ns:
                assert top[n][index] == docstats.top_ngram_chars_fraction(words, n), (words, n)
                assert duplicate[n][index] == docstats.duplicate_ngram_chars_fraction(words, n), (words, n)
    # the same word list in neighbouring documents never counts as a repeat across them
    top, duplicate = ngram_fractions([["a", "b", "c"]] * 3, [3], [3])
    assert top[3] == [0.0, 0.0, 0.0] and duplicate[3] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        ngram_fractions([["a"]], [0], [])


def test_batch_filters_equal_one_document_filters():
    rng = random.Random(3)
    with open(default_corpus_path(), encoding="utf-8") as handle:
        prose = " ".join(json.loads(line)["text"] for line in itertools.islice(handle, 40)).split()
    texts = []
    for trial in range(500):
        if trial % 2:
            words = [rng.choice(prose) for _ in range(rng.randint(20, 150))]
            phrase = words[: rng.randint(2, 9)]
            words += phrase * rng.randint(0, 8)
            texts.append(" ".join(words))
        else:
            texts.append(random_text(rng, ASCII_PIECES + UNICODE_PIECES + prose[:300], rng.randint(5, 150)))
    variants = [
        q.QualityThresholds(),
        q.QualityThresholds(min_words=3, min_stop_words=1, max_top_ngram_chars_fraction={1: 0.3, 2: 0.3, 6: 0.05},
                            max_duplicate_ngram_chars_fraction={2: 0.4, 3: 0.3, 11: 0.02}),
        q.QualityThresholds(disabled=("top_ngram", "word_count")),
    ]
    for thresholds in variants:
        assert q.first_failing_filters(texts, thresholds) == [q.first_failing_filter(t, thresholds) for t in texts]
        # ... and first_failing_filter itself matches a Doc whose n-gram fractions come from the definitions
        for text in texts[:60]:
            doc = docstats.Doc(text)
            expected = next((name for name, passes in q.FILTERS.items()
                             if name not in thresholds.disabled and not passes(doc, thresholds)), None)
            assert q.first_failing_filter(text, thresholds) == expected


def test_ascii_documents_encode_to_the_same_ids_without_the_normaliser(tmp_path):
    import numpy as np
    from tokenizers import Tokenizer, normalizers

    from llmlaunch.data.tokenizer import ascii_twin, encode_documents, train_bpe

    rng = random.Random(4)
    texts = [random_text(rng, ASCII_PIECES + UNICODE_PIECES + ["<|endoftext|>", "Cafe\u0301"], rng.randint(0, 40))
             for _ in range(300)]
    tokenizer = train_bpe(texts, 400)
    twin = ascii_twin(tokenizer)
    assert twin is not None and twin.normalizer is None and isinstance(tokenizer.normalizer, normalizers.NFC)
    plain = encode_documents(tokenizer, texts, 0)
    fast = encode_documents(tokenizer, texts, 0, ascii_tokenizer=twin)
    only_ascii = [t for t in texts if t.isascii()]
    assert all(np.array_equal(a, b) for a, b in zip(plain, fast))
    assert all(np.array_equal(a, b) for a, b in zip(encode_documents(tokenizer, only_ascii, 0),
                                                       encode_documents(tokenizer, only_ascii, 0, ascii_tokenizer=twin)))
    tokens, lengths = fast
    assert (tokens[np.cumsum(lengths) - 1] == 0).all() and (tokens == 0).sum() == len(texts)
    empty_tokens, empty_lengths = encode_documents(tokenizer, [], 0, ascii_tokenizer=twin)
    assert empty_tokens.size == 0 and empty_lengths.size == 0
    lowercasing = Tokenizer.from_str(tokenizer.to_str())
    lowercasing.normalizer = normalizers.Lowercase()
    assert ascii_twin(lowercasing) is None  # a normaliser that changes ASCII text is kept


def test_manifest_datasketch_version_without_importing_it():
    import subprocess

    script = (
        "import sys\n"
        "from llmlaunch.data.manifest import _datasketch_version\n"
        "version = _datasketch_version()\n"
        "assert 'datasketch' not in sys.modules\n"
        "import datasketch\n"
        "assert version == datasketch.__version__, (version, datasketch.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
