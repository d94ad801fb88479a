"""Sudoku metrics on hand-made grids and ``ddlm sudoku`` end to end (ddlm.evaluate.sudoku)."""

import json

import numpy as np
import pytest
import torch
from _eval_runs import cli, run_cli, sudoku_run, text_run

from ddlm.data import sudoku as S
from ddlm.evaluate import sudoku
from ddlm.evaluate.bound import CallableModel
from ddlm.evaluate.options import SamplerSettings
from ddlm.evaluate.results import LoadedRun, load_run
from ddlm.evaluate.sudoku import evaluate_sudoku, sudoku_metrics

# a valid solution, by the pattern (3 (r mod 3) + r // 3 + c) mod 9 + 1
SOLUTION = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)]).reshape(81)


@pytest.fixture(scope="module")
def mdm_run(tmp_path_factory):
    return sudoku_run(tmp_path_factory.mktemp("sudoku"), "mdm")


def test_metrics_on_hand_made_grids():
    assert bool(S.is_valid_solution(SOLUTION))
    swapped = SOLUTION.copy()
    swapped[[0, 4]] = swapped[[4, 0]]  # two cells of row 0, in boxes 0 and 1: columns 0, 4 and boxes 0, 1 repeat
    relabelled = np.where(SOLUTION == 1, 2, np.where(SOLUTION == 2, 1, SOLUTION))  # valid, not the solution
    blank = SOLUTION.copy()
    blank[40] = 0  # no digit in the centre: its row, column and box each lack one digit
    assert S.violations(np.stack([SOLUTION, swapped, relabelled, blank])).tolist() == [0, 4, 0, 3]
    m = sudoku_metrics(np.stack([SOLUTION, swapped, relabelled, blank]), np.stack([SOLUTION] * 4))
    assert m["num_puzzles"] == 4 and m["num_exact"] == 1 and m["accuracy"] == 0.25
    assert m["num_solved"] == 2 and m["solve_rate"] == 0.5  # the relabelled grid solves no puzzle but is valid
    assert m["mean_violations"] == pytest.approx(7 / 4) and m["blank_cells"] == 1
    assert m["cell_accuracy"] == pytest.approx((81 + 79 + 63 + 80) / (4 * 81))  # 18 cells hold a 1 or a 2
    assert sudoku_metrics(torch.tensor(SOLUTION[None]), SOLUTION[None])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="pred_grids has shape"):
        sudoku_metrics(SOLUTION[None], np.stack([SOLUTION] * 2))
    with pytest.raises(ValueError, match=r"solutions holds value 0, expected values in \[1, 9\]"):
        sudoku_metrics(SOLUTION[None], blank[None])


def test_solving_with_a_perfect_model_is_exact():
    """A model that solves the grid from its unmasked cells (with the backtracking solver) must score
    accuracy 1: this checks the clue encoding, the prompt and the decoding end to end."""
    from ddlm.config import load_config
    from ddlm.data.tokenizers import CharTokenizer
    from ddlm.processes import MaskedDiffusion

    tok = CharTokenizer.from_text("123456789")
    proc = MaskedDiffusion(tok.vocab_size)
    digit_ids = torch.tensor([tok.encode(str(d))[0] for d in range(1, 10)])

    def solver(xt, t):
        out = torch.full((*xt.shape, tok.vocab_size), -30.0)
        for b, row in enumerate(xt.tolist()):
            grid = [0 if v == proc.mask_id else tok.decode([v]) for v in row]
            _, sol = S.solve([int(g) for g in grid], limit=1)
            out[b, torch.arange(81), digit_ids[torch.from_numpy(sol - 1)]] = 0.0
        return out

    cfg = load_config("sudoku-mdm", [])
    run = LoadedRun(CallableModel(solver, proc, "denoiser"), proc, tok, cfg,
                    {"run": "solver", "process": "mdm"})
    r = evaluate_sudoku(run, SamplerSettings(nfe=4), num_puzzles=4, clues=40)
    assert r["accuracy"] == 1.0 and r["solve_rate"] == 1.0 and r["mean_violations"] == 0 and r["clues_preserved"]
    assert r["predictions"] == r["solutions"]


def test_end_to_end_on_a_tiny_run(mdm_run):
    r = evaluate_sudoku(mdm_run, SamplerSettings(nfe=8, seed=1), num_puzzles=6, clues=30, batch_size=4)
    assert r["clues_preserved"] and len(r["predictions"]) == 6
    for puzzle, pred, sol in zip(r["puzzles"], r["predictions"], r["solutions"], strict=False):
        assert sum(c != "." for c in puzzle) == 30
        assert all(p == "." or p == q for p, q in zip(puzzle, pred, strict=False))  # every clue cell kept its digit
        assert all(p == "." or p == s for p, s in zip(puzzle, sol, strict=False))
    # the metrics agree with a direct recount from the stored grids
    exact = [p == s for p, s in zip(r["predictions"], r["solutions"], strict=False)]
    assert r["num_exact"] == sum(exact) and r["accuracy"] == pytest.approx(sum(exact) / 6)
    viol = [int(S.violations(np.array([int(c) for c in p]))) if "." not in p else None for p in r["predictions"]]
    assert all(v is None or v == w for v, w in zip(viol, r["violations"], strict=False))
    assert r["mean_violations"] == pytest.approx(np.mean(r["violations"]))
    assert r["num_solved"] == sum(v == 0 for v in r["violations"])
    cells = sum(a == b for p, s in zip(r["predictions"], r["solutions"], strict=True)
                for a, b in zip(p, s, strict=True))
    assert r["cell_accuracy"] == pytest.approx(cells / (6 * 81))
    # test puzzles are not training or validation grids
    from ddlm.data.prepare import prepare_data

    loaded = load_run(mdm_run)
    tok, train_blocks, val_blocks = prepare_data(loaded.config, loaded.tokenizer)
    seen = {tok.decode(row) for row in torch.cat([train_blocks, val_blocks]).tolist()}
    assert not seen & set(r["solutions"])
    assert r["puzzle_seed"] not in (loaded.config.seed, loaded.config.seed + 1_000_003)
    # reproducible from the record's settings
    again = evaluate_sudoku(r["run"]["checkpoint"], SamplerSettings.from_dict(r["sampler"]), r["num_puzzles"],
                            r["clues"], r["seed"], batch_size=r["batch_size"])
    assert again["predictions"] == r["predictions"]


@pytest.mark.parametrize("process,extra", [("udm", ["--corrector-sweeps", "1", "--corrector-k", "4"]),
                                           ("audm", ["--sampler", "reaudm"])])
def test_sudoku_command(tmp_path, process, extra, capsys):
    run = sudoku_run(tmp_path, process)
    out = tmp_path / "sudoku.json"
    argv = ["sudoku", run, "--nfe", "6", "--puzzles", "3", "--clues", "40", "--out", out, "--no-progress", *extra]
    assert run_cli(cli(sudoku), argv) == 0
    assert "3 puzzles with 40 clues: accuracy" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["command"] == "sudoku" and rec["clues_preserved"] and rec["run"]["process"] == process
    assert rec["sampler"]["nfe"] == 6 and rec["num_puzzles"] == 3 and rec["clues"] == 40 and rec["seed"] == 0
    assert set(SamplerSettings().to_dict()) == set(rec["sampler"])
    with pytest.raises(FileExistsError, match="already exists"):
        run_cli(cli(sudoku), argv)


def test_sudoku_refuses_other_runs(tmp_path, mdm_run):
    with pytest.raises(ValueError, match="was trained on corpus .*, expected 'sudoku'"):
        evaluate_sudoku(text_run(tmp_path, "mdm"), SamplerSettings(nfe=2), num_puzzles=1)
    with pytest.raises(ValueError, match="num_puzzles must be an integer >= 1"):
        evaluate_sudoku(mdm_run, SamplerSettings(nfe=2), num_puzzles=0)
    with pytest.raises(ValueError, match="option corrector GibbsCorrector supports uniform diffusion only"):
        evaluate_sudoku(mdm_run, SamplerSettings(nfe=2, corrector={"sweeps": 1}), num_puzzles=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_cli(cli(sudoku), ["sudoku", tmp_path / "missing"])
