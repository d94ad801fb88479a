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
    INCONCLUSIVE,
    MISSING,
    SUDOKU_FLOOR,
    TOLERANCE,
    UNDECIDED,
    Curve,
    Z,
    accuracy_se,
    bound_of,
    combine,
    compare_curves,
    curves_of,
    nfes_of,
    noise_sigma,
    outcome,
    pick,
    pm,
    probe_mean,
    verdict_better,
    verdict_match,
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
            res.frontier[comparison] = latest_rows(_csv(path))
    if (root / "probe" / "probe.json").exists():
        res.probe = _json(root / "probe" / "probe.json")
    return res


# ---- verdicts --------------------------------------------------------------------------------------

@dataclass
class Part:
    """One measured part of a claim (``counted``: it enters the claim's combined verdict)."""

    claim: int
    label: str
    evidence: str
    verdict: str
    rule: str
    counted: bool = True


def bound_part(res: Results, a: str, b: str, kind: str) -> tuple[str, str]:
    """(evidence, verdict) of "a's bound is lower than b's" (kind "better") or "matches or beats" ("match")."""
    ba, bb = bound_of(res.bound.get(a)), bound_of(res.bound.get(b))
    if ba is None or bb is None:
        return f"needs results/bound/{a}.json and {b}.json", MISSING
    diff, se = ba[0] - bb[0], math.hypot(ba[1], bb[1])
    o = outcome(diff, se, None if kind == "better" else TOLERANCE["bound"])
    rule = verdict_better if kind == "better" else verdict_match
    return (f"{a} {pm(*ba)} vs {b} {pm(*bb)} bits/char: difference {diff:+.3f}, {Z:g} SE = {Z * se:.3f} ({o})",
            rule([o]))


def interaction_part(res: Results) -> tuple[str, str]:
    """(evidence, verdict) of 1b: D = (den-elbo - loo-elbo) - (den-ce - loo-ce) > Z SE."""
    b = {n: bound_of(res.bound.get(n)) for n in P.UDM_RUNS}
    if any(v is None for v in b.values()):
        return "needs the bounds of the four UDM runs", MISSING
    d = (b["udm-denoiser-elbo"][0] - b["udm-loo-elbo"][0]) - (b["udm-denoiser-ce"][0] - b["udm-loo-ce"][0])
    se = math.sqrt(sum(v[1] ** 2 for v in b.values()))
    o = outcome(-d, se)
    return (f"D = ({b['udm-denoiser-elbo'][0]:.3f} - {b['udm-loo-elbo'][0]:.3f}) - ({b['udm-denoiser-ce'][0]:.3f} - "
            f"{b['udm-loo-ce'][0]:.3f}) = {d:+.3f} bits/char, {Z:g} SE = {Z * se:.3f} ({o})", verdict_better([o]))


def frontier_part(curves_a: list[Curve], curves_b: list[Curve], sigma: float | None, run_a: str, run_b: str,
                  want_a: dict, want_b: dict, kind: str) -> tuple[str, str]:
    """(evidence, verdict) of curve A vs curve B at every NFE both have, at matched entropy."""
    lines, outcomes = [], []
    for n in sorted(set(nfes_of(curves_a)) | set(nfes_of(curves_b))):
        cmp = compare_curves(pick(curves_a, run_a, n, **want_a), pick(curves_b, run_b, n, **want_b), sigma,
                             None if kind == "better" else TOLERANCE["frontier"])
        if cmp["outcome"] is None:
            continue
        outcomes.append(cmp["outcome"])
        if cmp.get("h") is None:
            lines.append(f"NFE {n}: {cmp['why']} (undecided)")
        elif cmp["se"] is None:
            lines.append(f"NFE {n}: Δ log gen-PPL {cmp['diff']:+.3f} at H* = {cmp['h']:.3f}, {cmp['why']} (undecided)")
        else:
            lines.append(f"NFE {n}: Δ log gen-PPL {cmp['diff']:+.3f} at H* = {cmp['h']:.3f}, "
                         f"{Z:g} SE = {Z * cmp['se']:.3f} ({cmp['outcome']})")
    if not outcomes:
        return "curves not measured yet", MISSING
    return "; ".join(lines), (verdict_better if kind == "better" else verdict_match)(outcomes)


def _curves(res: Results, *comparisons: str) -> tuple[list[Curve], float | None]:
    """Curves of these comparisons and their pooled noise estimate."""
    curves = [c for comp in comparisons for c in curves_of(res.frontier.get(comp, []))]
    return curves, noise_sigma(curves)


def probe_part(res: Results) -> tuple[str, str]:
    by_name = {Path(r["run"]).name: r for r in (res.probe or {}).get("runs", [])}
    a, b = by_name.get("udm-loo-elbo"), by_name.get("udm-denoiser-elbo")
    if a is None or b is None:
        return "needs the probe of udm-loo-elbo and udm-denoiser-elbo", MISSING
    (ma, sa), (mb, sb) = probe_mean(a), probe_mean(b)
    se = None if sa is None or sb is None else math.hypot(sa, sb)
    o = outcome(ma - mb, se)
    return (f"mean TV {pm(ma, sa, 3, 'g')} (LOO) vs {pm(mb, sb, 3, 'g')} (denoiser): difference {ma - mb:+.3g}"
            + (f", {Z:g} SE = {Z * se:.3g}" if se is not None else "") + f" ({o})", verdict_better([o]))


def sudoku_part(res: Results) -> tuple[str, str]:
    lines, outcomes = [], []
    for nfe in P.SUDOKU_NFE:
        a, b = res.sudoku.get(("sudoku-audm", nfe)), res.sudoku.get(("sudoku-mdm", nfe))
        if a is None or b is None:
            continue
        sa, sb = accuracy_se(a), accuracy_se(b)
        head = f"NFE {nfe}: accuracy {pm(a['accuracy'], sa)} (AUDM) vs {pm(b['accuracy'], sb)} (MDM)"
        if a["accuracy"] < SUDOKU_FLOOR and b["accuracy"] < SUDOKU_FLOOR:
            outcomes.append(UNDECIDED)
            lines.append(f"{head}: both below {SUDOKU_FLOOR:g}, neither solves puzzles (cell accuracy "
                         f"{a['cell_accuracy']:.3f} vs {b['cell_accuracy']:.3f}, not ranked) ({UNDECIDED})")
            continue
        diff = -(a["accuracy"] - b["accuracy"])  # lower-is-better scale
        o = outcome(diff, math.hypot(sa, sb), TOLERANCE["sudoku"])
        outcomes.append(o)
        lines.append(f"{head}, {Z:g} SE = {Z * math.hypot(sa, sb):.3f} ({o})")
    if not outcomes:
        return "needs results/sudoku/sudoku-audm-nfeN.json and sudoku-mdm-nfeN.json", MISSING
    return "; ".join(lines), verdict_match(outcomes)


def best_udm(res: Results) -> str | None:
    """The UDM run with the lowest bound, None until the four bounds exist."""
    try:
        return P.best_udm_run(res.root)
    except P.StudyError:
        return None


BETTER_RULE = "better: Z SE, some comparison better, none worse"
MATCH_RULE = "match: some comparison better or within tolerance {tol} (Z SE to spare), none worse"


def best_frontier_part(res: Results, best: str | None, comparison: str, want_a: dict, want_b: dict) -> tuple[str, str]:
    """(evidence, verdict) of "curve A beats curve B" for the best UDM run in one comparison folder."""
    if best is None:
        return "needs the bounds of the four UDM runs (the best one is compared)", MISSING
    curves, sigma = _curves(res, comparison)
    return frontier_part(curves, curves, sigma, best, best, want_a, want_b, "better")


def renoising_part(res: Results) -> tuple[str, str]:
    """(evidence, verdict) of "ReAUDM matches or beats ReMDM" across the two comparison folders."""
    judges = {r["judge"] for comp in ("audm-reaudm", "mdm-remdm") for r in res.frontier.get(comp, [])}
    if len(judges) > 1:
        return f"the two folders have different judges {sorted(judges)}", INCONCLUSIVE
    a_curves, _ = _curves(res, "audm-reaudm")
    m_curves, _ = _curves(res, "mdm-remdm")
    _, sigma = _curves(res, "audm-reaudm", "mdm-remdm")
    return frontier_part(a_curves, m_curves, sigma, "audm", "mdm", {"sampler": "reaudm"}, {"sampler": "remdm"},
                         "match")


def parts_of(res: Results) -> list[Part]:
    """Every part of every claim with its evidence, rule and verdict."""
    best = best_udm(res)
    curves, sigma = _curves(res, "ancestral")
    parts = [
        Part(1, "1a. LOO output trains to a lower bound than denoiser output (plug-in ELBO)",
             *bound_part(res, "udm-loo-elbo", "udm-denoiser-elbo", "better"), BETTER_RULE),
        Part(1, "1b. ELBO and cross-entropy disagree about the target (the output each favours)",
             *interaction_part(res), "D > Z SE"),
        Part(1, "1c. LOO output samples better (ancestral frontier, ELBO runs)",
             *frontier_part(curves, curves, sigma, "udm-loo-elbo", "udm-denoiser-elbo", {}, {}, "better"),
             BETTER_RULE),
        Part(1, "1d. LOO output leaks less of its own token (probe, ELBO runs)", *probe_part(res), BETTER_RULE),
        Part(1, f"1e. the plug-in bridge needs the LOO: correct conversion beats the raw denoiser "
                f"({best or 'best UDM run'})",
             *best_frontier_part(res, best, "udm-ablation", {"sampler": "ancestral"},
                                 {"sampler": "bridge_raw_denoiser"}), BETTER_RULE),
    ]
    informed = []
    for rule in P.SELECTIONS:
        ev, v = best_frontier_part(res, best, "udm-pc", {"selection": rule},
                                   {"sampler": "ancestral", "selection": None})
        label = f"2a. predictor-corrector ({rule}) beats the predictor alone at equal NFE"
        if rule == "random":
            label += " (not an informed rule: not counted)"
        else:
            informed.append(v)
        parts.append(Part(2, label, ev, v, BETTER_RULE, counted=False))
    parts += [
        Part(2, "2a. informed predictor-corrector (any informed rule) improves generation",
             "the three informed rules above", combine(informed), "combined like a claim's parts"),
        Part(2, "2b. temperature on the LOO beats temperature on the denoiser",
             *best_frontier_part(res, best, "udm-temperature", {"temperature_on": "loo"},
                                 {"temperature_on": "denoiser"}), BETTER_RULE),
        Part(3, "3a. AUDM's bound matches or beats MDM's", *bound_part(res, "audm", "mdm", "match"),
             MATCH_RULE.format(tol=f"{TOLERANCE['bound']:g} bits/char")),
        Part(3, "3b. AUDM samples match or beat MDM's (ancestral frontier)",
             *frontier_part(curves, curves, sigma, "audm", "mdm", {}, {}, "match"),
             MATCH_RULE.format(tol=f"{TOLERANCE['frontier']:g} in log gen-PPL")),
        Part(3, "3c. ReAUDM matches or beats ReMDM", *renoising_part(res),
             MATCH_RULE.format(tol=f"{TOLERANCE['frontier']:g} in log gen-PPL")),
        Part(3, "3d. Sudoku: AUDM's accuracy matches or beats MDM's", *sudoku_part(res),
             MATCH_RULE.format(tol=f"{TOLERANCE['sudoku']:g} in accuracy")),
    ]
    return parts


def claim_verdicts(parts: list[Part]) -> dict[int, str]:
    """Claim -> combined verdict of its counted parts (the per-rule 2a rows count through their combined row)."""
    return {claim: combine([p.verdict for p in parts if p.claim == claim and p.counted]) for claim in (1, 2, 3)}
