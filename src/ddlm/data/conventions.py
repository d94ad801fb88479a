"""Data conventions (how a token stream becomes blocks) and split rules, named and recorded.

Conventions, for blocks of L tokens over a stream of documents each followed by EOS:

- ``wrap`` (MDLM): the stream is cut into pieces of L - 2 tokens, each block is BOS + piece + EOS;
  documents run across blocks; the last partial piece is dropped.
- ``window`` (nanoGPT): blocks are L consecutive tokens of the stream. In training every epoch draws a
  random phase in [0, L) and takes the non-overlapping windows from there in a shuffled order (so an
  epoch covers the stream once, at a fresh offset); evaluation takes the windows at phase 0.
- ``pad`` (LM1B): one document per block, BOS + its tokens and EOS, the rest PAD (= EOS); a
  document longer than L - 1 tokens (EOS included) continues in the next block(s), L - 1 tokens each,
  so no text is dropped (MDLM truncates instead). Every position is scored, pads included.

Split rules (:func:`parse_split`): ``fraction:F`` puts a document in validation when the 64-bit
BLAKE2b hash of its UTF-8 text, read as a fraction of 2**64, is below F (stable under reordering and
appending); ``last:N`` takes the last N documents (MDLM's OpenWebText split: the last 100,000);
``none`` keeps every document in one split, ``all`` (zero-shot evaluation sets).

Training order without a per-token or per-block index in memory: the global sample position p =
step * B + j is epoch p // n and slot p % n; the block at a slot is a keyed Feistel permutation of
[0, n) (:func:`permute`, cycle-walking a 2**2h domain), keyed by (seed, epoch). Each rank takes its
rows of the global batch, so ranks see disjoint blocks that together cover an epoch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

CONVENTIONS = {
    "wrap": "BOS + L-2 tokens of the document stream + EOS per block (MDLM); the last partial block dropped",
    "window": "L consecutive tokens of the document stream per block (nanoGPT); training: a random phase per "
              "epoch, shuffled non-overlapping windows; evaluation: windows from the start",
    "pad": "one document per block: BOS + its tokens + EOS, padded with EOS (LM1B); longer documents continue "
           "in further blocks of L-1 tokens; pad positions are scored",
}
SPLIT_RULES = ("fraction", "last", "none")

_MASK64 = (1 << 64) - 1


def parse_split(text: str) -> dict:
    """``"fraction:0.005"``, ``"last:100000"`` or ``"none"`` as a split record.

    Raises:
        ValueError: anything else (the value and the accepted forms are named).
    """
    expected = "'fraction:F' with 0 < F < 1, 'last:N' with N >= 1, or 'none'"
    if not isinstance(text, str):
        raise ValueError(f"split is {text!r}, expected {expected}")
    rule, _, value = text.partition(":")
    try:
        if rule == "fraction" and 0.0 < float(value) < 1.0:
            return {"rule": "fraction", "fraction": float(value),
                    "description": f"validation: documents whose BLAKE2b-64 text hash < {float(value)} * 2^64"}
        if rule == "last" and value.isdigit() and int(value) >= 1:
            return {"rule": "last", "documents": int(value),
                    "description": f"validation: the last {int(value)} documents in source order"}
        if rule == "none" and not value:
            return {"rule": "none", "description": "one split 'all' holding every document (evaluation sets)"}
    except ValueError:
        pass
    raise ValueError(f"split is {text!r}, expected {expected}")


def split_name(split: dict) -> str:
    """The split rule as written on the command line, e.g. ``last:100000``."""
    if split["rule"] == "fraction":
        return f"fraction:{split['fraction']}"
    if split["rule"] == "last":
        return f"last:{split['documents']}"
    return "none"


def doc_hash_fraction(text: str) -> float:
    """The document's 64-bit BLAKE2b text hash (little-endian) as a fraction in [0, 1)."""
    return doc_hash(text) / 2.0**64


def doc_hash(text: str) -> int:
    """The document's 64-bit BLAKE2b hash of its UTF-8 text, little-endian."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def in_validation(text: str, fraction: float) -> bool:
    """The ``fraction`` rule: hash < int(fraction * 2**64) (exact integer comparison)."""
    return doc_hash(text) < int(fraction * 2**64)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_key(seed: int, epoch: int, salt: int = 0) -> int:
    """A 64-bit key for (seed, epoch, salt), mixed so that nearby inputs give unrelated keys."""
    v = np.array([(seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + salt * 0x8CB92BA72F3D8DD7) & _MASK64],
                 dtype=np.uint64)
    return int(_mix(_mix(v))[0])


def permute(slots: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of [0, n) evaluated at ``slots``: a balanced Feistel network on 2h bits
    (2**2h < 4n), cycle-walked back into [0, n). O(len(slots)) memory, nothing of size n."""
    slots = np.asarray(slots, dtype=np.int64)
    if n < 1 or (len(slots) and (slots.min() < 0 or slots.max() >= n)):
        raise ValueError(f"slots must lie in [0, {n}) with n >= 1")
    if n == 1:
        return np.zeros_like(slots)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(epoch_key(key & _MASK64, r, 1)) for r in range(rounds)]
    x = slots.astype(np.uint64)
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        left, right = x[todo] >> np.uint64(half), x[todo] & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


class BlockSet:
    """The blocks of one split of a prepared corpus under its convention, read on demand.

    Behaves like the (N, L) int64 tensor of blocks that in-memory corpora use: ``len``, ``shape``,
    ``dtype`` and ``blocks[indices]`` (a LongTensor of block indices, or an int) return int64 blocks;
    :meth:`batch` gives the training blocks of a step. Nothing of size N is held in memory.

    Args:
        stream: the split's ``shards.Stream``.
        docs: the split's document range ``(first, end)`` in the stream.
        convention: one of :data:`CONVENTIONS`.
        block_size: L.
        bos_id, eos_id: special ids (EOS also pads).
        pad_blocks: (``pad``) the split's range ``(first, end)`` in the stream's block table ``pad_blocks.bin``
            (int64 (start, end) token offsets per block, read on demand).
        describe: the record that names this data in results (corpus, convention, split, ...).
        counts: unigram counts of the split's tokens (int64, one per id), or None.
    """

    dtype = torch.long

    def __init__(self, stream, docs: tuple[int, int], convention: str, block_size: int, bos_id: int, eos_id: int,
                 pad_blocks: tuple[int, int] | None = None, describe: dict | None = None, counts=None):
        if convention not in CONVENTIONS:
            raise ValueError(f"convention is {convention!r}, expected one of {sorted(CONVENTIONS)}")
        self.stream, self.convention, self.block_size = stream, convention, int(block_size)
        self.bos_id, self.eos_id, self.describe, self.counts = bos_id, eos_id, dict(describe or {}), counts
        self.first_doc, self.end_doc = docs
        self.start, self.end = stream.doc_start(self.first_doc), stream.doc_start(self.end_doc)
        length = self.end - self.start
        if convention == "wrap":
            self.n = length // (self.block_size - 2)
        elif convention == "window":
            self.n = max(0, (length - (self.block_size - 1)) // self.block_size)
        else:
            if pad_blocks is None:
                raise ValueError("convention 'pad' needs the split's range in the stream's block table")
            self.block_offset, self.n = pad_blocks[0], pad_blocks[1] - pad_blocks[0]

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.block_size)

    def _block(self, i: int, phase: int = 0) -> np.ndarray:
        length, out = self.block_size, np.empty(self.block_size, dtype=np.int64)
        if self.convention == "wrap":
            a = self.start + i * (length - 2)
            out[0], out[1:-1], out[-1] = self.bos_id, self.stream.read(a, a + length - 2), self.eos_id
        elif self.convention == "window":
            a = self.start + phase + i * length
            out[:] = self.stream.read(a, a + length)
        else:
            s, e = self.stream.items("pad_blocks.bin", "<i8", 2 * (self.block_offset + i), 2).tolist()
            tokens = self.stream.read(s, e)
            out[0], out[1 : 1 + len(tokens)], out[1 + len(tokens) :] = self.bos_id, tokens, self.eos_id
        return out

    def rows(self, indices, phases=None) -> Tensor:
        """Blocks at ``indices`` (window phases per row, default 0) as an (n, L) LongTensor."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"block indices must lie in [0, {self.n}), got {int(idx.min())}..{int(idx.max())}")
        phases = np.zeros(len(idx), dtype=np.int64) if phases is None else phases
        out = np.empty((len(idx), self.block_size), dtype=np.int64)
        for r, (i, p) in enumerate(zip(idx.tolist(), phases.tolist(), strict=True)):
            out[r] = self._block(i, p)
        return torch.from_numpy(out)

    def __getitem__(self, indices) -> Tensor:
        if isinstance(indices, int):
            return self.rows([indices])[0]
        if isinstance(indices, Tensor):
            indices = indices.numpy()
        return self.rows(indices)

    def order(self, step: int, global_batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Block indices and window phases of a training step's global batch (see the module docstring)."""
        if self.n == 0:
            raise ValueError(f"the split has no block of {self.block_size} tokens under convention {self.convention!r}")
        pos = step * global_batch + np.arange(global_batch, dtype=np.int64)
        epochs, slots = pos // self.n, pos % self.n
        idx, phases = np.empty_like(slots), np.zeros_like(slots)
        for e in np.unique(epochs).tolist():
            sel = epochs == e
            idx[sel] = permute(slots[sel], self.n, epoch_key(seed, e))
            if self.convention == "window":
                phases[sel] = epoch_key(seed, e, 2) % self.block_size
        return idx, phases

    def batch(self, step: int, global_batch: int, seed: int) -> Tensor:
        """The (global_batch, L) training blocks of ``step``: a pure function of (seed, step)."""
        return self.rows(*self.order(step, global_batch, seed))

    def unigram_entropy(self) -> float:
        """Entropy (nats/token) of the split's token frequencies, from the counts made at preparation."""
        c = np.asarray(self.counts, dtype=np.float64)
        p = c[c > 0] / c.sum()
        return float(-(p * np.log(p)).sum())

    def __repr__(self) -> str:
        return f"BlockSet({self.n} blocks of {self.block_size}, convention {self.convention!r})"


def blocks_per_document(lengths: np.ndarray, block_size: int) -> np.ndarray:
    """(``pad``) blocks each document takes: ceil(len / (L - 1)), len counting its EOS."""
    return -(-np.asarray(lengths, dtype=np.int64) // (block_size - 1))


def min_block_size(convention: str) -> int:
    """Smallest L a convention accepts (wrap needs room for one token between BOS and EOS)."""
    return {"wrap": 3, "window": 1, "pad": 2}[convention]


def check_convention(convention: str, block_size: int) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention is {convention!r}, expected one of {sorted(CONVENTIONS)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < min_block_size(convention):
        raise ValueError(f"block_size is {block_size!r}, expected an integer >= {min_block_size(convention)} for "
                         f"convention {convention!r}")


def blocks_in(tokens: int, convention: str, block_size: int) -> int:
    """Blocks a contiguous stream of ``tokens`` gives under wrap or window (pad needs the documents)."""
    if convention == "wrap":
        return tokens // (block_size - 2)
    return max(0, (tokens - (block_size - 1)) // block_size)


__all__ = ["CONVENTIONS", "SPLIT_RULES", "BlockSet", "blocks_in", "blocks_per_document", "check_convention",
           "doc_hash", "doc_hash_fraction", "epoch_key", "in_validation", "parse_split", "permute", "split_name"]
