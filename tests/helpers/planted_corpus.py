"""A corpus with planted duplicates, for `data prepare` across tasks and hosts: documents of the
shipped corpus, exact copies of some, near copies (one word changed) of others, and documents the
quality filters drop, spread over four JSONL files."""
from __future__ import annotations

import json
from pathlib import Path


def write_planted_corpus(folder: Path, documents: int = 150) -> Path:
    from llmlaunch.data import default_corpus_path

    with open(default_corpus_path()) as corpus:
        texts = [json.loads(line)["text"] for line in corpus][:documents]
    out = []
    for i, text in enumerate(texts):
        out.append(text)
        if i % 7 == 0:
            out.append(text)                                   # an exact duplicate
        if i % 5 == 0:
            words = text.split()
            words[len(words) // 2] = "zebra"
            out.append(" ".join(words))                        # a near duplicate
        if i % 11 == 0:
            out.append("too short")                            # fails the word count
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(4):
        with open(folder / f"part{part}.jsonl", "w") as handle:
            for text in out[part::4]:
                handle.write(json.dumps({"text": text}) + "\n")
    return folder


def same_tree(a: Path, b: Path) -> list[str]:
    """Files that differ between two output directories (by name and bytes)."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return [n for n in names if not ((a / n).is_file() and (b / n).is_file()
                                      and (a / n).read_bytes() == (b / n).read_bytes())]
