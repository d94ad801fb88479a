"""Tiny training runs shared by the evaluation tests (a few optimiser steps; about 0.2 s each)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddlm.config import load_config
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3
SMALL = ["model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "eval_batches=2",
         "optim.warmup_steps=2", "log_every=1", "sample_nfe=4", "num_samples=1"]


def text_run(root: Path, process: str, steps: int = 3, **over) -> Path:
    """A run on a small English corpus (char tokenizer, blocks of 16)."""
    corpus = root / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    run = root / f"text-{process}"
    args = [f"run_dir={run}", f"data.corpus={corpus}", "data.block_size=16", f"process={process}",
            f"max_steps={steps}", f"eval_every={steps}", f"save_every={steps}", *SMALL]
    train(load_config(None, args + [f"{k}={v}" for k, v in over.items()]), progress=False, log=lambda *_: None)
    return run


def sudoku_run(root: Path, process: str = "mdm", steps: int = 2) -> Path:
    """A Sudoku run (20 training grids)."""
    run = root / f"sudoku-{process}"
    args = [f"run_dir={run}", f"process={process}", "data.num_puzzles=20", f"max_steps={steps}",
            f"eval_every={steps}", f"save_every={steps}", *SMALL]
    train(load_config("sudoku-mdm", args), progress=False, log=lambda *_: None)
    return run


def cli(*modules):
    """A parser with the commands of ``modules`` registered, as the lead engineer wires them."""
    parser = argparse.ArgumentParser(prog="ddlm")
    sub = parser.add_subparsers(dest="command", required=True)
    for m in modules:
        m.add_command(sub)
    return parser


def run_cli(parser, argv) -> int:
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)
