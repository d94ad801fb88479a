"""The data of a run config: its tokenizer and its packed training and validation blocks.

Training calls :func:`prepare_data` once; evaluation calls it again with the run's saved tokenizer to
rebuild the very same validation split from the config (``ddlm eval``, the MAUVE reference).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..config import TrainConfig
from .conventions import BlockSet
from .corpora import encode_documents, load_corpus, pack, split_documents, unigram_entropy
from .prepared import is_prepared, open_prepared
from .tokenizers import BPETokenizer, CharTokenizer, bpe_spec_size, train_bpe


def build_tokenizer(spec: str, text: str, training_texts: list[str] | None = None):
    """"char" (the characters of ``text``, the whole corpus), "gpt2" (offline GPT-2 BPE), "bpe:N" (a
    byte-level BPE of N tokens trained on ``training_texts``, default ``[text]``; ``train_bpe``) or a
    tokenizers JSON file."""
    if spec == "char":
        return CharTokenizer.from_text(text)
    if spec == "gpt2":
        return BPETokenizer.gpt2()
    size = bpe_spec_size(spec)
    if size is not None:
        return train_bpe([text] if training_texts is None else training_texts, size)
    if not Path(spec).is_file():
        raise ValueError(f"config key 'data.tokenizer' is {spec!r}, expected 'char', 'gpt2', 'bpe:N' or an existing "
                         "tokenizers JSON file")
    return BPETokenizer.from_file(spec)


def sudoku_blocks(num: int, seed: int, tokenizer) -> Tensor:
    """Solved Sudoku grids as blocks of 81 tokens (``ddlm.data.sudoku.grid_tokens``)."""
    from . import sudoku

    _, solutions = sudoku.generate(num, clues=81, seed=seed)
    return sudoku.grid_tokens(solutions, tokenizer)[0]


def prepare_data(cfg: TrainConfig, tokenizer=None) -> tuple[object, Tensor, Tensor]:
    """Tokenizer (built from the corpus unless given: a trained BPE sees the training split only),
    packed train and validation blocks.

    Corpus "sudoku": solved grids from ``ddlm.data.sudoku`` (training learns the law of solutions;
    puzzles are solved by sampling with the clues as a prompt), training and validation grids from
    the seeds of ``sudoku.SEED_OFFSETS``. A prepared folder (``ddlm prepare``): its train and
    validation splits as ``BlockSet`` objects that read blocks from its shards on demand (:func:`prepared_data`).
    """
    if is_prepared(cfg.data.corpus):
        return prepared_data(cfg, tokenizer)
    if cfg.data.corpus == "sudoku":
        from .sudoku import SEED_OFFSETS

        tokenizer = tokenizer or CharTokenizer.from_text("123456789")
        n_val = max(10, round(cfg.data.num_puzzles * cfg.data.val_fraction))
        return (tokenizer, sudoku_blocks(cfg.data.num_puzzles, cfg.seed + SEED_OFFSETS["train"], tokenizer),
                sudoku_blocks(n_val, cfg.seed + SEED_OFFSETS["validation"], tokenizer))
    docs = load_corpus(cfg.data.corpus)
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction, seed=cfg.seed)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.data.tokenizer, "".join(train_docs + val_docs), train_docs)
    bs = cfg.data.block_size
    where = f"corpus {cfg.data.corpus!r}"
    train = pack(encode_documents(tokenizer, train_docs, f"{where} (training split)"), bs, tokenizer.bos_id,
                 tokenizer.eos_id)
    val = pack(encode_documents(tokenizer, val_docs, f"{where} (validation split)"), bs, tokenizer.bos_id,
               tokenizer.eos_id)
    if train.shape[0] == 0 or val.shape[0] == 0:
        raise ValueError(f"corpus {cfg.data.corpus!r} is too small for block_size {bs}: "
                         f"{train.shape[0]} training and {val.shape[0]} validation blocks")
    return tokenizer, train, val


# -- prepared corpus folders (``ddlm prepare``) ---------------------------------------------------------------


def prepared_data(cfg: TrainConfig, tokenizer=None) -> tuple[object, BlockSet, BlockSet]:
    """The tokenizer and the train / validation blocks of a prepared folder ``cfg.data.corpus``.

    The config's ``data.tokenizer`` (or the given tokenizer, e.g. a checkpoint's) must be the folder's
    ("char" accepts the folder's character tokenizer); the split is the folder's, ``data.val_fraction``
    is not used. Nothing of the corpus's size is loaded.

    Raises:
        PreparedDataError: an incomplete or corrupt folder, another tokenizer, a pad folder at another
            block size, a split without a whole block (all named).
    """
    corpus = open_prepared(cfg.data.corpus)
    if tokenizer is None:
        own = corpus.tokenizer
        if cfg.data.tokenizer != "char":
            tokenizer = build_tokenizer(cfg.data.tokenizer, "")
        elif isinstance(own, CharTokenizer):  # character level: the folder's characters
            tokenizer = own
        else:
            from .shards import PreparedDataError

            raise PreparedDataError(f"data.tokenizer is 'char' but the prepared corpus {cfg.data.corpus} was "
                                    f"tokenized with {corpus.meta['tokenizer']['name']}: set data.tokenizer to match "
                                    "or prepare the corpus with --tokenizer char")
    corpus.check_tokenizer(tokenizer, "data.tokenizer")
    if "train" not in corpus.meta["splits"]:
        from .shards import PreparedDataError

        raise PreparedDataError(f"prepared corpus {cfg.data.corpus} has no train/validation split (prepared with "
                                f"--split {corpus.meta['split']['name']}): train on a folder prepared with "
                                "--split fraction:F or last:N")
    bs = cfg.data.block_size
    return tokenizer, corpus.blocks("train", bs), corpus.blocks("val", bs)


def describe_data(cfg: TrainConfig, val_blocks) -> dict:
    """The record that names the data a run's validation bound is measured on: corpus, convention
    (``packed`` for in-memory corpora: documents as BOS + text + EOS cut into blocks; a prepared
    folder's ``wrap``, ``window`` or ``pad``), block size and split."""
    if isinstance(val_blocks, BlockSet):
        return {**val_blocks.describe, "source": "validation split"}
    sudoku = cfg.data.corpus == "sudoku"
    split = "sudoku validation seeds" if sudoku else f"val_fraction:{cfg.data.val_fraction} (seed {cfg.seed})"
    return {"source": "validation split", "corpus": cfg.data.corpus, "val_fraction": cfg.data.val_fraction,
            "split_seed": cfg.seed, "convention": "sudoku grids" if sudoku else "packed",
            "block_size": cfg.data.block_size, "split": split}


def blocks_entropy(blocks, vocab_size: int) -> float:
    """Unigram entropy (nats/token) of training blocks: from the prepared counts for a ``BlockSet``,
    else from the tokens of the (N, L) tensor."""
    if isinstance(blocks, BlockSet):
        return blocks.unigram_entropy()
    return unigram_entropy(blocks.flatten().tolist(), vocab_size)


def data_state(cfg: TrainConfig) -> dict:
    """What a checkpoint records about its data besides the step: a prepared folder's fingerprint
    (the order of blocks is a function of the seed, the step and the folder)."""
    if not is_prepared(cfg.data.corpus):
        return {}
    import json

    from .shards import META

    return {"corpus_fingerprint": json.loads((Path(cfg.data.corpus) / META).read_text())["fingerprint"]}


def check_data_state(cfg: TrainConfig, saved: dict | None, path) -> None:
    """Refuse to resume on a prepared folder whose content differs from the checkpoint's.

    Raises:
        ValueError: the fingerprints differ (both named).
    """
    now, before = data_state(cfg).get("corpus_fingerprint"), (saved or {}).get("corpus_fingerprint")
    if before is not None and now != before:
        raise ValueError(f"cannot resume from checkpoint {str(path)!r}: data.corpus {cfg.data.corpus!r} has "
                         f"fingerprint {str(now)[:16]} now but {before[:16]} when the checkpoint was saved "
                         "(prepared again differently?); the data order would not continue")
