"""The data of a run config (ddlm.data.prepare): tokenizer and packed blocks, text and Sudoku."""

import pytest
import torch

from ddlm.config import load_config
from ddlm.data import sudoku
from ddlm.data.prepare import build_tokenizer, prepare_data
from ddlm.data.tokenizers import CharTokenizer

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


def test_text_corpus_blocks_and_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = load_config(None, [f"data.corpus={corpus}", "data.block_size=16"])
    tok, train, val = prepare_data(cfg)
    assert isinstance(tok, CharTokenizer) and train.shape[1] == val.shape[1] == 16
    assert train.dtype == val.dtype == torch.long and train.shape[0] > val.shape[0] > 0
    again = prepare_data(cfg, tok)  # the saved tokenizer rebuilds the same split (evaluation does this)
    assert again[0] is tok and torch.equal(again[1], train) and torch.equal(again[2], val)
    with pytest.raises(ValueError, match="too small for block_size 4096"):
        prepare_data(load_config(None, [f"data.corpus={corpus}", "data.block_size=4096"]))


def test_build_tokenizer():
    assert build_tokenizer("char", "abca").vocab_size == 3 + 2  # BOS and EOS
    with pytest.raises(ValueError, match="expected 'char', 'gpt2', 'bpe:N' or an existing tokenizers JSON file"):
        build_tokenizer("no-such-file.json", "abc")


def test_sudoku_corpus_is_valid_solutions_from_disjoint_seeds(tmp_path):
    cfg = load_config("sudoku-mdm", [f"run_dir={tmp_path / 's'}", "data.num_puzzles=40"])
    tok, train_blocks, val_blocks = prepare_data(cfg)
    assert train_blocks.shape == (40, 81) and val_blocks.shape == (10, 81)
    digits = torch.tensor([[int(c) for c in tok.decode(row.tolist())] for row in train_blocks])
    assert bool(sudoku.is_valid_solution(digits.numpy()).all())
    assert not torch.equal(train_blocks[:10], val_blocks)
    _, solutions = sudoku.generate(10, clues=81, seed=cfg.seed + sudoku.SEED_OFFSETS["validation"])
    assert torch.equal(val_blocks, sudoku.grid_tokens(solutions, tok)[0])


def test_bpe_n_trains_on_the_training_split_only_and_is_saved_with_the_run(tmp_path):
    from ddlm.config import load_config
    from ddlm.data.corpora import load_corpus, split_documents
    from ddlm.data.prepare import prepare_data
    from ddlm.data.tokenizers import load_tokenizer, train_bpe
    from ddlm.train import train

    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(20):  # 20 documents: one whole document is held out
        (corpus / f"{i:02d}.txt").write_text(("zebra quagga " if i == 7 else f"common words number {i} ") * 40)
    cfg = load_config(None, [f"data.corpus={corpus}", "data.tokenizer=bpe:300", "data.block_size=16",
                             f"run_dir={tmp_path / 'run'}", "model.hidden=32", "model.blocks=1", "model.heads=2",
                             "batch_size=4", "max_steps=1", "eval_batches=1", "sample_nfe=2", "num_samples=1"])
    tok, train_blocks, val_blocks = prepare_data(cfg)
    train_docs, val_docs = split_documents(load_corpus(corpus), cfg.data.val_fraction, cfg.seed)
    assert tok.to_dict() == train_bpe(train_docs, 300).to_dict()  # the held-out text played no part
    assert tok.vocab_size <= 300 and int(train_blocks.max()) < tok.vocab_size
    train(cfg, progress=False, log=lambda *_: None)
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json").to_dict() == tok.to_dict()
