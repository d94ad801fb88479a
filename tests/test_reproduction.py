"""The reproduction study (experiments/study.py, study_plan.py, report.py, report_rules.py, report_claims.py):
the committed report matches the committed results, the verdict rules on synthetic numbers, and an
end-to-end run of the study on tiny runs (resumed without redoing anything)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import report as R  # noqa: E402
import report_claims as C  # noqa: E402
import report_rules as V  # noqa: E402
import study as S  # noqa: E402
import study_plan as P  # noqa: E402

# ---- (a) the committed report is what the committed results give ------------------------------------

def test_committed_report_matches_results():
    results, doc = EXPERIMENTS / "results", ROOT / "docs" / "reproduction.md"
    text = R.render(results, doc)
    assert set(R.tables_in(text)) >= {"verdicts", "training", "bound", "probe", "sudoku"}
    if not doc.exists():  # nothing committed yet: the (possibly empty) results still give a report
        return
    committed = doc.read_text()
    got, want = R.tables_in(text), R.tables_in(committed)
    assert sorted(want) == sorted(got), "docs/reproduction.md has other tables than the results give"
    for name in got:
        assert want[name] == got[name], (f"table {name!r} of docs/reproduction.md differs from what "
                                         "experiments/results/ gives: run experiments/report.py")
    assert committed == text, ("docs/reproduction.md differs from what experiments/results/ gives: "
                               "run experiments/report.py")


def test_a_claim_with_parts_still_to_measure_is_provisional(tmp_path):
    (tmp_path / "bound").mkdir()
    template = json.loads((EXPERIMENTS / "results" / "bound" / "mdm.json").read_text())
    for name, bits in (("udm-loo-elbo", 2.9), ("udm-denoiser-elbo", 3.1)):  # 1a decided, the rest missing
        nats = bits * math.log(2)
        (tmp_path / "bound" / f"{name}.json").write_text(json.dumps(
            {**template, "nats_per_token": nats, "nats_per_char": nats, "bits_per_char": bits, "bits_per_token": bits,
             "bits_per_char_se": 0.02, "bits_per_token_se": 0.02, "se": 0.014}))
    rows = [line for line in R.render(tmp_path, tmp_path / "r.md").splitlines() if line.startswith("| claim ")]
    one = next(line for line in rows if line.startswith("| claim 1 |"))
    assert "**reproduced** (provisional)" in one and "1 of its 5 parts measured" in one, one
    assert all("provisional" not in line for line in rows if not line.startswith("| claim 1 |"))


def test_report_of_no_results_is_all_not_measured(tmp_path):
    text = R.render(tmp_path / "results", tmp_path / "reproduction.md")
    verdicts = R.tables_in(text)["verdicts"]
    assert V.MISSING in verdicts
    for v in (V.REPRODUCED, V.NOT_REPRODUCED, V.INCONCLUSIVE):
        assert f"| {v} |" not in verdicts and f"**{v}**" not in verdicts


# ---- (b) verdict rules --------------------------------------------------------------------------------

def test_outcome_respects_the_standard_error():
    assert V.outcome(-0.3, 0.1) == V.BETTER
    assert V.outcome(-0.3, 0.2) == V.TIE  # the same difference within 2 SE
    assert V.outcome(0.3, 0.1) == V.WORSE
    assert V.outcome(0.19, 0.1) == V.TIE
    assert V.outcome(0.0, 0.0) == V.TIE
    assert V.outcome(0.1, None) == V.UNDECIDED
    assert V.outcome(None, 0.1) == V.UNDECIDED
    # matches or beats, tolerance 0.1: worse by 0.05 +- 0.02 is a match, by 0.05 +- 0.05 undecided
    assert V.outcome(0.05, 0.02, 0.1) == V.MATCH
    assert V.outcome(0.05, 0.05, 0.1) == V.UNDECIDED
    assert V.outcome(0.25, 0.05, 0.1) == V.WORSE
    assert V.outcome(-0.25, 0.05, 0.1) == V.BETTER


def test_verdict_rules_reach_every_verdict():
    b, w, t, u = V.BETTER, V.WORSE, V.TIE, V.UNDECIDED
    better = {(b,): V.REPRODUCED, (b, t): V.REPRODUCED, (w,): V.NOT_REPRODUCED, (w, t): V.NOT_REPRODUCED,
              (t,): V.INCONCLUSIVE, (b, w): V.INCONCLUSIVE, (u,): V.INCONCLUSIVE, (): V.MISSING}
    for outcomes, want in better.items():
        assert V.verdict_better(list(outcomes)) == want, outcomes
    m = V.MATCH
    match = {(m,): V.REPRODUCED, (b,): V.REPRODUCED, (m, u): V.REPRODUCED, (w,): V.NOT_REPRODUCED,
             (w, u): V.NOT_REPRODUCED, (m, w): V.INCONCLUSIVE, (u,): V.INCONCLUSIVE, (): V.MISSING}
    for outcomes, want in match.items():
        assert V.verdict_match(list(outcomes)) == want, outcomes
    combine = {(V.REPRODUCED, V.MISSING): V.REPRODUCED, (V.REPRODUCED, V.INCONCLUSIVE): V.REPRODUCED,
               (V.NOT_REPRODUCED,): V.NOT_REPRODUCED, (V.REPRODUCED, V.NOT_REPRODUCED): V.INCONCLUSIVE,
               (V.INCONCLUSIVE,): V.INCONCLUSIVE, (V.MISSING, V.MISSING): V.MISSING}
    for verdicts, want in combine.items():
        assert V.combine(list(verdicts)) == want, verdicts


def _bound(bpc, se):
    return {"bits_per_char": bpc, "bits_per_char_se": se}


@pytest.mark.parametrize("loo, den, se, want", [
    (2.00, 2.10, 0.02, V.REPRODUCED),      # lower by 0.10 > 2 x 0.028
    (2.00, 2.10, 0.05, V.INCONCLUSIVE),    # same gap, within 2 combined SE (0.141)
    (2.10, 2.00, 0.02, V.NOT_REPRODUCED),
])
def test_bound_claim(loo, den, se, want):
    res = C.Results(Path("."), bound={"udm-loo-elbo": _bound(loo, se), "udm-denoiser-elbo": _bound(den, se)})
    evidence, verdict = C.bound_part(res, "udm-loo-elbo", "udm-denoiser-elbo", "better")
    assert verdict == want, evidence
    assert C.bound_part(C.Results(Path(".")), "udm-loo-elbo", "udm-denoiser-elbo", "better")[1] == V.MISSING


@pytest.mark.parametrize("audm, se, want", [
    (1.90, 0.02, V.REPRODUCED),       # better
    (2.05, 0.02, V.REPRODUCED),       # worse by 0.03 + 2 x 0.028 < tolerance 0.1: a match
    (2.10, 0.02, V.INCONCLUSIVE),     # worse by 0.08: within the tolerance, but not with 2 SE to spare
    (2.05, 0.10, V.INCONCLUSIVE),     # too noisy to tell
    (2.30, 0.02, V.NOT_REPRODUCED),   # worse by more than the tolerance
])
def test_match_claim_on_bounds(audm, se, want):
    res = C.Results(Path("."), bound={"audm": _bound(audm, se), "mdm": _bound(2.02, se)})
    assert V.TOLERANCE["bound"] == 0.1
    assert C.bound_part(res, "audm", "mdm", "match")[1] == want


def test_objectives_disagree_rule():
    b = {"udm-loo-elbo": 2.0, "udm-denoiser-elbo": 2.3, "udm-loo-ce": 2.2, "udm-denoiser-ce": 2.1}
    res = C.Results(Path("."), bound={k: _bound(v, 0.02) for k, v in b.items()})
    assert C.interaction_part(res)[1] == V.REPRODUCED  # D = 0.3 - (-0.1) = 0.4 > 2 x 0.04
    res.bound = {k: _bound(v, 0.2) for k, v in b.items()}
    assert C.interaction_part(res)[1] == V.INCONCLUSIVE  # 0.4 < 2 x 0.4


def test_interpolation_and_matched_entropy():
    value, factor = V.interpolate([(1.0, 0.0), (2.0, 1.0)], 1.5)
    assert value == pytest.approx(0.5) and factor == pytest.approx(math.sqrt(0.5))
    assert V.interpolate([(1.0, 0.0), (2.0, 1.0)], 2.5) is None
    assert V.interpolate([(1.0, 3.0)], 1.0) == (3.0, 1.0)

    def curve(lo, hi):
        return V.Curve("r", "ancestral", 16, "", None, None, [(lo, 0.0), (hi, 0.0)])

    assert V.common_entropy([curve(1, 3), curve(2, 4)]) == pytest.approx(2.5)
    assert V.common_entropy([curve(1, 2), curve(3, 4)]) is None
    assert V.matched_entropy([curve(1, 3), curve(2, 4)]) == pytest.approx(2.5)  # all overlap: the common range
    assert V.matched_entropy([curve(1, 3), curve(2, 4), curve(5, 6)]) == pytest.approx(2.5)  # most curves


def _frontier_rows(run, offset, noise, nfes=(16, 64), temps=(0.6, 0.7, 0.8, 0.9, 1.0, 1.1), **extra):
    """Synthetic frontier rows: log gen-PPL = 4 + offset + (H - 3)^2 + alternating noise, H rising with T."""
    rows = []
    for nfe in nfes:
        for j, t in enumerate(temps):
            h = 2.5 + t
            y = 4 + offset + (h - 3) ** 2 + noise * (-1) ** j
            rows.append({"run": f"runs/{run}", "step": "100", "sampler": "ancestral", "nfe": str(nfe),
                         "temperature": repr(t), "temperature_on": "", "corrector": "", "remasking": "",
                         "entropy": repr(h), "gen_ppl": repr(math.exp(y)), "seconds": "1.0", **extra})
    return rows


@pytest.mark.parametrize("offset, noise, want", [(-0.2, 0.02, V.REPRODUCED), (-0.2, 0.3, V.INCONCLUSIVE),
                                                 (0.2, 0.02, V.NOT_REPRODUCED), (0.0, 0.02, V.INCONCLUSIVE)])
def test_frontier_claim_at_matched_entropy(offset, noise, want):
    rows = _frontier_rows("udm-loo-elbo", offset, noise) + _frontier_rows("udm-denoiser-elbo", 0.0, noise)
    curves = V.curves_of(rows)
    sigma = V.noise_sigma(curves)
    evidence, verdict = C.frontier_part(curves, curves, sigma, "udm-loo-elbo", "udm-denoiser-elbo", {}, {}, "better")
    assert verdict == want, evidence
    assert "NFE 16" in evidence and "NFE 64" in evidence


def test_frontier_without_overlap_or_noise_estimate_is_undecided():
    a = _frontier_rows("audm", -1.0, 0.01, temps=(0.6, 0.7))
    b = [dict(r, run="runs/mdm", entropy=repr(float(r["entropy"]) + 5)) for r in _frontier_rows("mdm", 0.0, 0.01)]
    curves = V.curves_of(a + b)
    assert V.noise_sigma(V.curves_of(a)) is None  # 2-point curves: no degrees of freedom
    evidence, verdict = C.frontier_part(curves, curves, V.noise_sigma(curves), "audm", "mdm", {}, {}, "match")
    assert verdict == V.INCONCLUSIVE and "no common entropy range" in evidence


def test_probe_se_is_the_conservative_bound():
    rec = {"mean_tv": 0.1, "states": [{"se_tv": 0.1}, {"se_tv": 0.3}]}
    assert V.probe_mean(rec) == (0.1, pytest.approx(0.2))  # mean of the SEs, not sqrt(0.1^2 + 0.3^2) / 2
    assert V.probe_mean({"mean_tv": 0.1, "states": [{"se_tv": 0.1}, {"se_tv": None}]})[1] is None


def test_sudoku_claim_uses_binomial_se():
    def rec(exact, n=200):
        return {"num_puzzles": n, "num_exact": exact, "accuracy": exact / n, "cell_accuracy": 0.5}

    res = C.Results(Path("."), sudoku={("sudoku-audm", 16): rec(100), ("sudoku-mdm", 16): rec(60)})
    assert C.sudoku_part(res)[1] == V.REPRODUCED
    res.sudoku = {("sudoku-audm", 16): rec(60), ("sudoku-mdm", 16): rec(100)}
    assert C.sudoku_part(res)[1] == V.NOT_REPRODUCED
    res.sudoku = {("sudoku-audm", 16): rec(190, 400), ("sudoku-mdm", 16): rec(196, 400)}
    assert C.sudoku_part(res)[1] == V.REPRODUCED  # 1.5 points below: within the 0.1 tolerance with 2 SE to spare
    res.sudoku = {("sudoku-audm", 16): rec(95), ("sudoku-mdm", 16): rec(98)}
    assert C.sudoku_part(res)[1] == V.INCONCLUSIVE  # the same with 200 puzzles: 2 SE alone is 0.1
    res.sudoku = {("sudoku-audm", 16): rec(0, 4), ("sudoku-mdm", 16): rec(0, 4)}
    assert C.sudoku_part(res)[1] == V.INCONCLUSIVE  # 4 puzzles: equal, but too few to tell
    assert V.accuracy_se(rec(0)) > 0
    res.sudoku = {("sudoku-audm", 16): rec(1, 400), ("sudoku-mdm", 16): rec(0, 400)}
    evidence, verdict = C.sudoku_part(res)
    assert verdict == V.INCONCLUSIVE and "neither solves puzzles" in evidence  # at the floor: not a match
    res.sudoku = {("sudoku-audm", 16): rec(40, 400), ("sudoku-mdm", 16): rec(0, 400)}
    assert C.sudoku_part(res)[1] == V.REPRODUCED  # one run above the floor: compared


# ---- study helpers ------------------------------------------------------------------------------------

def test_frontier_calls_cover_every_comparison():
    calls = P.frontier_calls(list(P.TEXT_RUNS), "udm-loo-ce", True, True)
    assert {c.comparison for c in calls} == set(P.COMPARISONS)
    pc = [c for c in calls if c.comparison == "udm-pc"]
    assert [c.option("--corrector-selection") for c in pc] == [None, *P.SELECTIONS, None]
    assert pc[-1].option("--sampler") == "max_coupling" and all(c.runs == ("udm-loo-ce",) for c in pc)
    argv = calls[0].argv([16, 64], [0.6, 1.0], "smollm2", 64)
    assert argv[:3] == ["frontier", "runs/udm-loo-elbo", "runs/udm-denoiser-elbo"]
    assert argv[argv.index("--nfe"):argv.index("--nfe") + 3] == ["--nfe", "16", "64"]
    assert argv[-2:] == ["--out", "results/frontier/ancestral"]


def test_missing_points_counts_points_not_in_the_csv():
    call = P.FrontierCall("mdm-remdm", ("mdm",), ("--sampler", "remdm", "--remasking", "cap"))
    row = {"run": "runs/mdm", "step": "10", "sampler": "remdm", "nfe": "16", "temperature": "1.0", "top_p": "1.0",
           "seed": "0", "temperature_on": "", "corrector": "", "remasking": json.dumps({"kind": "cap", "eta": 0.008}),
           "num_samples": "64"}
    assert P.missing_points(call, [row], {"mdm": 10}, [16], [1.0], 64) == 0
    assert P.missing_points(call, [row], {"mdm": 10}, [16, 64], [0.9, 1.0], 64) == 3
    assert P.missing_points(call, [row], {"mdm": 11}, [16], [1.0], 64) == 1  # trained further: a new point
    ar = P.FrontierCall("ancestral", ("ar",))
    ar_row = dict(row, run="runs/ar", sampler="ancestral", nfe="", remasking="")
    assert P.missing_points(ar, [ar_row], {"ar": 10}, [16, 64, 256], [1.0], 64) == 0  # no NFE for AR


def test_reuse_points_copies_only_identical_points(tmp_path):
    from ddlm.evaluate.frontier import FIELDS, append_row

    judge = "SmolLM2-135M-Instruct (test)"
    base = {f: "" for f in FIELDS}
    base.update(run="runs/udm-loo-ce", label="udm-loo-ce", checkpoint="runs/udm-loo-ce/checkpoints/step_000010",
                step="10", process="udm", sampler="ancestral", nfe="16", temperature="1.0", top_p="1.0", seed="0",
                num_samples="64", judge=judge, gen_ppl="99.0")
    rows = [base, dict(base, nfe="64", samples_file="samples/a.jsonl"),
            dict(base, run="runs/mdm", label="mdm", process="mdm"),  # another run
            dict(base, nfe="256", step="9"),  # an older checkpoint
            dict(base, temperature="0.8", judge="hf:/elsewhere")]  # another judge
    (tmp_path / "frontier" / "ancestral" / "samples").mkdir(parents=True)
    (tmp_path / "frontier" / "ancestral" / "samples" / "a.jsonl").write_text('{"text": "x"}\n')
    for r in rows:
        append_row(tmp_path / "frontier" / "ancestral" / "frontier.csv", r)
    steps = {"udm-loo-ce": 10}
    plain = P.FrontierCall("udm-ablation", ("udm-loo-ce",))
    raw = P.FrontierCall("udm-ablation", ("udm-loo-ce",), ("--sampler", "bridge_raw_denoiser"))
    log = []
    assert P.reuse_points(raw, tmp_path, steps, [16, 64], [1.0], 64, "smollm2", log.append) == 0
    assert P.reuse_points(plain, tmp_path, steps, [16, 64, 256], [0.8, 1.0], 64, "smollm2", log.append) == 2
    got = P.read_frontier(tmp_path / "frontier" / "udm-ablation")
    assert [(r["nfe"], r["gen_ppl"]) for r in got] == [("16", "99.0"), ("64", "99.0")]
    assert (tmp_path / "frontier" / "udm-ablation" / "samples" / "a.jsonl").read_text() == '{"text": "x"}\n'
    assert P.missing_points(plain, got, steps, [16, 64], [1.0], 64) == 0
    # no duplicates
    assert P.reuse_points(plain, tmp_path, steps, [16, 64, 256], [0.8, 1.0], 64, "smollm2", log.append) == 0
    assert "2 points copied" in log[0]


def test_frontier_stage_runs_only_the_chosen_comparisons(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "RESULTS", tmp_path)
    monkeypatch.setattr(S, "last_step", lambda path: 10)
    monkeypatch.setattr(S.Study, "ready", lambda self, names, stage: list(names))
    monkeypatch.setattr(S.Study, "finished", lambda self, name: False)  # no best UDM run: its comparisons skipped
    invoked = []
    monkeypatch.setattr(S, "ddlm", lambda argv, log: invoked.append(argv[argv.index("--out") + 1]))
    study = S.Study(runs=list(P.RUNS), log=lambda msg: None, comparisons=["mdm-remdm"])
    S.stage_frontier(study)
    assert invoked == ["results/frontier/mdm-remdm"] * 2  # ancestral and ReMDM, not the other comparisons
    invoked.clear()
    S.stage_frontier(S.Study(runs=list(P.RUNS), log=lambda msg: None))
    assert sorted(set(invoked)) == ["results/frontier/ancestral", "results/frontier/audm-reaudm",
                                    "results/frontier/mdm-remdm"]


def test_best_udm_needs_the_four_bounds(tmp_path):
    (tmp_path / "bound").mkdir()
    for name, nats in zip(P.UDM_RUNS[:3], (2.3, 2.1, 2.2), strict=False):
        (tmp_path / "bound" / f"{name}.json").write_text(json.dumps({"nats_per_token": nats}))
    with pytest.raises(P.StudyError, match="udm-denoiser-ce.json"):
        P.best_udm_run(tmp_path)
    (tmp_path / "bound" / "udm-denoiser-ce.json").write_text(json.dumps({"nats_per_token": 2.4}))
    assert P.best_udm_run(tmp_path) == P.UDM_RUNS[1]


def test_bound_uses_four_passes_except_for_the_exact_ar_nll():
    assert P.bound_command("mdm")[:4] == ["eval", "runs/mdm", "--passes", "4"]
    assert P.bound_command("ar")[:4] == ["eval", "runs/ar", "--passes", "1"]


def test_set_scopes():
    study = S.Study(runs=list(P.RUNS), extra=["a=1", "text:b=2", "sudoku:c=3", "ar:d=4"])
    assert study.overrides("mdm") == ["a=1", "b=2"]
    assert study.overrides("ar") == ["a=1", "b=2", "d=4"]
    assert study.overrides("sudoku-udm") == ["a=1", "c=3"]


# ---- (c) the study end to end on tiny runs ------------------------------------------------------------

def _mtimes(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_study_end_to_end_and_resume(tmp_path):
    from ddlm.data.corpora import default_corpus

    corpus = tmp_path / "tiny.txt"
    corpus.write_text(default_corpus()[0][:20000])  # 15 validation blocks: a quick bound
    work = tmp_path / "work"
    # the AR run is also the judge: it gets blocks of 128 so that 64-character samples plus BOS fit
    cmd = [sys.executable, str(EXPERIMENTS / "study.py"), "--workdir", str(work), "--scale", "0.0005",
           "--runs", "ar", "udm-loo-elbo", "sudoku-mdm", "--set", f"text:data.corpus={corpus}",
           "--set", "ar:data.block_size=128", "--set", "sudoku:data.num_puzzles=100",
           "--judge", str(work / "runs" / "ar"), "--num-samples", "2", "--nfe", "2", "--temperature", "1.0",
           "--puzzles", "2", "--probe-nfe", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = work / "results"
    for name in ("ar", "udm-loo-elbo", "sudoku-mdm"):
        assert json.loads((results / "train" / f"{name}.json").read_text())["step"] == P.steps_of(name, 0.0005)
    bounds = {n: json.loads((results / "bound" / f"{n}.json").read_text()) for n in ("ar", "udm-loo-elbo")}
    assert bounds["ar"]["estimator"] == "exact_nll" and bounds["ar"]["num_batches"] == 2
    assert bounds["udm-loo-elbo"]["num_batches"] == 4 * math.ceil(bounds["udm-loo-elbo"]["blocks"] / 32)
    rows = P.read_frontier(results / "frontier" / "ancestral")
    assert sorted((r["run"], r["nfe"]) for r in rows) == [("runs/ar", ""), ("runs/udm-loo-elbo", "2")]
    assert (results / "frontier" / "ancestral" / "frontier.png").exists()
    probe = json.loads((results / "probe" / "probe.json").read_text())
    assert [r["run"] for r in probe["runs"]] == ["runs/udm-loo-elbo"]
    for nfe in P.SUDOKU_NFE:
        assert json.loads((results / "sudoku" / f"sudoku-mdm-nfe{nfe}.json").read_text())["num_puzzles"] == 2
    report = work / "reproduction.md"
    assert report.read_text() == R.render(results, report)
    tables = R.tables_in(report.read_text())
    assert "| udm-loo-elbo | 4 |" in tables["bound"] and "udm-loo-elbo, ancestral" in tables["frontier-ancestral"]
    assert "skipped until the four UDM runs are trained" in first.stdout

    before = _mtimes(work)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "+ ddlm" not in second.stdout, second.stdout
    assert _mtimes(work) == before


def test_the_autoregressive_run_is_the_one_whose_config_has_process_ar():
    from ddlm.config import is_autoregressive, load_config

    for name, (config, overrides, _) in P.RUNS.items():
        assert P.autoregressive(name) == is_autoregressive(load_config(config, overrides))
