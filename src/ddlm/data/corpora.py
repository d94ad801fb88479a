"""Text corpora for language-model training: loading, splitting and packing into blocks.

The embedded default corpus is nine Shakespeare plays (public domain, about 1.15 MB of ASCII text)
shipped as package data under ``ddlm/data/corpus/`` (see ``SOURCES.md`` there). Any other corpus
is a text file, a folder of ``*.txt`` files, or a JSONL file (see :func:`load_corpus`).

Pipeline: documents -> :func:`split_documents` (train/val) -> ``tokenizer.encode`` -> :func:`pack`
(BOS + tokens + EOS per document, one stream cut into fixed blocks); ``ddlm.data.prepare`` runs it
for a run config.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor

from .._checks import check_tokens

#: name of the embedded corpus, as accepted by :func:`load_corpus`
DEFAULT_CORPUS_NAME = "default"


@lru_cache(maxsize=1)
def _default_corpus() -> tuple[str, ...]:
    folder = resources.files("ddlm.data").joinpath("corpus")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".txt")), key=lambda f: f.name)
    if not files:
        raise FileNotFoundError(f"the embedded corpus is missing from the installed package ({folder})")
    return tuple(f.read_text(encoding="utf-8") for f in files)


def default_corpus() -> list[str]:
    """The embedded corpus: one document per play, in file-name order."""
    return list(_default_corpus())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:  # the offset only: error messages never quote a file's content
        raise ValueError(f"{path} is not UTF-8 text (an invalid byte at offset {e.start})") from None


def encode_documents(tokenizer, documents: Sequence[str], source: str) -> list[list[int]]:
    """``tokenizer.encode`` of each document; a document the tokenizer cannot encode is reported by
    its index and the character's offset, line and column in it, never by quoting the text.

    Raises:
        ValueError: naming ``source``, the document and the position.
    """
    out = []
    for i, doc in enumerate(documents):
        try:
            out.append(tokenizer.encode(doc))
        except ValueError:
            known = set(getattr(tokenizer, "chars", ""))
            pos = next((p for p, c in enumerate(doc) if c not in known), None) if known else None
            where = "a character" if pos is None else (
                f"the character at offset {pos} (line {doc.count(chr(10), 0, pos) + 1}, column "
                f"{pos - doc.rfind(chr(10), 0, pos)})")
            raise ValueError(f"{source}, document {i}: {where} is not in the vocabulary of the run's tokenizer "
                             "(a corpus other than the one the tokenizer was made from, or one changed since)"
                             ) from None
    return out


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise ValueError(f"{path}, line {lineno}: no field {field!r}")
        if not isinstance(record[field], str):
            kind = type(record[field]).__name__
            raise ValueError(f"{path}, line {lineno}: field {field!r} is a {kind}, not a string")
        docs.append(record[field])
    return docs


def load_corpus(
    source: str | PathLike, *, split_on_blank_lines: bool = False, field: str = "text"
) -> list[str]:
    """Load a corpus as a list of documents (empty documents are dropped).

    Args:
        source: ``"default"`` (the embedded corpus); a folder (every ``*.txt`` below it, recursively,
            sorted by path, one document each); a ``.jsonl`` file (one JSON object per line, the
            document in ``field``; blank lines are ignored); or any other file, read as UTF-8 text.
        split_on_blank_lines: for a text file, one document per paragraph (blank-line separated)
            instead of one for the whole file.
        field: the JSONL field that holds the text.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no non-empty document; a file that is not UTF-8; a JSONL line that is not JSON
            or lacks ``field`` (file, line number and field are named).
    """
    if isinstance(source, str) and source == DEFAULT_CORPUS_NAME:
        return default_corpus()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus path not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"empty corpus: no *.txt file under folder {path}")
        docs = [_read_text(p) for p in files]
    elif path.suffix.lower() == ".jsonl":
        docs = _read_jsonl(path, field)
    else:
        text = _read_text(path)
        docs = [p.strip("\n") for p in re.split(r"\n(?:[ \t\r]*\n)+", text)] if split_on_blank_lines else [text]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"empty corpus: {path} holds no non-empty document")
    return docs


def unigram_entropy(ids: Tensor | Iterable[int] | Iterable[Iterable[int]], vocab_size: int) -> float:
    """Entropy (nats per token) of the empirical token frequencies of ``ids``.

    The baseline a model's per-token bound is compared with: a model that ignores context can do no
    better than this on the same text.

    Args:
        ids: token ids: a tensor of any shape, a list of ints, or a list of lists (documents).
        vocab_size: ids must lie in ``[0, vocab_size)``.

    Raises:
        ValueError: no token, or an id outside ``[0, vocab_size)``.
    """
    if not isinstance(ids, Tensor):
        ids = list(ids)
        if ids and isinstance(ids[0], (Sequence, Tensor)):  # documents
            ids = torch.cat([torch.as_tensor(d, dtype=torch.long).reshape(-1) for d in ids])
        else:
            ids = torch.tensor(ids, dtype=torch.long)
    ids = ids.reshape(-1).long()
    if ids.numel() == 0:
        raise ValueError("unigram_entropy needs at least one token")
    check_tokens("ids", ids, vocab_size)
    p = torch.bincount(ids, minlength=vocab_size).double() / ids.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def pack(documents_ids: Iterable[Sequence[int] | Tensor], block_size: int, bos_id: int, eos_id: int) -> Tensor:
    """Wrap each document as BOS + tokens + EOS, concatenate, and cut into consecutive blocks.

    Documents run across block boundaries; the last partial block is dropped (so the result can
    have zero rows when the stream is shorter than one block).

    Args:
        documents_ids: token ids of each document.
        block_size: tokens per block, at least 2.
        bos_id: id put before each document.
        eos_id: id put after each document.

    Returns:
        LongTensor of shape ``(N, block_size)``, ``N = len(stream) // block_size``.

    Raises:
        ValueError: ``block_size < 2``.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    stream: list[int] = []
    for doc in documents_ids:
        stream.append(bos_id)
        stream.extend(doc.tolist() if isinstance(doc, Tensor) else doc)
        stream.append(eos_id)
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


def split_documents(
    documents: Sequence[str], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split (depends only on the documents, the fraction and the seed).

    With enough documents (``len(documents) * val_fraction >= 1``), ``round(len * val_fraction)``
    whole documents, drawn with ``random.Random(seed)``, go to validation. With fewer (one play, or
    the nine plays of the default corpus at 5%), every document is cut inside its text instead: its
    last ``val_fraction`` of characters (at least one) goes to validation and the rest to training,
    so validation is never empty. Both lists keep the original document order.

    Raises:
        ValueError: ``val_fraction`` outside ``(0, 0.5]``; no document; no document of 2+ characters
            to cut.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must lie in (0, 0.5], got {val_fraction}")
    docs = list(documents)
    if not docs:
        raise ValueError("cannot split an empty corpus")
    if len(docs) * val_fraction >= 1:
        n_val = round(len(docs) * val_fraction)
        val_idx = set(random.Random(seed).sample(range(len(docs)), n_val))
        return ([d for i, d in enumerate(docs) if i not in val_idx], [d for i, d in enumerate(docs) if i in val_idx])
    train, val = [], []
    for d in docs:
        if len(d) < 2:
            train.append(d)
            continue
        cut = len(d) - max(1, math.floor(len(d) * val_fraction))
        train.append(d[:cut])
        val.append(d[cut:])
    if not val:
        raise ValueError("corpus too small to split: no document has 2 or more characters")
    return train, val
