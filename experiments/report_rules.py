"""The statistics and verdict rules of the reproduction report (``experiments/report.py``): one
comparison's outcome, a claim's verdict from its comparisons, frontier curves compared at matched
entropy with a noise estimate, and the standard errors of bounds, the probe and Sudoku accuracies.

Verdict rules (``Z = 2`` standard errors; "A better than B" means lower bound, lower gen-PPL at
matched entropy, lower LOO sensitivity, or higher Sudoku accuracy):

- one comparison -> ``better`` if A beats B by more than Z combined SE, ``worse`` if B beats A by
  more than Z SE, ``tie`` otherwise, ``undecided`` when no SE or no matched entropy exists;
- a claim that A is better than B: ``reproduced`` if A is better in some comparison (e.g. some NFE)
  and worse in none; ``not reproduced`` if worse in some and better in none; otherwise
  ``inconclusive at this scale``;
- a claim that A matches or beats B (a non-inferiority test with a fixed tolerance, ``TOLERANCE``):
  a comparison is ``better`` if A beats B by more than Z SE, ``match`` if A is worse by less than the
  tolerance with Z SE to spare, ``worse`` if A is worse by more than the tolerance with Z SE to
  spare, ``undecided`` otherwise; the claim is ``reproduced`` if some comparison is better or match
  and none is worse, ``not reproduced`` if some is worse and none better or match, otherwise
  ``inconclusive at this scale``;
- frontiers: each curve's log gen-PPL is interpolated linearly in entropy at the matched entropy
  H*, the midpoint of the entropy range both curves cover; the SE of one point's log gen-PPL is
  estimated from the scatter of every curve of the comparison around its own quadratic fit in
  entropy (``ddlm frontier`` records no per-point standard error), so it includes any misfit and
  errs towards "inconclusive"; with fewer than ``MIN_DOF`` degrees of freedom there is no estimate.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_plan as P  # noqa: E402

#: standard errors a difference must exceed to count
Z = 2.0
#: degrees of freedom the frontier noise estimate needs (the study's grid gives 3 per curve and NFE)
MIN_DOF = 6
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
INCONCLUSIVE, MISSING = "inconclusive at this scale", "not measured yet"
BETTER, WORSE, TIE, MATCH, UNDECIDED = "better", "worse", "tie", "match", "undecided"
#: tolerances of "A matches or beats B" (claim 3), fixed before any result: how much worse A may be
#: and still match B: bound in bits/char, log gen-PPL at matched entropy (nats), Sudoku accuracy
TOLERANCE = {"bound": 0.1, "frontier": 0.1, "sudoku": 0.1}
#: Sudoku accuracy below which a run "does not solve puzzles": two such runs are not ranked by accuracy
#: (0 of 400 against 0 of 400 is equality at the floor, not a match of abilities). Added when the first
#: Sudoku run (MDM, 5,000 steps) solved 0 of 400 puzzles, before the AUDM run was trained.
SUDOKU_FLOOR = 0.05
LN2 = math.log(2.0)


# ---- comparisons and verdicts ----------------------------------------------------------------------

def outcome(diff: float | None, se: float | None, tolerance: float | None = None) -> str:
    """One comparison of A with B, ``diff`` = A - B on a lower-is-better scale.

    Without ``tolerance`` ("A is better than B"): ``better`` if diff < -Z se, ``worse`` if diff > Z se,
    ``tie`` otherwise. With it ("A matches or beats B", a non-inferiority test): ``better`` if
    diff < -Z se, ``match`` if diff + Z se < tolerance (A is worse by less than the tolerance, with Z
    SE to spare), ``worse`` if diff - Z se > tolerance, ``undecided`` otherwise (too noisy to tell).
    ``undecided`` as well without a number or an SE.
    """
    if diff is None or se is None or not (math.isfinite(diff) and math.isfinite(se)):
        return UNDECIDED
    if diff < -Z * se:
        return BETTER
    if tolerance is None:
        return WORSE if diff > Z * se else TIE
    if diff + Z * se < tolerance:
        return MATCH
    return WORSE if diff - Z * se > tolerance else UNDECIDED


def verdict_better(outcomes: list[str]) -> str:
    """Claim "A is better than B" from its comparisons (see the module docstring)."""
    if not outcomes:
        return MISSING
    better, worse = BETTER in outcomes, WORSE in outcomes
    if better and not worse:
        return REPRODUCED
    if worse and not better:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def verdict_match(outcomes: list[str]) -> str:
    """Claim "A matches or beats B" from its comparisons (see the module docstring)."""
    if not outcomes:
        return MISSING
    good, worse = BETTER in outcomes or MATCH in outcomes, WORSE in outcomes
    if worse and not good:
        return NOT_REPRODUCED
    if good and not worse:
        return REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts: ``reproduced`` if some part is and none is not reproduced;
    ``not reproduced`` if some part is not and none is reproduced; ``not measured yet`` if no part
    is measured; otherwise ``inconclusive at this scale``."""
    measured = [v for v in verdicts if v != MISSING]
    if not measured:
        return MISSING
    if REPRODUCED in measured and NOT_REPRODUCED not in measured:
        return REPRODUCED
    if NOT_REPRODUCED in measured and REPRODUCED not in measured:
        return NOT_REPRODUCED
    return INCONCLUSIVE


# ---- frontier curves -------------------------------------------------------------------------------

@dataclass
class Curve:
    """One frontier curve: a run's points at one NFE (None for the AR run) with fixed sampler options."""

    run: str
    sampler: str
    nfe: int | None
    temperature_on: str
    selection: str | None
    remasking: str | None
    points: list  # (entropy, log gen-PPL), sorted by entropy
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """The curve's label without its NFE."""
        parts = [self.run, self.sampler]
        if self.temperature_on:
            parts.append(f"T on {self.temperature_on}")
        if self.selection:
            parts.append(f"Gibbs {P.CORRECTOR_SWEEPS}x k={P.CORRECTOR_K} {self.selection}")
        if self.remasking:
            parts.append(f"remask {self.remasking}")
        return ", ".join(parts)


def curves_of(rows: list[dict]) -> list[Curve]:
    """Rows grouped into curves (run, sampler, NFE, temperature view, corrector rule, remasking)."""
    groups: dict[tuple, Curve] = {}
    for r in rows:
        corrector = json.loads(r["corrector"]) if r["corrector"] else None
        remasking = json.loads(r["remasking"]) if r["remasking"] else None
        key = (Path(r["run"]).name, r["sampler"], int(r["nfe"]) if r["nfe"] else None, r["temperature_on"],
               corrector["selection"] if corrector else None, remasking["kind"] if remasking else None)
        curve = groups.setdefault(key, Curve(*key, points=[]))
        h, ppl = float(r["entropy"]), float(r["gen_ppl"])
        curve.seconds += float(r["seconds"] or 0.0)
        if math.isfinite(h) and math.isfinite(ppl) and ppl > 0:
            curve.points.append((h, math.log(ppl)))
    for c in groups.values():
        c.points.sort()
    return list(groups.values())


def quadratic_residuals(points: list) -> tuple[float, int]:
    """(sum of squared residuals, degrees of freedom) of log gen-PPL around a quadratic in entropy;
    (0, 0) for fewer than 4 points."""
    if len(points) < 4 or len({h for h, _ in points}) < 3:
        return 0.0, 0
    import numpy as np

    h = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    coef = np.polyfit(h - h.mean(), y, 2)
    resid = y - np.polyval(coef, h - h.mean())
    return float((resid ** 2).sum()), len(points) - 3


def noise_sigma(curves: list[Curve]) -> float | None:
    """Pooled SE of one point's log gen-PPL: sqrt(sum of squared residuals / dof) over the curves;
    None with fewer than ``MIN_DOF`` degrees of freedom (too few points to estimate the noise)."""
    ss = dof = 0
    for c in curves:
        s, d = quadratic_residuals(c.points)
        ss, dof = ss + s, dof + d
    return math.sqrt(ss / dof) if dof >= MIN_DOF else None


def interpolate(points: list, h: float) -> tuple[float, float] | None:
    """(log gen-PPL at entropy h, SE factor sqrt(w^2 + (1-w)^2)) by linear interpolation between the
    neighbouring points; None if h lies outside the curve's entropy range."""
    if not points or not points[0][0] <= h <= points[-1][0]:
        return None
    for (h0, y0), (h1, y1) in zip(points, points[1:], strict=False):
        if h0 <= h <= h1:
            w = 0.0 if h1 == h0 else (h - h0) / (h1 - h0)
            return y0 + w * (y1 - y0), math.sqrt(w * w + (1 - w) ** 2)
    return points[0][1], 1.0  # a single point, h equal to its entropy


def matched_entropy(curves: list[Curve]) -> float | None:
    """H* of a table column: the midpoint of the entropy range covered by the most curves (by all of
    them when they overlap, then it equals :func:`common_entropy`); ties go to the widest range."""
    ranges = [(c.points[0][0], c.points[-1][0]) for c in curves if c.points]
    if not ranges:
        return None
    edges = sorted({x for r in ranges for x in r})
    best = None
    for lo, hi in [(e, e) for e in edges] + list(zip(edges, edges[1:], strict=False)):
        mid = (lo + hi) / 2
        key = (sum(a <= mid <= b for a, b in ranges), hi - lo)
        if best is None or key > best[0]:
            best = (key, mid)
    return best[1]


def common_entropy(curves: list[Curve]) -> float | None:
    """Midpoint of the entropy range every curve covers, or None if they share none."""
    if not curves or any(not c.points for c in curves):
        return None
    lo, hi = max(c.points[0][0] for c in curves), min(c.points[-1][0] for c in curves)
    return (lo + hi) / 2 if lo <= hi else None


def compare_curves(a: Curve | None, b: Curve | None, sigma: float | None, tolerance: float | None = None) -> dict:
    """A vs B at their matched entropy: ``h``, ``a``/``b`` (log gen-PPL), ``diff`` (a - b), ``se``, ``outcome``."""
    if a is None or b is None:
        return {"outcome": None}
    h = common_entropy([a, b])
    if h is None:
        return {"h": None, "outcome": UNDECIDED, "why": "no common entropy range"}
    (va, fa), (vb, fb) = interpolate(a.points, h), interpolate(b.points, h)
    se = None if sigma is None else sigma * math.hypot(fa, fb)
    why = "" if se is not None else f"no noise estimate (fewer than {MIN_DOF} degrees of freedom)"
    return {"h": h, "a": va, "b": vb, "diff": va - vb, "se": se, "outcome": outcome(va - vb, se, tolerance),
            "why": why}


def pick(curves: list[Curve], run: str, nfe, **want) -> Curve | None:
    """The curve of ``run`` at ``nfe`` whose attributes equal ``want`` (sampler, temperature_on, ...)."""
    for c in curves:
        if c.run == run and c.nfe == nfe and all(getattr(c, k) == v for k, v in want.items()):
            return c
    return None


def nfes_of(curves: list[Curve]) -> list[int]:
    return sorted({c.nfe for c in curves if c.nfe is not None})


# ---- standard errors and numbers ----------------------------------------------------------------------

def pm(value: float | None, se: float | None, digits: int = 3, spec: str = "f") -> str:
    """``value ± se`` with ``digits`` decimals (``spec`` "f") or significant digits ("g")."""
    if value is None:
        return "—"
    f = f"{{:.{digits}{spec}}}"
    return f"{f.format(value)} ± {f.format(se)}" if se is not None else f.format(value)


def bound_of(rec: dict | None) -> tuple[float, float] | None:
    """(bits/char, SE) of a bound record."""
    if rec is None or rec.get("bits_per_char") is None:
        return None
    return rec["bits_per_char"], rec["bits_per_char_se"] or 0.0


def probe_mean(rec: dict) -> tuple[float, float | None]:
    """(mean TV over states, its SE, None if a state has no SE) of a probe run record.

    The SE is the mean of the per-state SEs: an upper bound on the SE of the mean over states whatever
    their correlation (they are states of the same sequences), where sqrt(sum se^2)/S would assume
    independent states.
    """
    states = rec["states"]
    ses = [s.get("se_tv") for s in states]
    se = None if any(v is None for v in ses) else sum(ses) / len(states)
    return rec["mean_tv"], se


def accuracy_se(rec: dict) -> float:
    """SE of a Sudoku accuracy: sqrt(p(1-p)/n), p = (solved exactly + 1)/(n + 2)."""
    n = rec["num_puzzles"]
    p = (rec["num_exact"] + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / n)
