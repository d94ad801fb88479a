"""The reproduction study: the paper's claims at CPU scale, with ddlm's own commands end to end.

    .venv/bin/python experiments/study.py                 # everything, resumably
    .venv/bin/python experiments/study.py --stage train   # one stage (train, bound, frontier, probe, sudoku, report)
    .venv/bin/python experiments/study.py --scale 4       # 4x the training steps (e.g. on a GPU)

Every step is a ``ddlm`` command run in a subprocess, exactly as a user would type it. The study is
resumable: a run whose last checkpoint is at its final step is not trained again (an unfinished one
resumes from its checkpoint), a result file that exists is not remade, and frontier sweeps skip the
points already in their CSV. Training runs go to ``experiments/runs/`` (not committed); the measured
results (JSON and CSV with full settings) go to ``experiments/results/`` and the report, made from
those files only, to ``docs/reproduction.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RUNS_DIR = ROOT / "runs"
RESULTS = ROOT / "results"

#: training steps of every text run (same model, data, batch, seed), before --scale
TEXT_STEPS = 8000
SUDOKU_STEPS = 5000
COMMON = ["sample_every=0", "max_minutes=null", "save_every=250", "keep_checkpoints=2", "seed=0"]
TEXT = ["eval_every=1000"]
SUDOKU = ["eval_every=500"]

#: run name -> (packaged config, overrides, kind)
RUNS = {  # in training order: the runs behind claim 1 first
    "udm-loo-elbo": ("demo-udm", ["model.output=loo", "objective=udm_elbo"], "text"),
    "udm-denoiser-elbo": ("demo-udm", ["model.output=denoiser", "objective=udm_elbo"], "text"),
    "mdm": ("demo-mdm", [], "text"),
    "audm": ("demo-audm", [], "text"),
    "udm-loo-ce": ("demo-udm", ["model.output=loo", "objective=cross_entropy"], "text"),
    "udm-denoiser-ce": ("demo-udm", ["model.output=denoiser", "objective=cross_entropy"], "text"),
    "ar": ("demo-ar", [], "text"),
    "sudoku-mdm": ("sudoku-mdm", [], "sudoku"),
    "sudoku-udm": ("sudoku-udm", ["model.output=loo", "objective=udm_elbo"], "sudoku"),
    "sudoku-audm": ("sudoku-audm", [], "sudoku"),
}


def run_dir(name: str) -> Path:
    return RUNS_DIR / name


def steps_of(name: str, scale: float) -> int:
    base = SUDOKU_STEPS if RUNS[name][2] == "sudoku" else TEXT_STEPS
    return max(1, round(base * scale))


def train_command(name: str, scale: float) -> list[str]:
    config, overrides, kind = RUNS[name]
    extra = SUDOKU if kind == "sudoku" else TEXT
    return ["train", config, f"run_dir={run_dir(name)}", f"max_steps={steps_of(name, scale)}", *COMMON, *extra,
            *overrides, "--no-progress"]


def last_step(path: Path) -> int | None:
    """Step of a run's latest complete checkpoint, or None."""
    sys.path.insert(0, str(ROOT.parent / "src"))
    from ddlm.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        return None
    return int(json.loads((ckpt / "meta.json").read_text())["step"])


def ddlm(args: list[str], log) -> None:
    """Run one ``ddlm`` command in a subprocess (output to the terminal), failing loudly."""
    log("+ ddlm " + " ".join(args))
    start = time.time()
    subprocess.run([sys.executable, "-m", "ddlm", *args], check=True)
    log(f"  ({(time.time() - start) / 60:.1f} min)")


def stage_train(names: list[str], scale: float, log) -> None:
    for name in names:
        target = steps_of(name, scale)
        done = last_step(run_dir(name))
        if done is not None and done >= target:
            log(f"train {name}: done ({done} steps)")
            continue
        ddlm(train_command(name, scale), log)


STAGES = {"train": stage_train}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=list(STAGES), action="append", help="run only these stages (repeatable)")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="only these runs")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every run's training steps (default 1)")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error(f"--scale must be > 0, got {args.scale}")

    def log(msg: str) -> None:
        print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    for stage in args.stage or list(STAGES):
        STAGES[stage](args.runs, args.scale, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
