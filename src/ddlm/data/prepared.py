"""Opening a prepared corpus folder (``ddlm prepare``) for training and evaluation.

:func:`open_prepared` checks the folder at start, so that a problem is a named error before any
step rather than a crash mid-run: the completion marker (an interrupted preparation is named as
such), format version, the tokenizer file against its recorded hash, the dtype against the
vocabulary, every shard's size, the document index, and token ids at each shard's ends
(``shards.check_stream``). :meth:`PreparedCorpus.blocks` gives a split's blocks under the folder's
convention (``conventions.BlockSet``); :meth:`PreparedCorpus.check_tokenizer` refuses a tokenizer
other than the folder's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .conventions import BlockSet, check_convention
from .shards import (
    FORMAT,
    FORMAT_VERSION,
    META,
    PAD_BLOCKS,
    PROGRESS,
    TOKENIZER_FILE,
    PreparedDataError,
    Stream,
    check_stream,
    token_dtype,
    tokenizer_identity,
)


def is_prepared(path) -> bool:
    """Whether ``path`` is a prepared corpus folder (complete or not)."""
    p = Path(path)
    return p.is_dir() and ((p / META).exists() or (p / PROGRESS).exists())


class PreparedCorpus:
    """A checked prepared folder.

    Args:
        folder: the folder ``ddlm prepare --out`` wrote.

    Raises:
        PreparedDataError: see the module docstring.
    """

    def __init__(self, folder):
        self.folder = folder = Path(folder)
        if not (folder / META).is_file():
            if (folder / PROGRESS).exists():
                raise PreparedDataError(f"{folder} is an unfinished preparation (interrupted?): run the same "
                                        "ddlm prepare command again to finish it")
            raise PreparedDataError(f"{folder} is not a prepared corpus (no {META}); make one with ddlm prepare")
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError) as e:
            raise PreparedDataError(f"{folder / META} is unreadable: {e}") from None
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise PreparedDataError(f"{folder / META}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                                    f"expected {FORMAT!r} version {FORMAT_VERSION}")
        self.meta = meta
        from .tokenizers import load_tokenizer

        try:
            self.tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
        except (OSError, ValueError, ImportError) as e:
            raise PreparedDataError(f"{folder}: cannot load its tokenizer ({e})") from None
        ident, recorded = tokenizer_identity(self.tokenizer), meta["tokenizer"]
        if ident["sha256"] != recorded["sha256"]:
            raise PreparedDataError(f"{folder / TOKENIZER_FILE} has tokenizer hash {ident['sha256'][:16]}, but the "
                                    f"shards were made with {recorded['sha256'][:16]} ({recorded['name']}): the "
                                    "tokenizer file does not belong to these shards; prepare the folder again")
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        if self.dtype != token_dtype(self.tokenizer.vocab_size):
            want = token_dtype(self.tokenizer.vocab_size).name
            raise PreparedDataError(f"{folder / META} records dtype {meta['dtype']} for a vocabulary of "
                                    f"{self.tokenizer.vocab_size}, expected {want}")
        self.streams = {}
        for name, info in meta["streams"].items():
            check_stream(folder / name, info, self.dtype, meta["shard_tokens"], self.tokenizer.vocab_size)
            self.streams[name] = Stream(folder / name, info, self.dtype, meta["shard_tokens"])

    @property
    def convention(self) -> str:
        return self.meta["convention"]["name"]

    @property
    def eval_split(self) -> str:
        """The split evaluation reads: ``val``, or ``all`` for a folder prepared with ``--split none``."""
        return "val" if "val" in self.meta["splits"] else "all"

    def check_tokenizer(self, tokenizer, what: str = "data.tokenizer") -> None:
        """Refuse a tokenizer that is not the folder's (by hash).

        Raises:
            PreparedDataError: naming both tokenizers and their hashes.
        """
        mine, theirs = self.meta["tokenizer"], tokenizer_identity(tokenizer)
        if mine["sha256"] != theirs["sha256"]:
            raise PreparedDataError(
                f"{what} is {theirs['name']} (hash {theirs['sha256'][:16]}, vocabulary {theirs['vocab_size']}) but the "
                f"prepared corpus {self.folder} was tokenized with {mine['name']} (hash {mine['sha256'][:16]}, "
                f"vocabulary {mine['vocab_size']}): set {what} to match or prepare the corpus with that tokenizer")

    def describe(self, split: str, block_size: int) -> dict:
        """The record that names this data wherever a bound is reported."""
        rec, m = self.meta["splits"][split], self.meta
        return {"source": "prepared corpus", "corpus": str(self.folder), "convention": self.convention,
                "block_size": block_size, "split": m["split"]["name"], "split_part": split,
                "split_rule": m["split"]["description"], "documents": rec["documents"][1] - rec["documents"][0],
                "tokens": rec["tokens"], "tokenizer": m["tokenizer"]["name"],
                "tokenizer_sha256": m["tokenizer"]["sha256"], "content_sha256": m["source"]["content_sha256"],
                "preset": m["source"].get("preset"), "detokenizer": m["source"].get("detokenizer")}

    def blocks(self, split: str, block_size: int) -> BlockSet:
        """The blocks of ``split`` ("train", "val" or "all") at ``block_size`` under the folder's convention.

        Raises:
            PreparedDataError: no such split; a pad folder read at another block size; no whole block.
        """
        if split not in self.meta["splits"]:
            raise PreparedDataError(f"{self.folder} has no split {split!r} (splits: {sorted(self.meta['splits'])}; "
                                    f"rule {self.meta['split']['name']})")
        check_convention(self.convention, block_size)
        prepared = self.meta["convention"]["block_size"]
        if self.convention == "pad" and block_size != prepared:
            raise PreparedDataError(f"{self.folder} holds pad blocks of {prepared} tokens, but blocks of {block_size} "
                                    f"were asked for (data.block_size): set it to {prepared} or prepare again with "
                                    f"--block-size {block_size}")
        rec = self.meta["splits"][split]
        stream = self.streams[rec["stream"]]
        pad = tuple(rec["block_range"]) if self.convention == "pad" else None
        table = self.folder / rec["stream"] / PAD_BLOCKS
        if pad is not None and (not table.is_file() or table.stat().st_size != 16 * stream.info["pad_blocks"]):
            raise PreparedDataError(f"{table}: expected {stream.info['pad_blocks']} blocks of 16 bytes; prepare the "
                                    "folder again")
        counts = np.load(self.folder / "counts" / f"{split}.npy")
        tok = self.tokenizer
        out = BlockSet(stream, tuple(rec["documents"]), self.convention, block_size, tok.bos_id, tok.eos_id,
                       pad_blocks=pad, describe=self.describe(split, block_size), counts=counts)
        if len(out) == 0:
            raise PreparedDataError(f"split {split!r} of {self.folder} ({rec['tokens']} tokens) holds no whole "
                                    f"block of {block_size} tokens under convention {self.convention!r}")
        return out


def open_prepared(folder) -> PreparedCorpus:
    """A checked :class:`PreparedCorpus` (see the module docstring)."""
    return PreparedCorpus(folder)
