"""Tests for ddlm.data.sudoku: solver, generator, constraint counting and the token encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddlm.data.sudoku import (
    format_grid,
    generate,
    grid_tokens,
    is_valid_solution,
    solve,
    token_grids,
    violations,
)
from ddlm.data.tokenizers import CharTokenizer

# A 22-clue puzzle from our own generator (generate(6, clues=22, seed=7)[0][4]); unique solution.
HARD = "604900000000000800003010700000008400007100006106020005002600000030001000000085000"
HARD_SOLUTION = "684957123715342869293816754329568471857194236146723985472639518538471692961285347"


def digits(s: str) -> np.ndarray:
    return np.array([int(ch) for ch in s], dtype=np.int64)


def test_solver_solves_hard_puzzle():
    puzzle = digits(HARD)
    n, sol = solve(puzzle)
    assert n == 1
    np.testing.assert_array_equal(sol, digits(HARD_SOLUTION))
    assert violations(sol) == 0
    clue = puzzle != 0
    np.testing.assert_array_equal(sol[clue], puzzle[clue])
    # same answer for a (9, 9) array and a plain list
    assert solve(puzzle.reshape(9, 9))[1].tolist() == solve(puzzle.tolist())[1].tolist()


def test_solver_counts_two_solutions_for_swappable_rectangle():
    sol = digits(HARD_SOLUTION).reshape(9, 9)
    found = None
    for r1 in range(9):
        for r2 in range(r1 + 1, 9):
            for c1 in range(9):
                for c2 in range(c1 + 1, 9):
                    two_boxes = r1 // 3 == r2 // 3 or c1 // 3 == c2 // 3
                    if two_boxes and sol[r1, c1] == sol[r2, c2] and sol[r1, c2] == sol[r2, c1]:
                        found = (r1, r2, c1, c2)
    assert found is not None
    r1, r2, c1, c2 = found
    grid = sol.copy()
    grid[[r1, r1, r2, r2], [c1, c2, c1, c2]] = 0
    n, first = solve(grid, limit=10)
    assert n == 2 and violations(first) == 0
    assert solve(np.zeros(81, dtype=np.int64), limit=2)[0] == 2
    assert solve(grid, limit=1)[0] == 1


def test_solver_unsolvable_grid_gives_zero():
    grid = np.zeros((9, 9), dtype=np.int64)
    grid[0, :8] = np.arange(1, 9)
    grid[1, 8] = 9  # (0, 8) must be 9 but its column already holds 9
    assert solve(grid) == (0, None)


@pytest.mark.parametrize(
    "grid, match",
    [
        (np.zeros(80, dtype=np.int64), r"grid must have shape .*got shape \(80,\)"),
        (np.full(81, 10), r"grid holds value 10 at cell 0, expected 0..9"),
        ([-1] + [0] * 80, r"grid holds value -1"),
        ([5, 5] + [0] * 79, r"grid has conflicting clues: digit 5 repeated in row 0"),
        ([0.5] * 81, r"grid must hold integers"),
    ],
)
def test_solver_rejects_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        solve(grid)


def test_solver_rejects_bad_limit():
    with pytest.raises(ValueError, match=r"limit must be an integer >= 1, got 0"):
        solve([0] * 81, limit=0)


@pytest.mark.parametrize("clues", [30, 35, 40])
def test_generate_unique_puzzles_with_exact_clues(clues):
    puzzles, solutions = generate(8, clues=clues, seed=3)
    assert puzzles.shape == solutions.shape == (8, 81)
    assert puzzles.dtype == solutions.dtype == np.int64
    assert ((puzzles != 0).sum(axis=1) == clues).all()
    assert is_valid_solution(solutions).all()
    clue = puzzles != 0
    np.testing.assert_array_equal(puzzles[clue], solutions[clue])
    for p, s in zip(puzzles, solutions, strict=False):
        n, sol = solve(p)
        assert n == 1
        np.testing.assert_array_equal(sol, s)


def test_generate_is_deterministic_in_seed():
    a = generate(4, clues=35, seed=11)
    b = generate(4, clues=35, seed=11)
    c = generate(4, clues=35, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert len({p.tobytes() for p in a[0]}) == 4  # puzzles differ within a batch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_puzzles": 0}, r"num_puzzles must be an integer >= 1, got 0"),
        ({"num_puzzles": 1, "clues": 16}, r"clues must be an integer in \[17, 81\], got 16"),
        ({"num_puzzles": 1, "clues": 82}, r"clues must be an integer in \[17, 81\], got 82"),
        ({"num_puzzles": 1.5}, r"num_puzzles"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(**kwargs)


def test_generate_raises_when_clue_count_is_unreachable():
    with pytest.raises(RuntimeError, match=r"clues=17 in max_attempts=2"):
        generate(1, clues=17, seed=0, max_attempts=2)


def test_violations_hand_made_grids():
    sol = digits(HARD_SOLUTION)
    assert violations(sol) == 0 and violations(sol[None]).tolist() == [0]
    # Swap cells (0, 0) and (0, 8) of row 0 (different boxes): the row keeps 9 distinct digits,
    # columns 0 and 8 each lose one distinct digit, boxes 0 and 2 each lose one: 0 + 2 + 2 = 4.
    far = sol.copy()
    far[[0, 8]] = far[[8, 0]]
    # Swap cells (0, 0) and (0, 1) (same box): only columns 0 and 1 lose one each: 2.
    near = sol.copy()
    near[[0, 1]] = near[[1, 0]]
    # A grid of all ones: each of the 27 units has 1 distinct digit: 27 * 8 = 216.
    ones = np.ones(81, dtype=np.int64)
    batch = np.stack([sol, far, near, ones])
    # A blank cell (0) holds no digit: its row, column and box each lack one: 3; an empty grid: 27 * 9.
    blank = sol.copy()
    blank[40] = 0
    batch = np.stack([sol, far, near, ones, blank, np.zeros(81, dtype=np.int64)])
    assert violations(batch).tolist() == [0, 4, 2, 216, 3, 243]
    assert violations(torch.from_numpy(batch)).tolist() == [0, 4, 2, 216, 3, 243]
    assert is_valid_solution(batch).tolist() == [True, False, False, False, False, False]


def test_violations_rejects_bad_input():
    with pytest.raises(ValueError, match=r"grids holds value 10, expected values in \[0, 9\]"):
        violations(np.full((2, 81), 10, dtype=np.int64))
    with pytest.raises(ValueError, match=r"grids holds value -1, expected values in \[0, 9\]"):
        violations(-np.ones((2, 81), dtype=np.int64))
    with pytest.raises(ValueError, match=r"grids must be an integer array of shape \(\.\.\., 81\)"):
        violations(np.ones((2, 80), dtype=np.int64))


def test_grid_tokens_round_trip():
    tok = CharTokenizer.from_text("123456789")
    puzzles, solutions = generate(3, clues=35, seed=5)
    x0, filled = grid_tokens(solutions, tok)
    assert x0.dtype == torch.int64 and x0.shape == (3, 81) and bool(filled.all())
    assert [tok.decode(row) for row in x0.tolist()] == ["".join(map(str, row)) for row in solutions.tolist()]
    np.testing.assert_array_equal(token_grids(x0, tok), solutions)
    prompt, mask = grid_tokens(puzzles, tok)
    np.testing.assert_array_equal(mask.numpy(), puzzles != 0)
    assert mask.sum(dim=1).tolist() == [35, 35, 35]
    assert torch.equal(prompt[mask], x0[mask])
    with_specials = x0.clone()
    with_specials[0, 0] = tok.bos_id  # a token that is no digit decodes to a blank cell
    assert token_grids(with_specials, tok)[0, 0] == 0 and violations(token_grids(with_specials, tok))[0] == 3


def test_grid_tokens_reject_bad_input():
    tok = CharTokenizer.from_text("123456789")
    with pytest.raises(ValueError, match=r"grids holds value 10"):
        grid_tokens(np.full((1, 81), 10), tok)
    with pytest.raises(ValueError, match="'1'"):  # not a token of this tokenizer
        grid_tokens(np.ones((1, 81), dtype=np.int64), CharTokenizer.from_text("23456789"))


def test_format_grid():
    text = format_grid(digits(HARD))
    lines = text.splitlines()
    assert len(lines) == 11
    assert lines[0] == "6 . 4 | 9 . . | . . ."
    assert lines[3] == "------+-------+------"
    assert format_grid(digits(HARD).reshape(9, 9)) == text
