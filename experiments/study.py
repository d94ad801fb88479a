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

The stages (``train``, ``bound``, ``frontier``, ``probe``, ``sudoku``, ``report``) and the exact command
of each are in ``experiments/study_plan.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from study_plan import (
    COMMON,
    COMPARISONS,
    FRONTIER_NFE,
    FRONTIER_SAMPLES,
    FRONTIER_TEMPERATURES,
    PROBE_NFE,
    ROOT,
    RUNS,
    SUDOKU,
    SUDOKU_NFE,
    SUDOKU_PUZZLES,
    SUDOKU_RUNS,
    TEXT,
    TEXT_RUNS,
    TOPUP_SAMPLES,
    UDM_RUNS,
    FrontierCall,
    StudyError,
    base_run,
    best_udm_run,
    bound_command,
    frontier_calls,
    frontier_run,
    judge_matches,
    judge_spec,
    missing_points,
    near_threshold,
    part_calls,
    probe_command,
    read_frontier,
    read_result,
    rel_run,
    reuse_points,
    steps_of,
    sudoku_command,
)

RUNS_DIR = ROOT / "runs"
RESULTS = ROOT / "results"
#: the folder ``ddlm`` commands run in (``set_workdir``); RUNS_DIR and RESULTS live in it
WORKDIR = ROOT

def set_workdir(workdir: str | os.PathLike) -> None:
    """Put the runs (``runs/``), results (``results/``) and the commands' working folder under ``workdir``."""
    global WORKDIR, RUNS_DIR, RESULTS
    WORKDIR = Path(workdir).resolve()
    RUNS_DIR, RESULTS = WORKDIR / "runs", WORKDIR / "results"


def run_dir(name: str) -> Path:
    """The run's folder (absolute, under the working folder)."""
    return RUNS_DIR / name


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
    failing loudly; a finished command's wall time is appended to ``results/times.jsonl`` (the
    report's compute table)."""
    log("+ ddlm " + " ".join(args))
    start = time.time()
    subprocess.run([sys.executable, "-m", "ddlm", *args], check=True, cwd=WORKDIR)
    seconds = time.time() - start
    log(f"  ({seconds / 60:.1f} min)")
    record_time(args, seconds)


def record_time(args: list[str], seconds: float) -> None:
    """Append one finished command's wall time to ``results/times.jsonl`` (flushed to disk)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"command": args[0], "argv": args, "seconds": round(seconds, 1),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count()})
    with open(RESULTS / "times.jsonl", "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


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


def _up_to_date(path: Path, name: str, log, what: str) -> bool:
    """True when the result file exists and was made from the run's current checkpoint (its ``run.step``)."""
    if not path.exists():
        return False
    step = read_result(path).get("run", {}).get("step")
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
    the run's step changed.

    Raises:
        StudyError: the run was trained again (e.g. its folder was lost and the study retrained it) to
            other weights than the recorded ones: the same step, another last validation bound. Training
            is deterministic on one machine and torch version, so a retrained run normally matches its
            record and the results made from it stay valid; when it does not, they must be remade."""
    ckpt = latest_ckpt(run_dir(name))
    if ckpt is None:
        return None
    path = RESULTS / "train" / f"{name}.json"
    from ddlm.checkpoint import checkpoint_step

    step = checkpoint_step(ckpt)
    trainer = json.loads((ckpt / "trainer.json").read_text())
    if path.exists() and read_result(path).get("step") == step:
        recorded, now = read_result(path).get("val_nll"), (trainer.get("metrics") or {}).get("val_nll")
        if recorded is not None and now is not None and recorded != now:
            raise StudyError(f"run {name} was trained again to other weights than the results under "
                             f"{RESULTS.relative_to(WORKDIR)} were made from (its last validation bound in training "
                             f"is {now!r}, the training record says {recorded!r}): delete {path} and the run's "
                             "bound, probe, sudoku and frontier results to remake them from this run")
        return path
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

def stage_bound(study: Study) -> None:
    """The validation bound of every finished run."""
    for name in study.ready([n for n in RUNS if n in study.runs], "bound"):
        path = RESULTS / "bound" / f"{name}.json"
        if _up_to_date(path, name, study.log, f"bound {name}"):
            continue
        ddlm(bound_command(name) + (["--overwrite"] if path.exists() else []) + ["--no-progress"], study.log)


# ---- frontier --------------------------------------------------------------------------------------

def stage_frontier(study: Study) -> None:
    """Every comparison of ``frontier_calls`` whose points are not all in its CSV yet."""
    judge = judge_spec(study.judge)
    text = study.ready([r for r in (frontier_run(n) for n in TEXT_RUNS) if r in study.runs], "frontier")
    best = None
    if all((RESULTS / "bound" / f"{n}.json").exists() for n in UDM_RUNS):
        best = frontier_run(best_udm_run(RESULTS))
        study.log(f"frontier: best UDM configuration by bound: {base_run(best)} (sampled: run {best})")
        if best not in text:
            study.log(f"frontier: {best} is not among --runs or not trained: comparisons udm-pc, udm-temperature "
                      "and udm-ablation skipped")
            best = None
    else:
        study.log("frontier udm-pc, udm-temperature, udm-ablation: skipped until the bounds of the four UDM runs "
                  "exist (the best of them by bound is compared)")
    steps = {n: last_step(run_dir(n)) for n in text}
    audm, mdm = frontier_run("audm"), frontier_run("mdm")
    calls = [c for c in frontier_calls(text, best, audm if audm in text else None, mdm if mdm in text else None)
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
        if reuse_points(call, RESULTS, steps, study.nfe, study.temperatures, study.num_samples, judge, study.log):
            rows = read_frontier(folder)
        todo = missing_points(call, rows, steps, study.nfe, study.temperatures, study.num_samples)
        if todo == 0:
            study.log(f"frontier {' '.join((call.comparison, *call.runs, *call.options))}: done")
            continue
        ddlm(argv + ["--no-progress"], study.log)


# ---- frontier top-up ---------------------------------------------------------------------------------

def topup_calls(study: Study) -> list[tuple[FrontierCall, int]]:
    """(call, NFE) of every frontier comparison of the report whose z sits near a decision threshold
    (``near_threshold``), measured on the plan's points (not ``prior``)."""
    from report_claims import best_udm, load_results, parts_of

    res = load_results(RESULTS)
    best = best_udm(res)
    out = []
    for part in parts_of(res):
        for c in part.comparisons:
            if not c.measured or c.prior or not near_threshold(c.diff / c.se) or not c.label.startswith("NFE "):
                continue  # (a prior comparison: the first study's points, not the plan's, are not topped up)
            nfe = int(c.label.split()[1])
            for call in part_calls(part.key, best):
                if (call, nfe) not in out:
                    out.append((call, nfe))
    return out


def stage_topup(study: Study) -> None:
    """Draw again, with ``TOPUP_SAMPLES`` samples, the frontier points of the comparisons near a threshold
    (the report then uses the points with the most samples)."""
    judge = judge_spec(study.judge)
    for call, nfe in topup_calls(study):
        if call.comparison not in study.comparisons or any(r not in study.runs for r in call.runs):
            continue
        steps = {n: last_step(run_dir(n)) for n in call.runs}
        if any(v is None for v in steps.values()):
            study.log(f"topup {call.comparison} {' '.join(call.runs)}: skipped, a run has no checkpoint")
            continue
        rows = read_frontier(RESULTS / "frontier" / call.comparison)
        if missing_points(call, rows, steps, [nfe], study.temperatures, TOPUP_SAMPLES) == 0:
            study.log(f"topup {' '.join((call.comparison, *call.runs, *call.options))} NFE {nfe}: done")
            continue
        ddlm(call.argv([nfe], study.temperatures, judge, TOPUP_SAMPLES) + ["--no-progress"], study.log)


# ---- probe -----------------------------------------------------------------------------------------

def stage_probe(study: Study) -> None:
    """The LOO probe of the finished UDM runs, remade when that set or their steps change."""
    names = study.ready([n for n in UDM_RUNS if n in study.runs], "probe")
    if not names:
        return
    path = RESULTS / "probe" / "probe.json"
    if path.exists():
        record = read_result(path)
        made = {(Path(r["run"]).name, r["step"]) for r in record.get("runs", [])}
        if made == {(n, last_step(run_dir(n))) for n in names} and record["settings"]["nfe"] == study.probe_nfe:
            study.log(f"probe: done ({path.relative_to(WORKDIR)})")
            return
        study.log(f"probe: {path.relative_to(WORKDIR)} holds {sorted(made)}: remaking it for {names}")
    ddlm(probe_command(names, study.probe_nfe) + (["--overwrite"] if path.exists() else []) + ["--no-progress"],
         study.log)


# ---- sudoku ----------------------------------------------------------------------------------------

def stage_sudoku(study: Study) -> None:
    """Sudoku accuracy of every finished Sudoku run at each NFE."""
    for name in study.ready([n for n in SUDOKU_RUNS if n in study.runs], "sudoku"):
        for nfe in SUDOKU_NFE:
            path = RESULTS / "sudoku" / f"{name}-nfe{nfe}.json"
            if path.exists() and read_result(path).get("num_puzzles") != study.puzzles:
                study.log(f"sudoku {name} nfe {nfe}: {path.relative_to(WORKDIR)} has "
                          f"{read_result(path).get('num_puzzles')} puzzles, not --puzzles {study.puzzles}: remaking it")
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


STAGES = {"train": stage_train, "bound": stage_bound, "frontier": stage_frontier, "topup": stage_topup,
          "probe": stage_probe, "sudoku": stage_sudoku, "report": stage_report}


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
