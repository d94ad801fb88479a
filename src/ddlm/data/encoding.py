"""The worker side of ``ddlm prepare``: a chunk of source items in, its token arrays out.

Each worker process holds one :class:`ChunkEncoder` (built once by :func:`init_worker`); the main
process calls :func:`encode_chunk` through the pool (or directly with one worker). Everything a
chunk's result depends on is the chunk and the options, so results are the same for any number of
workers.

GPT-2's BPE is encoded with ``tiktoken`` when it is installed (about five times faster than
``tokenizers`` per core), built offline from the same ``encoder.json`` / ``vocab.bpe`` files; it
gives the same ids, which :func:`make_encoder` checks on a test text before using it (otherwise it
uses ``tokenizers``: the ids never depend on which one ran; the metadata records which did).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from functools import lru_cache
from itertools import chain

import numpy as np

from .detokenizers import detokenizer
from .sources import Chunk, ReadOptions, SourceError

#: GPT-2's pre-tokenisation pattern (the same in tokenizers' ByteLevel pre-tokenizer)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
#: a text exercising contractions, numbers, whitespace runs, line breaks, accents, CJK and emoji
CHECK_TEXT = ("It's 2024: they'll say \"héllo\"  world!\n\n\tTabs,   spaces... 1,234.5 ÷ 7 = ?? "
              "日本語のテキスト 🙂🙃 don't I'd we've you're\r\nend  ")


@lru_cache(maxsize=1)
def _tiktoken_gpt2():
    """tiktoken's Encoding for GPT-2 from the offline files, or None when tiktoken is not installed (built
    once per process; forked workers inherit it)."""
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        return None
    from .tokenizers import gpt2_files

    encoder, merges = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def make_encoder(tokenizer, use_tiktoken: bool = True):
    """(encode(list of texts) -> list of id lists, name of the encoder that runs) for a tokenizer."""
    if tokenizer.to_dict().get("type") == "gpt2" and use_tiktoken:
        enc = _tiktoken_gpt2()
        if enc is not None and enc.encode_ordinary(CHECK_TEXT) == tokenizer.encode(CHECK_TEXT):
            import tiktoken

            return (lambda texts: [enc.encode_ordinary(t) for t in texts]), f"tiktoken {tiktoken.__version__}"
    backend = getattr(tokenizer, "backend", None)
    if backend is not None:
        import tokenizers

        return (lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)],
                f"tokenizers {tokenizers.__version__}")
    return (lambda texts: [tokenizer.encode(t) for t in texts]), f"ddlm {type(tokenizer).__name__}"


class ChunkEncoder:
    """Decode, detokenize, split and tokenize chunks (see :func:`encode_chunk`).

    Args:
        tokenizer: a ddlm tokenizer (None for the character scan of a char tokenizer).
        options: the source's :class:`ReadOptions`.
        detok: detokenizer name or None.
        fraction: the split's validation fraction (rule ``fraction``), else None.
        dtype: token dtype.
    """

    def __init__(self, tokenizer, options: ReadOptions, detok: str | None, fraction: float | None, dtype):
        self.tokenizer, self.options, self.fraction, self.dtype = tokenizer, options, fraction, np.dtype(dtype)
        self.detok = detokenizer(detok)
        if tokenizer is not None:
            self.encode, self.encoder_name = make_encoder(tokenizer)
            self.eos = tokenizer.eos_id

    def texts(self, chunk) -> tuple[list[str], bytes, int]:
        """(document texts, SHA-256 of the chunk's raw content, number of items skipped as empty)."""
        h, docs, skipped = hashlib.sha256(), [], 0
        for _, offset, kind, _, data in chunk.segments:
            h.update(f"{kind}:{offset}:{len(data)};".encode())
            if kind == "str":
                for v in data:
                    raw = v.encode("utf-8")
                    h.update(len(raw).to_bytes(8, "little"))
                    h.update(raw)
            else:
                h.update(data)
        o = self.options
        for segment in chunk.segments:
            found = self._jsonl(segment) if segment[2] == "jsonl" else None
            if found is None:  # the general path (and the one that names any error)
                found = [decode_item(item, kind, where, o) for item, kind, where in chunk_items(
                    Chunk(segments=[segment]), o)]
            for text in found:
                if text is not None and o.strip:
                    text = text.strip()
                if text is None or (not o.keep_empty and not text.strip()):
                    skipped += 1
                    continue
                docs.append(self.detok(text) if self.detok else text)
        return docs, h.digest(), skipped

    def _jsonl(self, segment) -> list | None:
        """The field of every non-blank line of a JSONL block, or None if any line is not a JSON object
        with a string in the field (the general path then raises the named error)."""
        loads, fld = json.loads, self.options.field
        out = []
        try:
            for line in segment[4].split(b"\n"):
                if line.strip():
                    text = loads(line.decode("utf-8"))[fld]
                    if type(text) is not str:
                        return None
                    out.append(text)
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        return out

    def __call__(self, chunk) -> dict:
        docs, digest, skipped = self.texts(chunk)
        ids = self.encode(docs)
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        eos = (self.eos,)
        tokens = np.fromiter(chain.from_iterable(chain(x, eos) for x in ids), dtype=self.dtype,
                             count=int(lengths.sum()))
        val = None
        if self.fraction is not None:  # conventions.in_validation(d, fraction), inlined
            limit, blake = int(self.fraction * 2**64), hashlib.blake2b
            val = np.fromiter((int.from_bytes(blake(d.encode("utf-8"), digest_size=8).digest(), "little") < limit
                               for d in docs), dtype=bool, count=len(docs))
        return {"tokens": tokens, "lengths": lengths, "val": val, "digest": digest, "skipped": skipped,
                "chars": sum(len(d) for d in docs)}


# -- cutting documents out of a chunk (the workers' side of ddlm.data.sources) ---------------


def chunk_items(chunk: Chunk, options: ReadOptions) -> Iterator[tuple]:
    """(item, kind, where) of every document of a chunk: kind "text" (bytes), "json" (a raw JSON line)
    or "str"; ``where`` = (path, byte offset or "row N") for error messages."""
    for path, offset, kind, unit, data in chunk.segments:
        if kind == "str":
            for j, v in enumerate(data):
                yield v, "str", (path, f"row {offset + j}")
            continue
        if unit == "file":
            yield data, "text", (path, offset)
            continue
        lines = data.split(b"\n")
        if lines[-1] == b"":  # the block ends with a line break: no line after it
            lines.pop()
            ends_with_break = True
        else:
            ends_with_break = False
        at, para, para_at = offset, [], offset
        last = len(lines) - 1
        for j, line in enumerate(lines):
            here, at = at, at + len(line) + 1
            if kind == "jsonl":
                if line.strip():
                    yield line, "json", (path, here)
            elif unit == "line":
                if options.keep_line_end:
                    yield (line + b"\n" if j < last or ends_with_break else line), "text", (path, here)
                else:
                    yield line.removesuffix(b"\r"), "text", (path, here)
            elif line.strip():  # paragraph: runs of non-blank lines, the last line break dropped
                if not para:
                    para_at = here
                para.append(line)
            elif para:
                yield b"\n".join(para).removesuffix(b"\r"), "text", (path, para_at)
                para = []
        if para:
            yield b"\n".join(para).removesuffix(b"\r"), "text", (path, para_at)


def decode_item(item, kind: str, where, options: ReadOptions) -> str | None:
    """The document text of one chunk item, or None when it is skipped (empty, unless kept).

    Raises:
        SourceError: bytes that are not UTF-8, a JSON line that is not an object with a string field
            (file and byte offset named).
    """
    if kind == "str":
        text = item
    else:
        try:
            raw = item.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{where[0]}, byte {where[1] + e.start}: not UTF-8 text ({e.reason})") from None
        if kind == "json":
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SourceError(f"{where[0]}, byte {where[1]}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or options.field not in record:
                raise SourceError(f"{where[0]}, byte {where[1]}: no field {options.field!r}; pass --field")
            text = record[options.field]
            if not isinstance(text, str):
                raise SourceError(f"{where[0]}, byte {where[1]}: field {options.field!r} is a "
                                  f"{type(text).__name__}, not a string")
        else:
            text = raw
    if options.strip:
        text = text.strip()
    if not options.keep_empty and not text.strip():
        return None
    return text


_WORKER: ChunkEncoder | None = None


def init_worker(spec: dict | None, options: ReadOptions, detok, fraction, dtype) -> None:
    """Pool initializer: build this process's encoder (single-threaded tokenizers)."""
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from .tokenizers import tokenizer_from_dict

    tokenizer = tokenizer_from_dict(spec) if spec is not None else None
    _WORKER = ChunkEncoder(tokenizer, options, detok, fraction, dtype)


def encode_chunk(chunk) -> dict:
    """Tokens of a chunk in this worker: every kept document's ids followed by EOS, back to back;
    ``lengths`` per document; ``val`` (rule ``fraction``) whether each document is in validation;
    ``digest`` of the raw items (the source fingerprint chains these); ``skipped`` empty items."""
    return _WORKER(chunk)


def scan_chunk(chunk) -> tuple[str, bytes, int]:
    """(the sorted characters of a chunk's documents, digest, skipped): the character tokenizer's scan."""
    docs, digest, skipped = _WORKER.texts(chunk)
    return "".join(sorted(set().union(*map(set, docs)))) if docs else "", digest, skipped
