"""The claims of the reproduction report (``experiments/report.py``) from the study's result files:
reading ``results/``, and each part of each claim with its evidence and verdict under the rules of
``report_rules.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_plan as P  # noqa: E402
from report_rules import (  # noqa: E402
    MISSING,
    SUDOKU_FLOOR,
    UNDECIDED,
    ClaimResult,
    Comparison,
    Curve,
    SeedBound,
    accuracy_se,
    bound_of,
    claim_verdict,
    compare_curves,
    curves_of,
    holm,
    nfes_of,
    pick,
    pm,
    probe_mean,
    seed_bound,
    seed_spread,
    welch_dof,
)

# ---- loading ---------------------------------------------------------------------------------------

@dataclass
class Results:
    """The study's result files, read (a missing file is simply absent)."""

    root: Path
    train: dict = field(default_factory=dict)  # run -> train record
    bound: dict = field(default_factory=dict)  # run -> ddlm eval record
    frontier: dict = field(default_factory=dict)  # comparison -> CSV rows (latest step of each run)
    probe: dict | None = None
    sudoku: dict = field(default_factory=dict)  # (run, nfe) -> ddlm sudoku record
    times: list = field(default_factory=list)  # the study's command times (results/times.jsonl)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"result file {str(path)!r} is unreadable: {e}") from e


def _csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        raise ValueError(f"result file {str(path)!r} is unreadable: {e}") from e


def latest_rows(rows: list[dict]) -> list[dict]:
    """Frontier rows at each run's latest step (a run trained further leaves older points behind)."""
    last: dict[str, int] = {}
    for r in rows:
        last[r["run"]] = max(last.get(r["run"], -1), int(r["step"]))
    return [r for r in rows if int(r["step"]) == last[r["run"]]]


#: the settings of a frontier point other than its number of samples
_POINT = ("run", "checkpoint", "step", "sampler", "nfe", "temperature", "temperature_on", "top_p", "corrector",
          "remasking", "length", "judge")


def most_samples(rows: list[dict]) -> list[dict]:
    """For each frontier point, the row with the most samples, whatever its sampling seed (the plan's
    128-sample points replace the first study's 64-sample ones, and a top-up draws a point near a
    threshold again with more samples; the report uses that one)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r.get(f, "") for f in _POINT)
        if key not in best or int(r["num_samples"]) > int(best[key]["num_samples"]):
            best[key] = r
    return [r for r in rows if best[tuple(r.get(f, "") for f in _POINT)] is r]


def load_results(root: str | os.PathLike) -> Results:
    """Read every result file under ``root`` (``results/``)."""
    root = Path(root)
    res = Results(root)
    for name in P.RUNS:
        for kind, into in (("train", res.train), ("bound", res.bound)):
            path = root / kind / f"{name}.json"
            if path.exists():
                into[name] = _json(path)
        for nfe in P.SUDOKU_NFE:
            path = root / "sudoku" / f"{name}-nfe{nfe}.json"
            if path.exists():
                res.sudoku[(name, nfe)] = _json(path)
    for comparison in P.COMPARISONS:
        path = root / "frontier" / comparison / "frontier.csv"
        if path.exists():
            res.frontier[comparison] = most_samples(latest_rows(_csv(path)))
    if (root / "probe" / "probe.json").exists():
        res.probe = _json(root / "probe" / "probe.json")
    if (root / "times.jsonl").exists():
        try:
            res.times = [json.loads(line) for line in (root / "times.jsonl").read_text().splitlines() if line]
        except ValueError as e:
            raise ValueError(f"result file {str(root / 'times.jsonl')!r} is unreadable: {e}") from e
    return res


# ---- the claims' comparisons ------------------------------------------------------------------------

@dataclass
class Part:
    """One part of a claim: its comparisons (each one test of the claim's family, unless the part is not
    ``counted``), a sentence of numbers (``head``) and, once the claim is evaluated, its verdict and evidence."""

    claim: int
    key: str
    label: str
    comparisons: list = field(default_factory=list)
    head: str = ""
    counted: bool = True
    missing: str = ""  # what is needed when nothing is measured
    frontier: bool = False  # compared on frontier curves (one comparison per NFE)
    verdict: str = MISSING
    evidence: str = ""


#: each claim's primary comparison (part key, comparison label), declared on 2026-11-28 before the seed
#: replicates and the 128-sample frontiers were measured (after the first study's seed-0 results had been
#: seen): the claim is "reproduced" only if this one is supported
PRIMARY = {1: ("1a", "bound"), 2: ("2a-lowest_log_margin", "NFE 64"), 3: ("3a", "bound")}
PRIMARY_TEXT = {
    1: "1a: the LOO-output ELBO run's bound is lower than the denoiser-output ELBO run's (means over seeds)",
    2: "2a with ddlm's default selection rule (lowest_log_margin) at NFE 64: the informed predictor-corrector "
       "beats the predictor alone at equal NFE",
    3: "3a: AUDM's bound is no worse than MDM's by more than the seed-to-seed SD (means over seeds)",
}


def bound_values(res: Results, name: str) -> list[tuple[float, float]]:
    """(bits/char, Monte-Carlo SE) of every measured training seed of ``name``."""
    return [b for r in P.replicates(name) if (b := bound_of(res.bound.get(r))) is not None]


def bound_spread(res: Results) -> tuple[float, int] | None:
    """Pooled seed-to-seed variance of one run's bound (bits/char^2) over the replicated runs, with its dof
    (borrowed by a configuration with one seed so far)."""
    return seed_spread([bound_values(res, n) for n in P.SEEDED_RUNS])


def seed_bound_of(res: Results, name: str) -> SeedBound | None:
    return seed_bound(bound_values(res, name), bound_spread(res))


def _sb(b: SeedBound) -> str:
    seeds = f"{b.seeds} seed{'s' if b.seeds > 1 else ''}"
    return f"{pm(b.mean, b.se)} ({seeds})"


def bound_part(res: Results, key: str, label: str, a: str, b: str, match: bool, claim: int) -> Part:
    """"a's bound is lower than b's", or (``match``) "no worse by more than their seed-to-seed SD"."""
    part = Part(claim, key, label, missing=f"needs results/bound/{a}.json and {b}.json")
    ba, bb = seed_bound_of(res, a), seed_bound_of(res, b)
    if ba is None or bb is None:
        return part
    margin = None
    if match:  # the seed-to-seed SD of one run of the two configurations compared (mean of their variances)
        margin = math.sqrt((ba.var + bb.var) / 2) if ba.var is not None and bb.var is not None else 0.0
    dof = welch_dof([(ba.se ** 2, ba.dof), (bb.se ** 2, bb.dof)])
    part.comparisons.append(Comparison("bound", ba.mean - bb.mean, math.hypot(ba.se, bb.se), margin, dof))
    part.head = f"{a} {_sb(ba)} vs {b} {_sb(bb)} bits/char"
    if match:
        part.head += (f"; margin {margin:.3f} bits/char = the seed-to-seed SD of one {a} or {b} run" if margin else
                      "; margin 0 (no seed spread of both measured yet: a match must be shown as better)")
    return part


def interaction_part(res: Results) -> Part:
    """1b: D = (den-elbo - loo-elbo) - (den-ce - loo-ce) > 0, with each objective's own preference."""
    part = Part(1, "1b", "1b. the ELBO prefers the LOO output more strongly than cross-entropy does (D > 0)",
                missing="needs the bounds of the four UDM runs")
    b = {n: seed_bound_of(res, n) for n in P.UDM_RUNS}
    if any(v is None for v in b.values()):
        return part
    elbo = b["udm-denoiser-elbo"].mean - b["udm-loo-elbo"].mean
    ce = b["udm-denoiser-ce"].mean - b["udm-loo-ce"].mean
    se = math.sqrt(sum(v.se ** 2 for v in b.values()))
    se_elbo = math.hypot(b["udm-denoiser-elbo"].se, b["udm-loo-elbo"].se)
    se_ce = math.hypot(b["udm-denoiser-ce"].se, b["udm-loo-ce"].se)
    dof = welch_dof([(v.se ** 2, v.dof) for v in b.values()])
    part.comparisons.append(Comparison("-D", -(elbo - ce), se, None, dof))
    part.head = (f"denoiser minus LOO: {elbo:+.3f} ± {se_elbo:.3f} bits/char under the ELBO, {ce:+.3f} ± {se_ce:.3f} "
                 f"under cross-entropy (both objectives favour the LOO output); D = {elbo - ce:+.3f}")
    return part


def frontier_pair(curves_a: list[Curve], curves_b: list[Curve], run_a: str, run_b: str, nfe: int, want_a: dict,
                  want_b: dict) -> tuple[Curve | None, Curve | None]:
    """Curves A and B of two configurations at one NFE: those of the runs the frontier stage samples
    (``study_plan.frontier_run``, training seed 1) when both exist, else those of the seed-0 runs (the
    first study's points); never one of each."""
    for ra, rb in ((P.frontier_run(run_a), P.frontier_run(run_b)), (run_a, run_b)):
        a, b = pick(curves_a, ra, nfe, **want_a), pick(curves_b, rb, nfe, **want_b)
        if a is not None and b is not None:
            return a, b
    return None, None


def frontier_part(key: str, label: str, claim: int, curves_a: list[Curve], curves_b: list[Curve], run_a: str,
                  run_b: str, want_a: dict, want_b: dict, match: bool, counted: bool = True) -> Part:
    """Curve A vs curve B at every NFE both have, at matched entropy (margin 0 for a match: no seed spread
    of frontiers is measured)."""
    part = Part(claim, key, label, counted=counted, missing="curves not measured yet", frontier=True)
    for n in sorted(set(nfes_of(curves_a)) | set(nfes_of(curves_b))):
        a, b = frontier_pair(curves_a, curves_b, run_a, run_b, n, want_a, want_b)
        cmp = compare_curves(f"NFE {n}", a, b, 0.0 if match else None)
        if cmp is not None:
            # points drawn before the primary comparisons were declared (fewer samples than the plan's)
            cmp.samples = min(a.min_samples or 0, b.min_samples or 0)
            cmp.prior = cmp.samples < P.FRONTIER_SAMPLES
            part.comparisons.append(cmp)
    if part.comparisons:
        part.head = "Δ log gen-PPL (A - B) at matched entropy" + (", margin 0" if match else "")
        if any(c.prior for c in part.comparisons):
            part.head += (f" (points of fewer than {P.FRONTIER_SAMPLES} samples, drawn before the primary comparisons "
                          "were declared: such a primary cannot open its claim's gate)")
    return part


def _curves(res: Results, *comparisons: str) -> list[Curve]:
    return [c for comp in comparisons for c in curves_of(res.frontier.get(comp, []))]


def probe_part(res: Results) -> Part:
    part = Part(1, "1d", "1d. LOO output leaks less of its own token (probe, ELBO runs)",
                missing="needs the probe of udm-loo-elbo and udm-denoiser-elbo")
    by_name = {Path(r["run"]).name: r for r in (res.probe or {}).get("runs", [])}
    a, b = by_name.get("udm-loo-elbo"), by_name.get("udm-denoiser-elbo")
    if a is None or b is None:
        return part
    (ma, sa), (mb, sb) = probe_mean(a), probe_mean(b)
    se = None if sa is None or sb is None else math.hypot(sa, sb)
    part.comparisons.append(Comparison("probe", ma - mb, se))
    part.head = f"mean TV {pm(ma, sa, 3, 'g')} (LOO) vs {pm(mb, sb, 3, 'g')} (denoiser)"
    return part


def sudoku_part(res: Results) -> Part:
    part = Part(3, "3d", "3d. Sudoku: AUDM's accuracy matches or beats MDM's",
                missing="needs results/sudoku/sudoku-audm-nfeN.json and sudoku-mdm-nfeN.json")
    heads = []
    for nfe in P.SUDOKU_NFE:
        a, b = res.sudoku.get(("sudoku-audm", nfe)), res.sudoku.get(("sudoku-mdm", nfe))
        if a is None or b is None:
            continue
        sa, sb = accuracy_se(a), accuracy_se(b)
        heads.append(f"NFE {nfe}: accuracy {pm(a['accuracy'], sa)} (AUDM) vs {pm(b['accuracy'], sb)} (MDM)")
        if a["accuracy"] < SUDOKU_FLOOR and b["accuracy"] < SUDOKU_FLOOR:
            part.comparisons.append(Comparison(f"NFE {nfe}", None, None, 0.0, detail=(
                f"both below {SUDOKU_FLOOR:g}: neither solves puzzles (cell accuracy {a['cell_accuracy']:.3f} vs "
                f"{b['cell_accuracy']:.3f}), not ranked")))
            continue
        part.comparisons.append(Comparison(f"NFE {nfe}", -(a["accuracy"] - b["accuracy"]), math.hypot(sa, sb), 0.0,
                                           detail="minus the accuracy difference"))
    part.head = "; ".join(heads) + ("; margin 0 (Sudoku runs have one seed)" if heads else "")
    return part


def best_udm(res: Results) -> str | None:
    """The UDM configuration with the lowest bound averaged over its seeds, None until the four seed-0
    bounds exist (the rule of ``study_plan.best_udm_run``, on the loaded results)."""
    if any(n not in res.bound for n in P.UDM_RUNS):
        return None
    return P.best_udm_config({r: rec["nats_per_token"] for r, rec in res.bound.items()})


def parts_of(res: Results) -> list[Part]:
    """Every part of every claim with its comparisons, evaluated claim by claim (Holm within each claim)."""
    best = best_udm(res)
    anc = _curves(res, "ancestral")
    who = best or "best UDM run"
    need_best = "needs the bounds of the four UDM runs (the best one is compared)"

    def best_part(key, label, comparison, want_a, want_b, counted=True):
        if best is None:
            return Part(int(key[0]), key, label, counted=counted, missing=need_best, frontier=True)
        c = _curves(res, comparison)
        return frontier_part(key, label, int(key[0]), c, c, best, best, want_a, want_b, False, counted)

    parts = [
        bound_part(res, "1a", "1a. LOO output trains to a lower bound than denoiser output (plug-in ELBO)",
                   "udm-loo-elbo", "udm-denoiser-elbo", False, 1),
        interaction_part(res),
        frontier_part("1c", "1c. LOO output samples better (ancestral frontier, ELBO runs)", 1, anc, anc,
                      "udm-loo-elbo", "udm-denoiser-elbo", {}, {}, False),
        probe_part(res),
        best_part("1e", f"1e. the plug-in bridge needs the LOO: correct conversion beats the raw denoiser ({who})",
                  "udm-ablation", {"sampler": "ancestral"}, {"sampler": "bridge_raw_denoiser"}),
    ]
    for rule in P.SELECTIONS:
        label = f"2a. predictor-corrector ({rule}) beats the predictor alone at equal NFE ({who})"
        if rule == "random":
            label += " (not an informed rule: not counted)"
        parts.append(best_part(f"2a-{rule}", label, "udm-pc", {"selection": rule},
                               {"sampler": "ancestral", "selection": None}, counted=rule != "random"))
    parts += [
        best_part("2b", f"2b. temperature on the LOO beats temperature on the denoiser ({who})", "udm-temperature",
                  {"temperature_on": "loo"}, {"temperature_on": "denoiser"}),
        bound_part(res, "3a", "3a. AUDM's bound matches or beats MDM's", "audm", "mdm", True, 3),
        frontier_part("3b", "3b. AUDM samples match or beat MDM's (ancestral frontier)", 3, anc, anc, "audm", "mdm",
                      {}, {}, True),
        frontier_part("3c", "3c. ReAUDM matches or beats ReMDM", 3, _curves(res, "audm-reaudm"),
                      _curves(res, "mdm-remdm"), "audm", "mdm", {"sampler": "reaudm"}, {"sampler": "remdm"}, True),
        sudoku_part(res),
    ]
    judges = {r["judge"] for comp in ("audm-reaudm", "mdm-remdm") for r in res.frontier.get(comp, [])}
    if len(judges) > 1:  # gen-PPLs of different judges are not comparable
        parts[-2] = Part(3, "3c", parts[-2].label, missing=f"the two folders have different judges {sorted(judges)}",
                         frontier=True)
    evaluate(parts)
    return parts


# ---- verdicts --------------------------------------------------------------------------------------

def _family(parts: list[Part], claim: int) -> list[tuple[Part, Comparison]]:
    return [(p, c) for p in parts if p.claim == claim and p.counted for c in p.comparisons]


def _describe(c: Comparison, supported: bool | None, against: bool, strong: bool = False) -> str:
    if not c.measured:
        return f"{c.label}: {c.detail or 'no SE'} (undecided)"
    worse = ("against, Holm" if strong else "against, 2 SE") if against else ""
    tag = "; ".join(t for t in ("supported" if supported else "", worse) if t)
    margin = f", margin {c.margin:.3f}" if c.margin else ""
    return (f"{c.label}: {c.diff:+.3f} ± {c.se:.3f}{' ' + c.detail if c.detail else ''}{margin}, p = {c.p_value:.2g}"
            + (f" ({tag})" if tag else ""))


def claim_results(parts: list[Part]) -> dict[int, ClaimResult]:
    """Claim -> its verdict from its family of comparisons (Holm over the counted parts' comparisons)."""
    out = {}
    for claim in (1, 2, 3):
        family = _family(parts, claim)
        key, label = PRIMARY[claim]
        primary = next((i for i, (p, c) in enumerate(family) if p.key == key and c.label == label), None)
        out[claim] = claim_verdict([c for _, c in family], primary)
    return out


def evaluate(parts: list[Part]) -> None:
    """Fill each part's verdict and evidence from its claim's family (a part not counted gets the flags
    its comparisons would have alone, uncorrected, and says so)."""
    results = claim_results(parts)
    for claim, res in results.items():
        flags = {id(c): (s, a, h) for (_, c), s, a, h in zip(_family(parts, claim), res.supported, res.against,
                                                             res.against_holm, strict=True)}
        for p in (p for p in parts if p.claim == claim):
            if not any(c.measured for c in p.comparisons):
                p.verdict = MISSING if not p.comparisons else UNDECIDED
                lines = [_describe(c, None, False) for c in p.comparisons]
                p.evidence = "; ".join(([p.head] if p.head else []) + lines) or p.missing
                continue
            if p.counted:
                got = [flags[id(c)] for c in p.comparisons]
            else:  # on its own: Holm over its measured comparisons
                idx = [i for i, c in enumerate(p.comparisons) if c.measured]
                sup = dict(zip(idx, holm([p.comparisons[i].p_value for i in idx]), strict=True))
                worse = dict(zip(idx, holm([p.comparisons[i].p_worse for i in idx]), strict=True))
                got = [(sup.get(i, False), c.against, worse.get(i, False) and c.against)
                       for i, c in enumerate(p.comparisons)]
            sup, ag = any(s for s, _, _ in got), any(a for _, a, _ in got)
            p.verdict = ("supported and against" if sup and ag else "supported" if sup else "against" if ag
                         else "not significant")
            if not p.counted:
                p.verdict += " (on its own: Holm over its NFEs)"
            lines = [_describe(c, s, a, h) for c, (s, a, h) in zip(p.comparisons, got, strict=True)]
            p.evidence = "; ".join(([p.head] if p.head else []) + lines)


def claim_verdicts(parts: list[Part]) -> dict[int, str]:
    """Claim -> verdict."""
    return {claim: r.verdict for claim, r in claim_results(parts).items()}


def family_sizes(parts: list[Part]) -> dict[int, int]:
    """Claim -> number of measured comparisons in its Holm family."""
    return {claim: sum(c.measured for _, c in _family(parts, claim)) for claim in (1, 2, 3)}
