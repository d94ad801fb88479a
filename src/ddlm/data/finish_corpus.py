"""The last step of ``ddlm prepare``: close the streams, checksum every shard, cut and check the
split, count token frequencies per split, build the ``pad`` block index, write the metadata.

Every step here can run again after an interruption (the streams are restored to the committed
state first), and ``ddlm-data.json``, the completion marker, is written last and atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes, atomic_write_json
from .conventions import CONVENTIONS, blocks_per_document, split_name
from .shards import (
    FORMAT,
    FORMAT_VERSION,
    META,
    PAD_BLOCKS,
    PROGRESS,
    PreparedDataError,
    Stream,
    file_sha256,
    tokenizer_identity,
)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def _count(stream: Stream, start: int, end: int, vocab: int, piece: int = 1 << 24) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for a in range(start, end, piece):
        counts += np.bincount(stream.read(a, min(end, a + piece)), minlength=vocab)[:vocab]
    return counts


def _pad_table(folder: Path, stream: Stream, block_size: int, marks: set[int], piece: int = 1 << 20) -> dict:
    """Write ``pad_blocks.bin``, the (start, end) stream offsets of every pad block (a document's
    tokens, EOS included, in pieces of L - 1), in pieces of documents; returns the number of blocks
    before each document index in ``marks`` (and before the end)."""
    tmp, total, before = folder / (PAD_BLOCKS + ".partial"), 0, {}
    with open(tmp, "wb") as f:
        for a in range(0, stream.documents, piece):
            ends = stream.doc_ends(a, min(stream.documents, a + piece))
            starts = np.concatenate([[stream.doc_start(a)], ends[:-1]])
            counts = blocks_per_document(ends - starts, block_size)
            cum = np.cumsum(counts)
            for d in marks:
                if a <= d < a + len(ends):
                    before[d] = total + int(cum[d - a] - counts[d - a])
            first = np.repeat(cum - counts, counts)  # block index of each block's document's first block
            block_starts = np.repeat(starts, counts) + (np.arange(len(first)) - first) * (block_size - 1)
            pairs = np.stack([block_starts, np.minimum(np.repeat(ends, counts), block_starts + block_size - 1)], 1)
            f.write(pairs.astype("<i8").tobytes())
            total += int(cum[-1]) if len(cum) else 0
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / PAD_BLOCKS)
    before[stream.documents] = total
    return before


def finish(out, state, writers, tok, src, s, split_rule, options, block_size, shard_tokens, dtype) -> dict:
    """Close the streams, checksum and count, check the split, build the pad index, write the metadata."""
    vocab, streams = tok.vocab_size, {}
    for n, w in writers.items():
        names = w.finish()
        info = {"tokens": w.tokens, "documents": w.documents, "shards": [{"name": x} for x in names]}
        stream = Stream(out / n, info, dtype, shard_tokens)
        for entry in info["shards"]:
            entry["sha256"] = file_sha256(out / n / entry["name"])
        streams[n] = (info, stream)
    if split_rule["rule"] == "fraction":
        ranges = {"train": ("train", 0, streams["train"][0]["documents"]),
                  "val": ("val", 0, streams["val"][0]["documents"])}
    elif split_rule["rule"] == "last":
        d = streams["all"][0]["documents"]
        if split_rule["documents"] >= d:
            raise PreparedDataError(f"split last:{split_rule['documents']} needs more than {d} documents; the source "
                                    f"has {d}: remove {out} and prepare again with a smaller N")
        ranges = {"train": ("all", 0, d - split_rule["documents"]), "val": ("all", d - split_rule["documents"], d)}
    else:
        ranges = {"all": ("all", 0, streams["all"][0]["documents"])}
    splits = {}
    for name, (stream_name, d0, d1) in ranges.items():
        info, stream = streams[stream_name]
        a, b = stream.doc_start(d0), stream.doc_start(d1)
        if d1 == d0:
            raise PreparedDataError(f"split {split_name(split_rule)} leaves the {name} split empty "
                                    f"({info['documents']} documents in stream {stream_name!r}): remove {out} and "
                                    "prepare again with another --split (e.g. last:N)")
        splits[name] = {"stream": stream_name, "documents": [d0, d1], "tokens": b - a, "token_range": [a, b]}
    for name, rec in splits.items():
        stream = streams[rec["stream"]][1]
        _save_npy(out / "counts" / f"{name}.npy", _count(stream, *rec["token_range"], vocab))
    if s["convention"] == "pad":
        for n, (info, stream) in streams.items():
            mine = [rec for rec in splits.values() if rec["stream"] == n]
            before = _pad_table(out / n, stream, block_size, {d for rec in mine for d in rec["documents"]})
            info["pad_blocks"] = before[stream.documents]
            for rec in mine:
                rec["block_range"] = [before[rec["documents"][0]], before[rec["documents"][1]]]
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "tokenizer": tokenizer_identity(tok), "encoder": state.get("encoder"), "dtype": dtype.name,
        "pad_id": tok.eos_id, "shard_tokens": shard_tokens,
        "convention": {"name": s["convention"], "block_size": block_size, "description": CONVENTIONS[s["convention"]]},
        "split": {**split_rule, "name": split_name(split_rule)},
        "documents": sum(i["documents"] for i, _ in streams.values()),
        "tokens": sum(i["tokens"] for i, _ in streams.values()),
        "streams": {n: i for n, (i, _) in streams.items()}, "splits": splits,
        "source": {**src.describe(), "stat_fingerprint": state["stat_fingerprint"], "content_sha256": state["digest"],
                   "skipped_empty": state["skipped"], "characters": state["characters"], "preset": s["preset"],
                   "detokenizer": s["detokenizer"]},
        "options": options,
    }
    ident = {k: meta[k] for k in ("tokenizer", "dtype", "convention", "split", "streams", "splits")}
    meta["fingerprint"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    atomic_write_json(out / META, meta)
    (out / PROGRESS).unlink(missing_ok=True)
    return meta
