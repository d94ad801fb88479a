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


def _pad_index(folder: Path, stream: Stream, block_size: int, piece: int = 1 << 22) -> int:
    """Write ``pad_blocks.bin`` (cumulative blocks per document) in pieces; returns the total."""
    tmp, total = folder / (PAD_BLOCKS + ".partial"), 0
    with open(tmp, "wb") as f:
        for a in range(0, stream.documents, piece):
            ends = np.asarray(stream.doc_ends[a : a + piece])
            starts = np.concatenate([[stream.doc_start(a)], ends[:-1]])
            cum = total + np.cumsum(blocks_per_document(ends - starts, block_size))
            f.write(cum.astype("<i8").tobytes())
            total = int(cum[-1]) if len(cum) else total
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / PAD_BLOCKS)
    return total


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
            info["pad_blocks"] = _pad_index(out / n, stream, block_size)
        for rec in splits.values():
            pad = np.memmap(out / rec["stream"] / PAD_BLOCKS, dtype="<i8", mode="r")
            d0, d1 = rec["documents"]
            rec["blocks"] = int(pad[d1 - 1]) - (int(pad[d0 - 1]) if d0 else 0)
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
