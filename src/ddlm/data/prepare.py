"""The data of a run config: its tokenizer and its packed training and validation blocks.

Training calls :func:`prepare_data` once; evaluation calls it again with the run's saved tokenizer to
rebuild the very same validation split from the config (``ddlm eval``, the MAUVE reference).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..config import TrainConfig
from .corpora import encode_documents, load_corpus, pack, split_documents
from .tokenizers import BPETokenizer, CharTokenizer


def build_tokenizer(spec: str, text: str):
    """"char" (from the corpus text), "gpt2" (offline GPT-2 BPE) or a tokenizers JSON file."""
    if spec == "char":
        return CharTokenizer.from_text(text)
    if spec == "gpt2":
        return BPETokenizer.gpt2()
    if not Path(spec).is_file():
        raise ValueError(f"config key 'data.tokenizer' is {spec!r}, expected 'char', 'gpt2' or an existing "
                         "tokenizers JSON file")
    return BPETokenizer.from_file(spec)


def sudoku_blocks(num: int, seed: int, tokenizer) -> Tensor:
    """Solved Sudoku grids as blocks of 81 tokens (``ddlm.data.sudoku.grid_tokens``)."""
    from . import sudoku

    _, solutions = sudoku.generate(num, clues=81, seed=seed)
    return sudoku.grid_tokens(solutions, tokenizer)[0]


def prepare_data(cfg: TrainConfig, tokenizer=None) -> tuple[object, Tensor, Tensor]:
    """Tokenizer (built from the corpus unless given), packed train and validation blocks.

    Corpus "sudoku": solved grids from ``ddlm.data.sudoku`` (training learns the law of solutions;
    puzzles are solved by sampling with the clues as a prompt), training and validation grids from
    the seeds of ``sudoku.SEED_OFFSETS``.
    """
    if cfg.data.corpus == "sudoku":
        from .sudoku import SEED_OFFSETS

        tokenizer = tokenizer or CharTokenizer.from_text("123456789")
        n_val = max(10, round(cfg.data.num_puzzles * cfg.data.val_fraction))
        return (tokenizer, sudoku_blocks(cfg.data.num_puzzles, cfg.seed + SEED_OFFSETS["train"], tokenizer),
                sudoku_blocks(n_val, cfg.seed + SEED_OFFSETS["validation"], tokenizer))
    docs = load_corpus(cfg.data.corpus)
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction, seed=cfg.seed)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.data.tokenizer, "".join(train_docs + val_docs))
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
