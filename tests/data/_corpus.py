"""Small synthetic corpora for the prepared-data tests (built in tmp_path; nothing is read from elsewhere)."""

from __future__ import annotations

import json
import random

WORDS = ("the quick brown fox jumps over lazy dog café naïve 日本語 hello world it's they'll 1,234.5 "
         "alpha beta gamma delta (paren) [bracket] \"quote\" end.").split()


def documents(n: int = 60, seed: int = 0, long_every: int = 7) -> list[str]:
    """n documents of 1-4 lines of words; every ``long_every``-th is long (crosses blocks and shards)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = rng.randint(1, 4)
        words = 200 if long_every and i % long_every == 3 else rng.randint(3, 25)
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(max(1, words // lines))) for _ in range(lines))
        docs.append(text)
    return docs


def write_paragraphs(path, docs) -> None:
    """One text file, documents separated by blank lines (the ``paragraph`` unit reads them back)."""
    path.write_text("\n\n\n".join(docs) + "\n", encoding="utf-8")


def write_jsonl(path, docs, field: str = "text") -> None:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
