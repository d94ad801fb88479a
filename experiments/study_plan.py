"""The reproduction study's plan: its runs, their settings, and the exact ``ddlm`` command of every
stage (``experiments/study.py`` runs them, ``experiments/report.py`` prints them), with the rules
that tell which points of a frontier CSV a command makes and which UDM run is the best.

Nothing here depends on the study's working folder: commands name runs as ``runs/<name>`` and results
as ``results/...``, relative to it.

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

import csv
import json
from dataclasses import dataclass
from pathlib import Path

#: the ``experiments/`` folder
ROOT = Path(__file__).resolve().parent

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

#: training seeds of every run whose bound enters a verdict (claims 1a, 1b and 3a): seed 0 is the run
#: itself, seed s > 0 the replicate "NAME-seedS" (same config, ``seed=s``: another initialisation, data
#: order, times and corruption; the default corpus's validation split does not depend on the seed, so
#: every replicate is measured on the same validation blocks)
SEEDS = (0, 1, 2)
SEEDED_RUNS = (*UDM_RUNS, "mdm", "audm")


def replicate(name: str, seed: int) -> str:
    """The run name of ``name`` trained with ``seed`` (``name`` itself for seed 0)."""
    return name if seed == 0 else f"{name}-seed{seed}"


def replicates(name: str) -> tuple[str, ...]:
    """Every training seed's run of ``name`` (just ``name`` for a run that is not replicated)."""
    return tuple(replicate(name, s) for s in SEEDS) if name in SEEDED_RUNS else (name,)


def frontier_run(name: str) -> str:
    """The run the frontier stage samples for the configuration ``name``: its replicate with training seed
    ``FRONTIER_TRAINING_SEED`` (``name`` itself for a run that is not replicated, e.g. the AR run)."""
    return replicate(name, FRONTIER_TRAINING_SEED) if name in SEEDED_RUNS else name


def base_run(name: str) -> str:
    """The run a replicate repeats (``name`` itself for a seed-0 run)."""
    head, sep, tail = name.rpartition("-seed")
    return head if sep and tail.isdigit() and head in SEEDED_RUNS else name


#: in training order: the runs of claim 3a first (the closest call of the first study), then claim 1's
REPLICATES = tuple(replicate(n, s) for s in SEEDS[1:] for n in ("mdm", "audm", *UDM_RUNS))
RUNS.update({r: (RUNS[base_run(r)][0], [*RUNS[base_run(r)][1], f"seed={r.rpartition('-seed')[2]}"],
                 RUNS[base_run(r)][2]) for r in REPLICATES})

#: bound stage: passes over the validation split (diffusion runs; the AR run's exact NLL gets one)
BOUND_PASSES = 4
#: training seed of the runs the frontier stage samples: 1, so that the 128-sample frontiers are drawn from
#: models and with sampling draws that nobody had seen when the primary comparisons were declared (the
#: first study's 64-sample frontiers sampled the seed-0 runs; their points stay in the CSVs, and the report
#: compares seed-0 curves only where a comparison has no seed-1 curves)
FRONTIER_TRAINING_SEED = 1
#: frontier stage defaults (the issue's grid)
FRONTIER_NFE = (16, 64, 256)
FRONTIER_TEMPERATURES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
#: samples per frontier point: every comparison's curves decide a part of a verdict (issue 17: >= 128)
FRONTIER_SAMPLES = 128
#: samples of a top-up: the points of a comparison whose z = difference / SE sits near a decision
#: threshold (``near_threshold``) are drawn again with this many samples, and the report uses them
TOPUP_SAMPLES = 256
#: sampling seed of the frontier points: 1, so that the 128-sample points are fresh draws (the first
#: study's 64-sample points, seen before the primary comparisons were declared, used seed 0; with the
#: same seed the new points would repeat their first 64 samples)
FRONTIER_SEED = 1
#: |z| range of "near a threshold" around Z = 2 (the "better"/"against" line; Holm's thresholds of a
#: family of up to 12 one-sided tests lie between z = 1.64 and 2.87)
NEAR = (1.0, 3.5)
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


def rel_run(name: str) -> str:
    """The run's folder as the study's commands name it (relative to the working folder)."""
    return f"runs/{name}"


def autoregressive(name: str) -> bool:
    """Whether a run of the study is the autoregressive baseline (its packaged config, ``demo-ar``, has
    process "ar"): one pass per token, so no NFE, and an exact NLL rather than a bound."""
    return RUNS[name][0] == "demo-ar"


def steps_of(name: str, scale: float) -> int:
    """The run's training steps at this scale."""
    base = SUDOKU_STEPS if RUNS[name][2] == "sudoku" else TEXT_STEPS
    return max(1, round(base * scale))


def read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StudyError(f"result file {str(path)!r} is unreadable: {e}; delete it to remake it") from e


# ---- commands ---------------------------------------------------------------------------------------

def bound_passes(name: str) -> int:
    """Passes of the bound over the validation split: ``BOUND_PASSES`` with fresh Monte-Carlo draws
    each (per-batch ELBO values are heavy-tailed), one for the autoregressive run's exact NLL (no
    Monte-Carlo noise: repeating it would copy the same batches and shrink the standard error)."""
    return 1 if autoregressive(name) else BOUND_PASSES


def bound_command(name: str) -> list[str]:
    """The ``ddlm eval`` arguments of a run's bound (without ``--overwrite``/``--no-progress``)."""
    return ["eval", rel_run(name), "--passes", str(bound_passes(name)), "--seed", "0",
            "--out", f"results/bound/{name}.json"]


# ---- frontier ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrontierCall:
    """One ``ddlm frontier`` invocation: runs, the options that distinguish its curves, its folder."""

    comparison: str
    runs: tuple[str, ...]
    options: tuple[str, ...] = ()

    def argv(self, nfe, temperatures, judge: str, num_samples: int, seed: int = FRONTIER_SEED) -> list[str]:
        """The full ``ddlm frontier`` arguments (without ``--no-progress``); ``seed`` the sampling seed."""
        return ["frontier", *(rel_run(r) for r in self.runs), "--labels", *self.runs, *self.options,
                "--nfe", *(str(n) for n in nfe), "--temperature", *(f"{t:g}" for t in temperatures),
                "--judge", judge, "--num-samples", str(num_samples), "--seed", str(seed),
                "--out", f"results/frontier/{self.comparison}"]

    def option(self, flag: str) -> str | None:
        """The value of ``flag`` in ``options`` (None if absent)."""
        return self.options[self.options.index(flag) + 1] if flag in self.options else None


def frontier_calls(text_runs: list[str], best_udm: str | None, audm: str | None,
                   mdm: str | None) -> list[FrontierCall]:
    """Every ``ddlm frontier`` invocation of the stage.

    Args:
        text_runs: finished text runs for the all-runs ancestral comparison (AR included).
        best_udm: the run sampled for the UDM configuration with the lowest bound, or None to leave out
            its comparisons.
        audm, mdm: the AUDM and MDM runs of the AUDM/ReAUDM and MDM/ReMDM comparisons (None: left out).
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
    if audm is not None:
        calls.append(FrontierCall("audm-reaudm", (audm,)))
        calls.append(FrontierCall("audm-reaudm", (audm,), ("--sampler", "reaudm")))
    if mdm is not None:
        calls.append(FrontierCall("mdm-remdm", (mdm,)))
        calls.append(FrontierCall("mdm-remdm", (mdm,), ("--sampler", "remdm", "--remasking", REMASKING)))
    return calls


def near_threshold(z: float) -> bool:
    """Whether a comparison's z (difference / SE) sits near a decision threshold (see ``NEAR``)."""
    return NEAR[0] <= abs(z) <= NEAR[1]


def part_calls(key: str, best: str | None) -> list[FrontierCall]:
    """The ``ddlm frontier`` calls (one per curve of A and of B) behind a frontier part of the report
    (``report_claims.parts_of`` keys), on the runs the frontier stage samples (``frontier_run``); ``best``
    is the best UDM configuration; [] for a part that is not a frontier or needs the best UDM run."""
    pc = ("--corrector-sweeps", str(CORRECTOR_SWEEPS), "--corrector-k", str(CORRECTOR_K), "--corrector-selection")
    f = frontier_run
    fixed = {"1c": [FrontierCall("ancestral", (f("udm-loo-elbo"), f("udm-denoiser-elbo")))],
             "3b": [FrontierCall("ancestral", (f("audm"), f("mdm")))],
             "3c": [FrontierCall("audm-reaudm", (f("audm"),), ("--sampler", "reaudm")),
                    FrontierCall("mdm-remdm", (f("mdm"),), ("--sampler", "remdm", "--remasking", REMASKING))]}
    if key in fixed:
        return fixed[key]
    if best is None:
        return []
    b = (f(best),)
    if key.startswith("2a-"):
        return [FrontierCall("udm-pc", b, (*pc, key[3:])), FrontierCall("udm-pc", b)]
    raw = ("--sampler", "bridge_raw_denoiser")
    return {"1e": [FrontierCall("udm-ablation", b), FrontierCall("udm-ablation", b, raw)],
            "2b": [FrontierCall("udm-temperature", b, ("--temperature-on", "loo")),
                   FrontierCall("udm-temperature", b, ("--temperature-on", "denoiser"))]}.get(key, [])


def best_udm_config(nats: dict[str, float]) -> str:
    """The UDM configuration with the lowest bound averaged over its seeds, from ``nats`` (run name ->
    nats/token, the seed-0 runs of ``UDM_RUNS`` required, replicates where present)."""
    def mean(n):
        values = [nats[r] for r in replicates(n) if r in nats]
        return sum(values) / len(values)
    return min(UDM_RUNS, key=mean)


def best_udm_run(results: Path) -> str:
    """The UDM configuration with the lowest validation bound (nats/token) in ``results/bound``, averaged
    over its training seeds that have a bound (seed 0's bound is required).

    Raises:
        StudyError: a bound of the four UDM runs is missing (the files are named).
    """
    folder = Path(results) / "bound"
    missing = [str(folder / f"{n}.json") for n in UDM_RUNS if not (folder / f"{n}.json").exists()]
    if missing:
        raise StudyError(f"the best UDM run is chosen by the bounds of {', '.join(UDM_RUNS)}, but {missing} "
                         "do not exist; run the bound stage first (--stage bound)")
    return best_udm_config({r: read_result(folder / f"{r}.json")["nats_per_token"] for n in UDM_RUNS
                            for r in replicates(n) if (folder / f"{r}.json").exists()})


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


def row_matches(row: dict, run: str, step: int, call: FrontierCall, nfe, temperature: float,
                num_samples: int, seed: int = FRONTIER_SEED) -> bool:
    """Whether a frontier CSV row is the point (run, nfe, temperature) of ``call`` with this sampling seed."""
    ar = autoregressive(run)
    sampler = "ancestral" if ar else (call.option("--sampler") or "ancestral")
    corrector = json.loads(row["corrector"]) if row["corrector"] else None
    remasking = json.loads(row["remasking"]) if row["remasking"] else None
    want_corrector = None if ar or call.option("--corrector-sweeps") is None else {
        "sweeps": int(call.option("--corrector-sweeps")), "k": int(call.option("--corrector-k")),
        "selection": call.option("--corrector-selection")}
    return (row["run"] == rel_run(run) and row["step"] == str(step) and row["sampler"] == sampler
            and row["nfe"] == ("" if ar else str(nfe)) and float(row["temperature"]) == temperature
            and float(row["top_p"]) == 1.0 and row["seed"] == str(seed)
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
        nfes = [None] if autoregressive(run) else nfe
        for n in nfes:
            for t in temperatures:
                if not any(row_matches(r, run, steps[run], call, n, t, num_samples) for r in rows):
                    missing += 1
    return missing


def read_frontier(folder: Path) -> list[dict]:
    """Rows of ``folder/frontier.csv`` ([] if absent)."""
    path = folder / "frontier.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reuse_points(call: FrontierCall, results: Path, steps: dict[str, int], nfe, temperatures, num_samples: int,
                 judge: str, log) -> int:
    """Copy into ``call``'s CSV (under the ``results`` folder) the points it needs that another comparison
    already scored with the very same settings (run, checkpoint, sampler, NFE, temperature, seed, judge, ...:
    the row's whole key), with their samples file, so that ``ddlm frontier`` skips them instead of drawing and
    judging them again.

    The comparisons of one run overlap (the best UDM run's plain ancestral curve is in ``ancestral``,
    ``udm-pc`` and ``udm-ablation``); draws are seeded, so a recomputed point would be the same. Returns
    the number of rows copied.
    """
    import shutil

    from ddlm.evaluate.frontier import append_row, point_key

    folder = Path(results) / "frontier" / call.comparison
    have = {point_key(r) for r in read_frontier(folder)}
    copied = 0
    for other in COMPARISONS:
        source = Path(results) / "frontier" / other
        if other == call.comparison:
            continue
        for row in read_frontier(source):
            key = point_key(row)
            if key in have or not judge_matches(judge, row["judge"]):
                continue
            run = Path(row["run"]).name
            if run not in call.runs or not any(
                    row_matches(row, run, steps[run], call, n, t, num_samples)
                    for n in ([None] if autoregressive(run) else nfe) for t in temperatures):
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


def probe_command(names: list[str], nfe: int = PROBE_NFE) -> list[str]:
    """The ``ddlm probe`` arguments for these UDM runs."""
    return ["probe", *(rel_run(n) for n in names), "--nfe", str(nfe), "--num-samples", str(PROBE_SAMPLES),
            "--positions", str(PROBE_POSITIONS), "--seed", "0", "--out", "results/probe"]


def sudoku_command(name: str, nfe: int, puzzles: int) -> list[str]:
    """The ``ddlm sudoku`` arguments of a run at one NFE."""
    return ["sudoku", rel_run(name), "--nfe", str(nfe), "--puzzles", str(puzzles), "--puzzle-seed", "0",
            "--seed", "0", "--out", f"results/sudoku/{name}-nfe{nfe}.json"]
