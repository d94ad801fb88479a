"""Sudoku solving by conditional generation (MATH.md section 6): ``ddlm sudoku``.

A Sudoku run learns the law of solved grids (``ddlm.data.prepare.prepare_data``, corpus "sudoku"). A
puzzle is solved by sampling 81 cells with the clue cells fixed as a prompt. Test puzzles are
generated with the seed ``cfg.seed + 2 * 1_000_003 + seed``, disjoint from the training grids (seed
``cfg.seed``) and the validation grids (``cfg.seed + 1_000_003``): ``ddlm.data.sudoku.SEED_OFFSETS``.

Metrics: exact-match accuracy (the sampled grid equals the solution), solve rate (the grid violates
no row, column or box constraint; with the clues held fixed and a unique solution this is the same
as exact match), mean violations (sum over the 27 units of 9 - distinct digits), and cell accuracy.
A run's vocabulary also holds BOS/EOS; a cell sampled as one of them holds no digit and counts as
a blank (it makes its row, column and box each lack a digit).
"""

from __future__ import annotations

import numpy as np

from ..data import sudoku as S
from .options import SamplerSettings, add_sampler_options, draw, resolve_sampler, settings_from_args


def _grids(name: str, a, lo: int) -> np.ndarray:
    """(N, 81) digits in [lo, 9] (``ddlm.data.sudoku.as_grids``, one grid per row)."""
    g = S.as_grids(name, a, lo)
    if g.ndim != 2:
        raise ValueError(f"{name} must have shape (N, 81), got shape {g.shape}")
    return g


def sudoku_metrics(pred_grids, solutions) -> dict:
    """Exact-match accuracy, solve rate, mean violations and cell accuracy of predicted grids.

    Args:
        pred_grids: (N, 81) digits 1..9, 0 for a cell that holds no digit.
        solutions: (N, 81) digits 1..9.

    Returns:
        ``{"num_puzzles", "accuracy", "num_exact", "solve_rate", "num_solved", "mean_violations",
        "cell_accuracy", "blank_cells"}``; solved = no violation (any valid grid, even if it is not
        the given solution).
    """
    pred, sol = _grids("pred_grids", pred_grids, 0), _grids("solutions", solutions, 1)
    if pred.shape != sol.shape:
        raise ValueError(f"pred_grids has shape {pred.shape}, expected the shape of solutions {sol.shape}")
    if pred.shape[0] == 0:
        raise ValueError("pred_grids holds no grid, expected at least one")
    viol = S.violations(pred)
    exact = (pred == sol).all(axis=1)
    n = pred.shape[0]
    return {"num_puzzles": n, "accuracy": float(exact.mean()), "num_exact": int(exact.sum()),
            "solve_rate": float((viol == 0).mean()), "num_solved": int((viol == 0).sum()),
            "mean_violations": float(viol.mean()), "cell_accuracy": float((pred == sol).mean()),
            "blank_cells": int((pred == 0).sum())}


def puzzle_seed_for(run_seed: int, seed: int) -> int:
    """Seed of the test puzzles; refuses the training and validation seeds."""
    s = run_seed + S.SEED_OFFSETS["test"] + seed
    for split in ("train", "validation"):
        if s == run_seed + S.SEED_OFFSETS[split]:
            raise ValueError(f"seed {seed} makes the test puzzles those of the run's "
                             f"{'training' if split == 'train' else 'validation'} grids; choose another seed")
    return s


def evaluate_sudoku(run, settings: SamplerSettings, num_puzzles: int = 100, clues: int = 35, seed: int = 0, *,
                    batch_size: int = 32, device: str | None = "cpu", progress: bool = False) -> dict:
    """Generate test puzzles, solve them by sampling with the clues fixed, and score the grids.

    Args:
        run: a Sudoku run folder, checkpoint folder, or ``LoadedRun``.
        settings: sampler settings (the clues are the prompt).
        num_puzzles: test puzzles.
        clues: clues per puzzle (17..81).
        seed: puzzle seed, offset from the run's (see the module docstring).
        batch_size, device, progress: as for ``draw``.

    Returns:
        A record: ``command``, ``run`` (run_info), ``sampler`` (settings), ``resolved_sampler``,
        ``num_puzzles``, ``clues``, ``seed``, ``puzzle_seed``, ``batch_size``, the
        :func:`sudoku_metrics` entries, ``clues_preserved`` (True: every clue cell kept its digit),
        and per puzzle ``puzzles``, ``solutions``, ``predictions`` (81-character strings, "." for
        an empty/blank cell) and ``violations``.

    Raises:
        ValueError: not a Sudoku diffusion run, or invalid arguments.
    """
    from .. import __version__
    from .results import LoadedRun, load_run

    run = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    cfg = run.config
    if cfg.data.corpus != "sudoku":
        raise ValueError(f"run {run.info['run']!r} was trained on corpus {cfg.data.corpus!r}, expected 'sudoku'")
    if run.autoregressive:
        raise ValueError("Sudoku solving fixes clues anywhere in the grid, which needs a diffusion run, "
                         "got an autoregressive one")
    puzzle_seed = puzzle_seed_for(cfg.seed, seed)
    puzzles, solutions = S.generate(num_puzzles, clues=clues, seed=puzzle_seed, progress=progress)
    prompt, mask = S.grid_tokens(puzzles, run.tokenizer)  # the clues fixed, the empty cells free
    x = draw(run.model, run.process, run.tokenizer, settings, num_puzzles, 81, prompt=prompt, prompt_mask=mask,
             batch_size=batch_size, progress=progress)
    pred = S.token_grids(x, run.tokenizer)
    clues_preserved = bool((pred[puzzles != 0] == puzzles[puzzles != 0]).all())
    metrics = sudoku_metrics(pred, solutions)

    def strings(a):
        return ["".join("." if v == 0 else str(v) for v in row) for row in a.tolist()]

    return {"command": "sudoku", "run": run.info, "sampler": settings.to_dict(),
            "resolved_sampler": resolve_sampler(settings, run.process), "num_puzzles": num_puzzles,
            "clues": clues, "seed": seed, "puzzle_seed": puzzle_seed, "batch_size": batch_size,
            "ddlm_version": __version__, **metrics, "clues_preserved": clues_preserved,
            "puzzles": strings(puzzles), "solutions": strings(solutions), "predictions": strings(pred),
            "violations": S.violations(pred).tolist()}


def format_sudoku(r: dict) -> str:
    """One line for the terminal."""
    return (f"{r['num_puzzles']} puzzles with {r['clues']} clues: accuracy {r['accuracy']:.3f}, "
            f"solve rate {r['solve_rate']:.3f}, mean violations {r['mean_violations']:.2f}, "
            f"cell accuracy {r['cell_accuracy']:.3f} (sampler {r['resolved_sampler']}, nfe {r['sampler']['nfe']})")


def _handler(args) -> int:
    from .results import check_out, write_out

    check_out(args.out, args.overwrite)
    settings = settings_from_args(args)
    result = evaluate_sudoku(args.run, settings, num_puzzles=args.puzzles, clues=args.clues, seed=args.puzzle_seed,
                             batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    print(format_sudoku(result))
    write_out(args.out, result, overwrite=args.overwrite)
    return 0


def add_command(subparsers) -> None:
    """Register ``ddlm sudoku``."""
    p = subparsers.add_parser(
        "sudoku", help="solve generated test puzzles with a Sudoku run (clues fixed as a prompt)",
        description="Generate test Sudoku puzzles (seed disjoint from training and validation), sample the "
                    "solutions with the clues fixed, report exact-match accuracy, solve rate and violations.")
    p.add_argument("run", help="Sudoku run folder (its latest checkpoint) or checkpoint folder")
    add_sampler_options(p)
    p.add_argument("--puzzles", type=int, default=100, help="test puzzles (default 100)")
    p.add_argument("--clues", type=int, default=35, help="clues per puzzle, 17..81 (default 35)")
    p.add_argument("--puzzle-seed", type=int, default=0, help="seed of the test puzzles (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="puzzles per sampling call (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the result record here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler)
