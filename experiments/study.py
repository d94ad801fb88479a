"""The reproduction study: the paper's claims at CPU scale, with ddlm's own commands end to end.

    .venv/bin/python experiments/study.py                 # everything, resumably
    .venv/bin/python experiments/study.py --stage train   # one stage (train, bound, frontier, probe, sudoku, report)
    .venv/bin/python experiments/study.py --scale 4       # 4x the training steps (e.g. on a GPU)

Every step is a ``ddlm`` command run in a subprocess, exactly as a user would type it, from the
study's working folder (``--workdir``, default ``experiments/``), so that the result files name
the runs as ``runs/<name>``. The study is resumable: a run whose last checkpoint is at its final
step is not trained again (an unfinished one resumes from its checkpoint), a result file that
exists and was made from the run's current checkpoint is not remade, and frontier sweeps skip the
points already in their CSV. Stages after ``train`` skip (with a log line) the runs whose training
is not finished, so a partial study gives partial results and a partial report. Training runs go to
``<workdir>/runs/`` (not committed); the measured results (JSON and CSV with full settings) go to
``<workdir>/results/`` and the report, made from those files only by ``experiments/report.py``, to
``docs/reproduction.md`` (``<workdir>/reproduction.md`` for another workdir).

Stages and the commands they run (``N`` validation blocks, ``B`` the run's batch per step):

- ``train``: ``ddlm train CONFIG run_dir=runs/NAME max_steps=... ...`` (see ``train_command``), then
  ``results/train/NAME.json`` (steps, training minutes and final validation bound, copied from the
  run's last checkpoint) for every finished run.
- ``bound``: ``ddlm eval runs/NAME --passes 4 --seed 0 --out results/bound/NAME.json``: four passes
  over the validation split with fresh Monte-Carlo draws (per-batch ELBO values are heavy-tailed);
  one pass for the autoregressive run, whose exact NLL has no Monte-Carlo noise (repeating it would
  copy the same batches and shrink the standard error).
- ``frontier``: ``ddlm frontier ... --nfe 16 64 256 --temperature 0.6 0.7 0.8 0.9 1.0 1.1 --judge J
  --num-samples 64 --out results/frontier/COMPARISON`` for the comparisons of ``frontier_calls``; a point
  another comparison already scored with identical settings is copied, not redrawn (``reuse_points``).
- ``probe``: ``ddlm probe runs/udm-* --nfe 64 --num-samples 16 --positions 8 --seed 0 --out results/probe``
  (remade when the set of finished UDM runs or their steps change).
- ``sudoku``: ``ddlm sudoku runs/sudoku-* --nfe 16|64 --puzzles 400 --out results/sudoku/NAME-nfeN.json``.
- ``report``: ``experiments/report.py`` (tables, plots, commands and verdicts from ``results/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RUNS_DIR = ROOT / "runs"
RESULTS = ROOT / "results"
#: the folder ``ddlm`` commands run in (``set_workdir``); RUNS_DIR and RESULTS live in it
WORKDIR = ROOT

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

#: the four uniform-diffusion text runs (output x objective); the best of them by bound is "the best UDM run"
UDM_RUNS = ("udm-loo-elbo", "udm-denoiser-elbo", "udm-loo-ce", "udm-denoiser-ce")
TEXT_RUNS = tuple(n for n, (_, _, kind) in RUNS.items() if kind == "text")
SUDOKU_RUNS = tuple(n for n, (_, _, kind) in RUNS.items() if kind == "sudoku")

#: bound stage: passes over the validation split (diffusion runs; the AR run's exact NLL gets one)
BOUND_PASSES = 4
#: frontier stage defaults (the issue's grid)
FRONTIER_NFE = (16, 64, 256)
FRONTIER_TEMPERATURES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
FRONTIER_SAMPLES = 64
#: informed predictor-corrector: one Gibbs sweep after each corrected predictor step, k positions per
#: sweep (4 of the 64 characters of a block: a light correction, so that the NFE it costs is not
#: mostly spent re-drawing well-predicted positions); every selection rule is swept
CORRECTOR_SWEEPS, CORRECTOR_K = 1, 4
SELECTIONS = ("random", "lowest_maxprob", "lowest_current_prob", "lowest_log_margin")
#: ReMDM remasking schedule (published default eta of "cap": 0.008)
REMASKING = "cap"
#: probe stage settings (``ddlm probe`` defaults, written out)
PROBE_NFE, PROBE_SAMPLES, PROBE_POSITIONS = 64, 16, 8
#: sudoku stage: NFE values and default number of test puzzles: the binomial SE of an accuracy is
#: <= sqrt(0.25/400) = 0.025, so that two accuracies 0.1 apart differ by more than 2 combined SE
#: (report.py's tolerance for "AUDM matches MDM"); generating and solving 400 puzzles takes about two
#: minutes per run and NFE on one CPU core
SUDOKU_NFE = (16, 64)
SUDOKU_PUZZLES = 400
#: comparisons of the frontier stage, in report order
COMPARISONS = ("ancestral", "udm-pc", "udm-temperature", "udm-ablation", "audm-reaudm", "mdm-remdm")


class StudyError(RuntimeError):
    """A stage cannot proceed (a missing prerequisite result, an inconsistent result folder)."""


def set_workdir(workdir: str | os.PathLike) -> None:
    """Put the runs (``runs/``), results (``results/``) and the commands' working folder under ``workdir``."""
    global WORKDIR, RUNS_DIR, RESULTS
    WORKDIR = Path(workdir).resolve()
    RUNS_DIR, RESULTS = WORKDIR / "runs", WORKDIR / "results"


def run_dir(name: str) -> Path:
    """The run's folder (absolute, under the working folder)."""
    return RUNS_DIR / name


def rel_run(name: str) -> str:
    """The run's folder as the study's commands name it (relative to the working folder)."""
    return f"runs/{name}"


def steps_of(name: str, scale: float) -> int:
    """The run's training steps at this scale."""
    base = SUDOKU_STEPS if RUNS[name][2] == "sudoku" else TEXT_STEPS
    return max(1, round(base * scale))


def train_command(name: str, scale: float) -> list[str]:
    """The ``ddlm train`` arguments of a run."""
    config, overrides, kind = RUNS[name]
    extra = SUDOKU if kind == "sudoku" else TEXT
    return ["train", config, f"run_dir={run_dir(name)}", f"max_steps={steps_of(name, scale)}", *COMMON, *extra,
            *overrides, "--no-progress"]


def shown_train_command(name: str, scale: float, extra: list[str]) -> list[str]:
    """``train_command`` with the run folder relative to the working folder and the extra overrides."""
    cmd = [f"run_dir={rel_run(name)}" if a.startswith("run_dir=") else a for a in train_command(name, scale)]
    return cmd[:-1] + list(extra) + cmd[-1:]


def last_step(path: Path) -> int | None:
    """Step of a run's latest complete checkpoint, or None."""
    ckpt = latest_ckpt(path)
    if ckpt is None:
        return None
    from ddlm.checkpoint import checkpoint_step

    return checkpoint_step(ckpt)


def latest_ckpt(path: Path) -> Path | None:
    """A run's latest complete checkpoint folder, or None."""
    if str(ROOT.parent / "src") not in sys.path:
        sys.path.insert(0, str(ROOT.parent / "src"))
    from ddlm.runs import latest_checkpoint

    return latest_checkpoint(path) if path.is_dir() else None


def ddlm(args: list[str], log) -> None:
    """Run one ``ddlm`` command in a subprocess from the working folder (output to the terminal),
    failing loudly."""
    log("+ ddlm " + " ".join(args))
    start = time.time()
    subprocess.run([sys.executable, "-m", "ddlm", *args], check=True, cwd=WORKDIR)
    log(f"  ({(time.time() - start) / 60:.1f} min)")


# ---- the study's settings --------------------------------------------------------------------------

@dataclass
class Study:
    """Options of one invocation of the study (see ``main``)."""

    runs: list[str]
    scale: float = 1.0
    judge: str = "smollm2"
    num_samples: int = FRONTIER_SAMPLES
    nfe: list[int] = field(default_factory=lambda: list(FRONTIER_NFE))
    temperatures: list[float] = field(default_factory=lambda: list(FRONTIER_TEMPERATURES))
    puzzles: int = SUDOKU_PUZZLES
    probe_nfe: int = PROBE_NFE
    extra: list[str] = field(default_factory=list)
    comparisons: list[str] = field(default_factory=lambda: list(COMPARISONS))
    log: object = print

    def overrides(self, name: str) -> list[str]:
        """The ``--set`` overrides that apply to a run: ``KEY=VALUE`` to every run, ``SCOPE:KEY=VALUE`` to
        the runs of a kind (SCOPE ``text`` or ``sudoku``) or to one run (SCOPE its name)."""
        out = []
        for item in self.extra:
            scope, sep, rest = item.partition(":")
            if not sep or "=" in scope:
                out.append(item)
            elif scope in (RUNS[name][2], name):
                out.append(rest)
        return out

    def finished(self, name: str) -> bool:
        """True when the run's last checkpoint is at (or past) its target step."""
        done = last_step(run_dir(name))
        return done is not None and done >= steps_of(name, self.scale)

    def ready(self, names, stage: str) -> list[str]:
        """The runs among ``names`` whose training is finished (a log line for each other one); their
        training records are written on the way."""
        out = []
        for name in names:
            done = last_step(run_dir(name))
            if done is not None and done >= steps_of(name, self.scale):
                write_train_record(name, self)
                out.append(name)
            else:
                self.log(f"{stage} {name}: skipped, training not finished "
                         f"({done or 0} of {steps_of(name, self.scale)} steps)")
        return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StudyError(f"result file {str(path)!r} is unreadable: {e}; delete it to remake it") from e


def _up_to_date(path: Path, name: str, log, what: str) -> bool:
    """True when the result file exists and was made from the run's current checkpoint (its ``run.step``)."""
    if not path.exists():
        return False
    step = _read_json(path).get("run", {}).get("step")
    now = last_step(run_dir(name))
    if step == now:
        log(f"{what}: done ({path.relative_to(WORKDIR)})")
        return True
    log(f"{what}: {path.relative_to(WORKDIR)} was made at step {step}, the run is now at step {now}: remaking it")
    return False


# ---- train -----------------------------------------------------------------------------------------

def write_train_record(name: str, study: Study) -> Path | None:
    """``results/train/NAME.json``: the finished run's steps, training time and last validation bound
    (from its last checkpoint's ``trainer.json``) and the command that trained it. Rewritten only when
    the run's step changed."""
    ckpt = latest_ckpt(run_dir(name))
    if ckpt is None:
        return None
    path = RESULTS / "train" / f"{name}.json"
    from ddlm.checkpoint import checkpoint_step

    step = checkpoint_step(ckpt)
    if path.exists() and _read_json(path).get("step") == step:
        return path
    trainer = json.loads((ckpt / "trainer.json").read_text())
    config = json.loads((ckpt / "config.json").read_text())
    metrics = trainer.get("metrics") or {}
    record = {"command": "train", "run": rel_run(name), "checkpoint": str(ckpt.relative_to(WORKDIR)), "step": step,
              "max_steps": config.get("max_steps"), "scale": study.scale,
              "train_minutes": metrics.get("train_minutes"), "val_nll": metrics.get("val_nll"),
              "val_nll_se": metrics.get("val_nll_se"), "unigram_entropy": metrics.get("unigram_entropy"),
              "process": config.get("process"), "objective": config.get("objective"),
              "model_output": (config.get("model") or {}).get("output"), "config_name": RUNS[name][0],
              "argv": ["ddlm", *shown_train_command(name, study.scale, study.overrides(name))], "config": config}
    from ddlm.evaluate.results import write_json

    write_json(path, record, overwrite=True)
    study.log(f"train {name}: wrote {path.relative_to(WORKDIR)}")
    return path


def stage_train(study: Study) -> None:
    """Train every selected run to its final step (resuming an unfinished one); record finished runs."""
    for name in [n for n in RUNS if n in study.runs]:
        target = steps_of(name, study.scale)
        done = last_step(run_dir(name))
        if done is not None and done >= target:
            study.log(f"train {name}: done ({done} steps)")
        else:
            ddlm(train_command(name, study.scale)[:-1] + study.overrides(name) + ["--no-progress"], study.log)
        if study.finished(name):
            write_train_record(name, study)


# ---- bound -----------------------------------------------------------------------------------------

def bound_passes(name: str) -> int:
    """Passes of the bound over the validation split: ``BOUND_PASSES`` with fresh Monte-Carlo draws
    each (per-batch ELBO values are heavy-tailed), one for the autoregressive run's exact NLL (no
    Monte-Carlo noise: repeating it would copy the same batches and shrink the standard error)."""
    return 1 if RUNS[name][0] == "demo-ar" else BOUND_PASSES


def bound_command(name: str) -> list[str]:
    """The ``ddlm eval`` arguments of a run's bound (without ``--overwrite``/``--no-progress``)."""
    return ["eval", rel_run(name), "--passes", str(bound_passes(name)), "--seed", "0",
            "--out", f"results/bound/{name}.json"]


def stage_bound(study: Study) -> None:
    """The validation bound of every finished run."""
    for name in study.ready([n for n in RUNS if n in study.runs], "bound"):
        path = RESULTS / "bound" / f"{name}.json"
        if _up_to_date(path, name, study.log, f"bound {name}"):
            continue
        ddlm(bound_command(name) + (["--overwrite"] if path.exists() else []) + ["--no-progress"], study.log)


# ---- frontier --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrontierCall:
    """One ``ddlm frontier`` invocation: runs, the options that distinguish its curves, its folder."""

    comparison: str
    runs: tuple[str, ...]
    options: tuple[str, ...] = ()

    def argv(self, nfe, temperatures, judge: str, num_samples: int) -> list[str]:
        """The full ``ddlm frontier`` arguments (without ``--no-progress``)."""
        return ["frontier", *(rel_run(r) for r in self.runs), "--labels", *self.runs, *self.options,
                "--nfe", *(str(n) for n in nfe), "--temperature", *(f"{t:g}" for t in temperatures),
                "--judge", judge, "--num-samples", str(num_samples), "--seed", "0",
                "--out", f"results/frontier/{self.comparison}"]

    def option(self, flag: str) -> str | None:
        """The value of ``flag`` in ``options`` (None if absent)."""
        return self.options[self.options.index(flag) + 1] if flag in self.options else None


def frontier_calls(text_runs: list[str], best_udm: str | None, audm: bool, mdm: bool) -> list[FrontierCall]:
    """Every ``ddlm frontier`` invocation of the stage.

    Args:
        text_runs: finished text runs for the all-runs ancestral comparison (AR included).
        best_udm: the UDM run with the lowest bound, or None to leave out its comparisons.
        audm, mdm: include the AUDM/ReAUDM and MDM/ReMDM comparisons.
    """
    calls = []
    if text_runs:
        calls.append(FrontierCall("ancestral", tuple(text_runs)))
    if best_udm is not None:
        b = (best_udm,)
        calls.append(FrontierCall("udm-pc", b))
        for rule in SELECTIONS:
            calls.append(FrontierCall("udm-pc", b, ("--corrector-sweeps", str(CORRECTOR_SWEEPS), "--corrector-k",
                                                    str(CORRECTOR_K), "--corrector-selection", rule)))
        calls.append(FrontierCall("udm-pc", b, ("--sampler", "max_coupling")))
        calls.append(FrontierCall("udm-temperature", b, ("--temperature-on", "loo")))
        calls.append(FrontierCall("udm-temperature", b, ("--temperature-on", "denoiser")))
        calls.append(FrontierCall("udm-ablation", b))
        calls.append(FrontierCall("udm-ablation", b, ("--sampler", "bridge_raw_denoiser")))
    if audm:
        calls.append(FrontierCall("audm-reaudm", ("audm",)))
        calls.append(FrontierCall("audm-reaudm", ("audm",), ("--sampler", "reaudm")))
    if mdm:
        calls.append(FrontierCall("mdm-remdm", ("mdm",)))
        calls.append(FrontierCall("mdm-remdm", ("mdm",), ("--sampler", "remdm", "--remasking", REMASKING)))
    return calls


def best_udm_run(results: Path | None = None) -> str:
    """The UDM run with the lowest validation bound (nats/token) in ``results/bound``.

    Raises:
        StudyError: a bound of the four UDM runs is missing (the files are named).
    """
    folder = (results or RESULTS) / "bound"
    missing = [str(folder / f"{n}.json") for n in UDM_RUNS if not (folder / f"{n}.json").exists()]
    if missing:
        raise StudyError(f"the best UDM run is chosen by the bounds of {', '.join(UDM_RUNS)}, but {missing} "
                         "do not exist; run the bound stage first (--stage bound)")
    bounds = {n: _read_json(folder / f"{n}.json")["nats_per_token"] for n in UDM_RUNS}
    return min(bounds, key=bounds.get)


def judge_spec(judge: str) -> str:
    """The judge as the commands get it: "smollm2", or an absolute path (the commands run elsewhere)."""
    if judge == "smollm2":
        return judge
    path = Path(judge).expanduser()
    if not path.exists():
        raise StudyError(f"--judge {judge!r} is neither 'smollm2' nor an existing folder")
    return str(path.resolve())


def judge_matches(spec: str, name: str) -> bool:
    """Whether a CSV row's judge name is the one ``spec`` loads (see ``ddlm.evaluate.judge_loading.load_judge``)."""
    if spec == "smollm2":
        return name.startswith("SmolLM2-135M-Instruct")
    return name == f"hf:{spec}" or name.startswith(f"ddlm-ar:{spec}@")


def _row_matches(row: dict, run: str, step: int, call: FrontierCall, nfe, temperature: float,
                 num_samples: int) -> bool:
    """Whether a frontier CSV row is the point (run, nfe, temperature) of ``call``."""
    ar = RUNS[run][0] == "demo-ar"
    sampler = "ancestral" if ar else (call.option("--sampler") or "ancestral")
    corrector = json.loads(row["corrector"]) if row["corrector"] else None
    remasking = json.loads(row["remasking"]) if row["remasking"] else None
    want_corrector = None if ar or call.option("--corrector-sweeps") is None else {
        "sweeps": int(call.option("--corrector-sweeps")), "k": int(call.option("--corrector-k")),
        "selection": call.option("--corrector-selection")}
    return (row["run"] == rel_run(run) and row["step"] == str(step) and row["sampler"] == sampler
            and row["nfe"] == ("" if ar else str(nfe)) and float(row["temperature"]) == temperature
            and float(row["top_p"]) == 1.0 and row["seed"] == "0"
            and row["temperature_on"] == ("" if ar else (call.option("--temperature-on") or ""))
            and (corrector and {k: corrector[k] for k in ("sweeps", "k", "selection")}) == want_corrector
            and (remasking or {}).get("kind") == (None if ar else call.option("--remasking"))
            and row["num_samples"] == str(num_samples))


def missing_points(call: FrontierCall, rows: list[dict], steps: dict[str, int], nfe, temperatures,
                   num_samples: int) -> int:
    """How many points of ``call`` are not in the CSV rows (the study's check before invoking ``ddlm
    frontier``, so that a finished sweep is not reloaded and its plot not redrawn)."""
    missing = 0
    for run in call.runs:
        nfes = [None] if RUNS[run][0] == "demo-ar" else nfe
        for n in nfes:
            for t in temperatures:
                if not any(_row_matches(r, run, steps[run], call, n, t, num_samples) for r in rows):
                    missing += 1
    return missing


def read_frontier(folder: Path) -> list[dict]:
    """Rows of ``folder/frontier.csv`` ([] if absent)."""
    path = folder / "frontier.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reuse_points(call: FrontierCall, steps: dict[str, int], nfe, temperatures, num_samples: int, judge: str,
                 log) -> int:
    """Copy into ``call``'s CSV the points it needs that another comparison already scored with the very
    same settings (run, checkpoint, sampler, NFE, temperature, seed, judge, ...: the row's whole key), with
    their samples file, so that ``ddlm frontier`` skips them instead of drawing and judging them again.

    The comparisons of one run overlap (the best UDM run's plain ancestral curve is in ``ancestral``,
    ``udm-pc`` and ``udm-ablation``); draws are seeded, so a recomputed point would be the same. Returns
    the number of rows copied.
    """
    import shutil

    from ddlm.evaluate.frontier import append_row, point_key

    folder = RESULTS / "frontier" / call.comparison
    have = {point_key(r) for r in read_frontier(folder)}
    copied = 0
    for other in COMPARISONS:
        source = RESULTS / "frontier" / other
        if other == call.comparison:
            continue
        for row in read_frontier(source):
            key = point_key(row)
            if key in have or not judge_matches(judge, row["judge"]):
                continue
            run = Path(row["run"]).name
            if run not in call.runs or not any(
                    _row_matches(row, run, steps[run], call, n, t, num_samples)
                    for n in ([None] if RUNS[run][0] == "demo-ar" else nfe) for t in temperatures):
                continue
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            if row["samples_file"] and (source / row["samples_file"]).exists():
                shutil.copyfile(source / row["samples_file"], folder / row["samples_file"])
            append_row(folder / "frontier.csv", row)
            have.add(key)
            copied += 1
    if copied:
        log(f"frontier {call.comparison}: {copied} points copied from other comparisons (same settings and seed)")
    return copied


def stage_frontier(study: Study) -> None:
    """Every comparison of ``frontier_calls`` whose points are not all in its CSV yet."""
    judge = judge_spec(study.judge)
    text = study.ready([n for n in TEXT_RUNS if n in study.runs], "frontier")
    best = None
    if all(study.finished(n) for n in UDM_RUNS):
        best = best_udm_run()
        study.log(f"frontier: best UDM run by bound: {best}")
        if best not in study.runs:
            study.log(f"frontier: {best} is not among --runs: comparisons udm-pc, udm-temperature and "
                      "udm-ablation skipped")
            best = None
    else:
        study.log("frontier udm-pc, udm-temperature, udm-ablation: skipped until the four UDM runs are trained "
                  "(the best of them by bound is compared)")
    steps = {n: last_step(run_dir(n)) for n in text}
    calls = [c for c in frontier_calls(text, best, "audm" in text, "mdm" in text)
             if c.comparison in study.comparisons]
    for call in calls:
        folder = RESULTS / "frontier" / call.comparison
        rows = read_frontier(folder)
        others = sorted({r["judge"] for r in rows if not judge_matches(judge, r["judge"])})
        if others:
            raise StudyError(f"{folder / 'frontier.csv'} holds points judged by {others}, not by --judge "
                             f"{study.judge!r}; gen-PPLs of different judges are not comparable: use another "
                             "--workdir or move that folder away")
        argv = call.argv(study.nfe, study.temperatures, judge, study.num_samples)
        if reuse_points(call, steps, study.nfe, study.temperatures, study.num_samples, judge, study.log):
            rows = read_frontier(folder)
        todo = missing_points(call, rows, steps, study.nfe, study.temperatures, study.num_samples)
        if todo == 0:
            study.log(f"frontier {' '.join((call.comparison, *call.runs, *call.options))}: done")
            continue
        ddlm(argv + ["--no-progress"], study.log)


# ---- probe -----------------------------------------------------------------------------------------

def probe_command(names: list[str], nfe: int = PROBE_NFE) -> list[str]:
    """The ``ddlm probe`` arguments for these UDM runs."""
    return ["probe", *(rel_run(n) for n in names), "--nfe", str(nfe), "--num-samples", str(PROBE_SAMPLES),
            "--positions", str(PROBE_POSITIONS), "--seed", "0", "--out", "results/probe"]


def stage_probe(study: Study) -> None:
    """The LOO probe of the finished UDM runs, remade when that set or their steps change."""
    names = study.ready([n for n in UDM_RUNS if n in study.runs], "probe")
    if not names:
        return
    path = RESULTS / "probe" / "probe.json"
    if path.exists():
        record = _read_json(path)
        made = {(Path(r["run"]).name, r["step"]) for r in record.get("runs", [])}
        if made == {(n, last_step(run_dir(n))) for n in names} and record["settings"]["nfe"] == study.probe_nfe:
            study.log(f"probe: done ({path.relative_to(WORKDIR)})")
            return
        study.log(f"probe: {path.relative_to(WORKDIR)} holds {sorted(made)}: remaking it for {names}")
    ddlm(probe_command(names, study.probe_nfe) + (["--overwrite"] if path.exists() else []) + ["--no-progress"],
         study.log)


# ---- sudoku ----------------------------------------------------------------------------------------

def sudoku_command(name: str, nfe: int, puzzles: int) -> list[str]:
    """The ``ddlm sudoku`` arguments of a run at one NFE."""
    return ["sudoku", rel_run(name), "--nfe", str(nfe), "--puzzles", str(puzzles), "--puzzle-seed", "0",
            "--seed", "0", "--out", f"results/sudoku/{name}-nfe{nfe}.json"]


def stage_sudoku(study: Study) -> None:
    """Sudoku accuracy of every finished Sudoku run at each NFE."""
    for name in study.ready([n for n in SUDOKU_RUNS if n in study.runs], "sudoku"):
        for nfe in SUDOKU_NFE:
            path = RESULTS / "sudoku" / f"{name}-nfe{nfe}.json"
            if path.exists() and _read_json(path).get("num_puzzles") != study.puzzles:
                study.log(f"sudoku {name} nfe {nfe}: {path.relative_to(WORKDIR)} has "
                          f"{_read_json(path).get('num_puzzles')} puzzles, not --puzzles {study.puzzles}: remaking it")
            elif _up_to_date(path, name, study.log, f"sudoku {name} nfe {nfe}"):
                continue
            ddlm(sudoku_command(name, nfe, study.puzzles) + (["--overwrite"] if path.exists() else [])
                 + ["--no-progress"], study.log)


# ---- report ----------------------------------------------------------------------------------------

def report_path() -> Path:
    """Where the report goes: docs/reproduction.md for the default workdir, WORKDIR/reproduction.md otherwise."""
    return ROOT.parent / "docs" / "reproduction.md" if WORKDIR == ROOT else WORKDIR / "reproduction.md"


def stage_report(study: Study) -> None:
    """``experiments/report.py`` on the results (writes the report only if its text changed)."""
    cmd = [sys.executable, str(ROOT / "report.py"), "--results", str(RESULTS), "--out", str(report_path())]
    study.log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


STAGES = {"train": stage_train, "bound": stage_bound, "frontier": stage_frontier, "probe": stage_probe,
          "sudoku": stage_sudoku, "report": stage_report}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=list(STAGES), action="append", help="run only these stages (repeatable)")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="only these runs")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every run's training steps (default 1)")
    p.add_argument("--workdir", default=str(ROOT),
                   help="folder of runs/ and results/, where the ddlm commands run (default: experiments/)")
    p.add_argument("--judge", default="smollm2",
                   help="judge of the frontiers: smollm2 (default), a Hugging Face folder or a ddlm AR run")
    p.add_argument("--num-samples", type=int, default=FRONTIER_SAMPLES,
                   help=f"samples per frontier point (default {FRONTIER_SAMPLES})")
    p.add_argument("--nfe", type=int, nargs="+", default=list(FRONTIER_NFE),
                   help="frontier NFE values (default 16 64 256)")
    p.add_argument("--temperature", type=float, nargs="+", default=list(FRONTIER_TEMPERATURES),
                   help="frontier temperatures (default 0.6 0.7 0.8 0.9 1.0 1.1)")
    p.add_argument("--comparisons", nargs="+", choices=list(COMPARISONS), default=list(COMPARISONS),
                   help="frontier stage: only these comparisons (e.g. to share them between two processes: "
                        "two processes must not work on the same comparison)")
    p.add_argument("--puzzles", type=int, default=SUDOKU_PUZZLES,
                   help=f"Sudoku test puzzles per run and NFE (default {SUDOKU_PUZZLES})")
    p.add_argument("--probe-nfe", type=int, default=PROBE_NFE,
                   help=f"forward passes of the probe's trajectory (default {PROBE_NFE})")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="[SCOPE:]KEY=VALUE",
                   help="extra `ddlm train` override for every run, or for SCOPE: the runs of a kind (text, sudoku) "
                        "or one run (its name); for tests and quick looks (it changes the runs, and a run refuses "
                        "to resume with another model, data or batch)")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error(f"--scale must be > 0, got {args.scale}")
    for name, value in (("--num-samples", args.num_samples), ("--puzzles", args.puzzles),
                        ("--probe-nfe", args.probe_nfe), *(("--nfe", n) for n in args.nfe)):
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if any(not t > 0 for t in args.temperature):
        p.error(f"--temperature values must be > 0, got {args.temperature}")
    for item in args.extra:
        scope, sep, rest = item.partition(":")
        if "=" not in item or (sep and "=" not in scope and scope not in ("text", "sudoku", *RUNS)):
            p.error(f"--set takes KEY=VALUE or SCOPE:KEY=VALUE with SCOPE text, sudoku or a run name, got {item!r}")
    set_workdir(args.workdir)
    WORKDIR.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    study = Study(runs=args.runs, scale=args.scale, judge=args.judge, num_samples=args.num_samples, nfe=args.nfe,
                  temperatures=args.temperature, puzzles=args.puzzles, probe_nfe=args.probe_nfe, extra=args.extra,
                  comparisons=args.comparisons, log=log)
    try:
        for stage in args.stage or list(STAGES):
            STAGES[stage](study)
    except StudyError as e:
        log(f"error: {e}")
        return 2
    except subprocess.CalledProcessError as e:
        log(f"error: {' '.join(map(str, e.cmd))} failed with exit status {e.returncode} (its output is above); "
            "fix the cause and run the study again: it resumes where it stopped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
