"""Prepared token corpora on disk: append-only streams of fixed-size token shards, and their checks.

A prepared folder (``ddlm prepare``, ``ddlm.data.prepare_corpus``) holds::

    ddlm-data.json          metadata, written last: the completion marker (see ``prepare_corpus``)
    tokenizer.json          the tokenizer's description (``Tokenizer.to_dict``)
    counts/<split>.npy      unigram counts of each split (int64, one per token id)
    <stream>/shard_000000.bin ...
                            the stream's tokens, raw little-endian uint16 (vocabulary <= 65,536) or
                            uint32, ``shard_tokens`` per file (the last one shorter); every document
                            is its tokens followed by EOS, documents follow each other and may cross
                            shard boundaries
    <stream>/documents.bin  int64 end offset (in the stream, EOS included) of every document
    <stream>/pad_blocks.bin (convention "pad") int64 (start, end) stream offsets of every block's tokens

While a preparation runs, the open shard and the document index are ``*.partial`` files that only
ever grow; the committed lengths are in ``.progress.json``. A shard gets its final name only once it
is full and fsynced, so no file under a final name is ever half written, and an interrupted run
restores the committed state (:meth:`StreamWriter.restore`) and continues to the same bytes.

Reading (:class:`Stream`) copies each asked range with ``pread``: nothing is loaded or mapped beyond it.
:func:`check_stream` catches truncated, resized or wrong-dtype shards and a bad document index at
start, with a :class:`PreparedDataError` naming the file, what was expected and what was found.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

#: the name of a prepared folder's metadata file
META = "ddlm-data.json"
#: the state of a preparation in progress (removed when it completes)
PROGRESS = ".progress.json"
FORMAT, FORMAT_VERSION = "ddlm-prepared-corpus", 1
TOKENIZER_FILE = "tokenizer.json"
DOCUMENTS = "documents.bin"
PAD_BLOCKS = "pad_blocks.bin"
#: tokens read at each end of every shard by the start-up check (ids must be below the vocabulary size)
SAMPLE_TOKENS = 4096


class PreparedDataError(ValueError):
    """A prepared corpus folder is incomplete, corrupt, or does not match what it is used with."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary <= 65,536), else uint32; little-endian."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(index: int) -> str:
    return f"shard_{index:06d}.bin"


def tokenizer_identity(tokenizer) -> dict:
    """What identifies a tokenizer: its description, vocabulary size, special ids and a SHA-256.

    The hash covers what decides the token ids: GPT-2's ``encoder.json`` and ``vocab.bpe`` bytes, a
    tokenizers JSON's canonical content, a character tokenizer's characters; plus BOS and EOS.
    """
    spec = tokenizer.to_dict()
    h = hashlib.sha256()
    if spec.get("type") == "gpt2":
        from .tokenizers import gpt2_files

        for f in gpt2_files():
            h.update(f.read_bytes())
    else:
        h.update(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode())
    h.update(f"bos={tokenizer.bos_id} eos={tokenizer.eos_id} vocab={tokenizer.vocab_size}".encode())
    name = spec["type"] if spec.get("type") in ("gpt2", "char") else "tokenizers-json"
    return {"name": name, "sha256": h.hexdigest(), "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id}


def _fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        _fsync(f)


class StreamWriter:
    """Appends documents to one stream folder; see the module docstring for the files.

    Args:
        folder: the stream's folder (created).
        dtype: token dtype (:func:`token_dtype`).
        shard_tokens: tokens per shard file.
        tokens: committed tokens to restore (0 for a new stream).
        documents: committed documents to restore.
    """

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int, tokens: int = 0, documents: int = 0):
        self.folder, self.dtype, self.shard_tokens = Path(folder), np.dtype(dtype), int(shard_tokens)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tokens, self.documents = int(tokens), int(documents)
        self.restore()
        self._shard = open(self._partial(self.tokens // self.shard_tokens), "ab")
        self._docs = open(self.folder / (DOCUMENTS + ".partial"), "ab")

    def _partial(self, index: int) -> Path:
        return self.folder / (shard_name(index) + ".partial")

    def restore(self) -> None:
        """Bring the files back to the committed ``tokens`` and ``documents``: full shards below the
        open one keep their final names, the open shard is a ``.partial`` cut to its committed length,
        and anything written after the commit (a later shard, a renamed open shard) is removed."""
        item, full, rest = self.dtype.itemsize, self.tokens // self.shard_tokens, self.tokens % self.shard_tokens
        for i in range(full):
            final, partial = self.folder / shard_name(i), self._partial(i)
            if not final.exists() and partial.exists():
                os.replace(partial, final)  # filled, then interrupted before its rename
            if not final.exists() or final.stat().st_size != self.shard_tokens * item:
                raise PreparedDataError(f"cannot resume: committed shard {final} is missing or has the wrong size")
        open_final, open_partial = self.folder / shard_name(full), self._partial(full)
        if open_final.exists():  # filled and renamed after the last commit
            os.replace(open_final, open_partial)
        if not open_partial.exists():
            open_partial.touch()
        if open_partial.stat().st_size < rest * item:
            raise PreparedDataError(f"cannot resume: {open_partial} is shorter than its committed {rest} tokens")
        _truncate(open_partial, rest * item)
        for p in self.folder.iterdir():  # shards beyond the commit
            name = p.name.removesuffix(".partial")
            if name.startswith("shard_") and name.endswith(".bin") and int(name[6:12]) > full:
                p.unlink()
        docs, final_docs = self.folder / (DOCUMENTS + ".partial"), self.folder / DOCUMENTS
        if final_docs.exists():
            os.replace(final_docs, docs)
        if not docs.exists():
            docs.touch()
        if docs.stat().st_size < self.documents * 8:
            raise PreparedDataError(f"cannot resume: {docs} is shorter than its committed {self.documents} documents")
        _truncate(docs, self.documents * 8)

    def append(self, tokens: np.ndarray, doc_lengths: np.ndarray) -> None:
        """Append whole documents: ``tokens`` (each document's ids and its EOS, back to back) and the
        length of each document in ``tokens``."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        ends = self.tokens + np.cumsum(doc_lengths, dtype=np.int64)
        if len(ends) and ends[-1] != self.tokens + len(tokens):
            raise ValueError(f"document lengths sum to {ends[-1] - self.tokens}, expected {len(tokens)} tokens")
        pos = 0
        while pos < len(tokens):
            room = self.shard_tokens - self.tokens % self.shard_tokens
            part = tokens[pos : pos + room]
            self._shard.write(part.tobytes())
            pos += len(part)
            self.tokens += len(part)
            if self.tokens % self.shard_tokens == 0:  # full: fsync, then give it its final name
                index = self.tokens // self.shard_tokens - 1
                _fsync(self._shard)
                self._shard.close()
                os.replace(self._partial(index), self.folder / shard_name(index))
                self._shard = open(self._partial(index + 1), "ab")
        self._docs.write(ends.astype("<i8").tobytes())
        self.documents += len(ends)

    def commit(self) -> dict:
        """Flush and fsync; the state to record (and to restore with)."""
        _fsync(self._shard)
        _fsync(self._docs)
        return {"tokens": self.tokens, "documents": self.documents}

    def finish(self) -> list[str]:
        """Close the stream: the open shard (if not empty) and the document index get their final
        names. Returns the shard file names. Idempotent on an already finished stream."""
        for f in (self._shard, self._docs):
            if not f.closed:
                _fsync(f)
                f.close()
        n = -(-self.tokens // self.shard_tokens)
        last = self._partial(self.tokens // self.shard_tokens)
        if self.tokens % self.shard_tokens:
            os.replace(last, self.folder / shard_name(n - 1))
        elif last.exists():
            last.unlink()
        os.replace(self.folder / (DOCUMENTS + ".partial"), self.folder / DOCUMENTS)
        from .._io import fsync_dir

        fsync_dir(self.folder)
        return [shard_name(i) for i in range(n)]


class Stream:
    """A finished stream, read with ``pread``: ``read(start, end)`` any token range, ``doc_start(d)``.

    Nothing is memory-mapped: every read copies just the asked range into a fresh array, so the
    process's memory does not grow with the part of the corpus it has touched (the kernel's page
    cache, which is not the process's, keeps the hot pages).

    Args:
        folder: the stream's folder.
        info: its metadata entry (``tokens``, ``documents``, ``shards``).
        dtype: token dtype.
        shard_tokens: tokens per shard (all shards but the last).
    """

    def __init__(self, folder: Path, info: dict, dtype: np.dtype, shard_tokens: int):
        self.folder, self.info, self.dtype, self.shard_tokens = Path(folder), info, np.dtype(dtype), shard_tokens
        self.tokens, self.documents = int(info["tokens"]), int(info["documents"])
        self._fds: dict[str, int] = {}

    def _pread(self, name: str, offset: int, nbytes: int) -> bytes:
        if name not in self._fds:
            self._fds[name] = os.open(self.folder / name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        if hasattr(os, "pread"):
            data = os.pread(self._fds[name], nbytes, offset)
        else:  # Windows: no pread
            os.lseek(self._fds[name], offset, os.SEEK_SET)
            data = os.read(self._fds[name], nbytes)
        if len(data) != nbytes:
            raise PreparedDataError(f"{self.folder / name}: read {len(data)} of {nbytes} bytes at offset {offset} "
                                    "(truncated since it was opened?)")
        return data

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens ``[start, end)`` of the stream, as a new array."""
        if not 0 <= start <= end <= self.tokens:
            raise IndexError(f"token range [{start}, {end}) outside the stream's [0, {self.tokens})")
        item, parts = self.dtype.itemsize, []
        pos = start
        while pos < end:
            i, off = divmod(pos, self.shard_tokens)
            take = min(end - pos, self.shard_tokens - off)
            parts.append(self._pread(self.info["shards"][i]["name"], off * item, take * item))
            pos += take
        return np.frombuffer(b"".join(parts), dtype=self.dtype)

    def items(self, name: str, dtype, first: int, count: int) -> np.ndarray:
        """``count`` items of ``dtype`` from item ``first`` of the stream's file ``name`` (e.g. the pad table)."""
        dtype = np.dtype(dtype)
        return np.frombuffer(self._pread(name, first * dtype.itemsize, count * dtype.itemsize), dtype=dtype)

    def doc_ends(self, first: int, end: int) -> np.ndarray:
        """End offsets of documents ``[first, end)`` (int64)."""
        if not 0 <= first <= end <= self.documents:
            raise IndexError(f"documents [{first}, {end}) outside the stream's [0, {self.documents})")
        return np.frombuffer(self._pread(DOCUMENTS, first * 8, (end - first) * 8), dtype="<i8")

    def doc_start(self, d: int) -> int:
        return 0 if d == 0 else int(self.doc_ends(d - 1, d)[0])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):  # file descriptors do not travel to other processes
        return {**self.__dict__, "_fds": {}}


def read_range(path: Path, dtype, first: int, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` from item ``first`` of a file (a fresh array)."""
    dtype = np.dtype(dtype)
    with open(path, "rb") as f:
        f.seek(first * dtype.itemsize)
        return np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)


def _size_error(path: Path, expected_tokens: int, dtype: np.dtype, size: int) -> PreparedDataError:
    want = expected_tokens * dtype.itemsize
    hint = ""
    for other in ("<u2", "<u4", "<i8"):
        o = np.dtype(other)
        if o != dtype and size == expected_tokens * o.itemsize:
            hint = f"; that is the size of {expected_tokens} tokens as {o.name}: written with another dtype?"
    kind = "truncated" if size < want else "larger than recorded"
    return PreparedDataError(f"shard {path} is {kind}: expected {want} bytes ({expected_tokens} tokens of "
                             f"{dtype.name}), found {size}{hint}; prepare the folder again")


def check_stream(folder: Path, info: dict, dtype: np.dtype, shard_tokens: int, vocab_size: int) -> None:
    """Start-up checks of one stream (sizes, document index, token ids at each shard's ends).

    Raises:
        PreparedDataError: a missing, truncated or resized file (with the dtype it would fit), a
            document index that does not end at the stream's length, or a token id outside the vocabulary.
    """
    folder = Path(folder)
    tokens, docs, shards = int(info["tokens"]), int(info["documents"]), info["shards"]
    if len(shards) != -(-tokens // shard_tokens):
        raise PreparedDataError(f"{folder}: {len(shards)} shards recorded for {tokens} tokens of {shard_tokens} "
                                "per shard; the metadata is inconsistent")
    for i, entry in enumerate(shards):
        path = folder / entry["name"]
        if not path.is_file():
            raise PreparedDataError(f"shard {path} is missing; prepare the folder again")
        count = min(shard_tokens, tokens - i * shard_tokens)
        if path.stat().st_size != count * dtype.itemsize:
            raise _size_error(path, count, dtype, path.stat().st_size)
        head = read_range(path, dtype, 0, min(count, SAMPLE_TOKENS))
        tail = read_range(path, dtype, max(0, count - SAMPLE_TOKENS), min(count, SAMPLE_TOKENS))
        for part in (head, tail):
            if len(part) and int(part.max()) >= vocab_size:
                raise PreparedDataError(f"shard {path} holds token id {int(part.max())}, not below the vocabulary "
                                        f"size {vocab_size}: wrong dtype ({dtype.name} recorded) or tokenizer?")
    index = folder / DOCUMENTS
    if not index.is_file() or index.stat().st_size != docs * 8:
        found = index.stat().st_size if index.is_file() else "no file"
        raise PreparedDataError(f"document index {index}: expected {docs * 8} bytes ({docs} documents), "
                                f"found {found}; prepare the folder again")
    if docs:
        ends = read_range(index, "<i8", 0, min(docs, SAMPLE_TOKENS))
        last = int(read_range(index, "<i8", docs - 1, 1)[0])
        if last != tokens or int(ends[0]) <= 0 or np.any(np.diff(ends) <= 0):
            raise PreparedDataError(f"document index {index} is corrupt: it must rise to the stream's {tokens} "
                                    f"tokens, ends at {last}")


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
