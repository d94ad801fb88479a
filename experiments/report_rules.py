"""The statistics and verdict rules of the reproduction report (``experiments/report.py``): one
comparison's test, a claim's verdict from its comparisons with the family-wise error rate controlled,
frontier curves compared at matched entropy with per-point standard errors, and the standard errors of
bounds (seed and Monte-Carlo variance), the probe and Sudoku accuracies.

Rules ("A better than B" means lower bound, lower gen-PPL at matched entropy, lower LOO sensitivity, or
higher Sudoku accuracy; every difference is A - B on a lower-is-better scale):

- A comparison is a one-sided test. For "A is better than B" the null is diff >= 0; for "A matches or
  beats B" (non-inferiority) the null is diff >= margin, where the margin is the measured seed-to-seed
  standard deviation of the quantity (of the two configurations compared), or 0 where none is measured (then
  "matches" can only be shown by "better"). Its p-value is Phi((diff - margin) / SE) (Student's t with
  the SE's degrees of freedom when the SE comes from a seed spread).
- Each claim has one primary comparison, declared in ``report_claims.PRIMARY``. It is tested alone at
  level ``ALPHA``; only if it is *supported* are the claim's other comparisons tested, by Holm-Bonferroni
  at ``ALPHA`` (serial gatekeeping: the family-wise error rate stays at ``ALPHA``). A primary measured on
  data drawn before it was declared (the first study's 64-sample frontier points) keeps the gate shut.
- A comparison is *against* when A is worse than B by more than ``Z`` SE (for a match claim as well: a
  significantly worse A is not called a match, even inside the margin).
- Claim verdict: **reproduced** if its primary comparison is supported and no comparison is against;
  **mixed** if the primary is supported and some comparison is against; **not reproduced** if the primary
  is not supported and some comparison is against; otherwise **inconclusive at this scale**; **not
  measured yet** while the primary comparison is not measured.

Under a null claim (equal results plus noise) "reproduced" needs the primary comparison's own test to
reject, which happens with probability at most ``ALPHA``; ``tests/test_reproduction.py`` checks this on
synthetic null results through the whole report pipeline.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_plan as P  # noqa: E402

#: family-wise error rate of a claim (one-sided tests, Holm-Bonferroni over the claim's comparisons)
ALPHA = 0.05
#: standard errors by which A must be worse than B for a comparison to count against a claim; also the
#: descriptive "better"/"worse" of one comparison in the evidence column
Z = 2.0
REPRODUCED, NOT_REPRODUCED, MIXED = "reproduced", "not reproduced", "mixed"
INCONCLUSIVE, MISSING = "inconclusive at this scale", "not measured yet"
BETTER, WORSE, TIE, UNDECIDED = "better", "worse", "tie", "undecided"
#: Sudoku accuracy below which a run "does not solve puzzles": two such runs are not ranked by accuracy
#: (0 of 400 against 0 of 400 is equality at the floor, not a match of abilities). Added when the first
#: Sudoku run (MDM, 5,000 steps) solved 0 of 400 puzzles, before the AUDM run was trained.
SUDOKU_FLOOR = 0.05
LN2 = math.log(2.0)


# ---- distributions -----------------------------------------------------------------------------------

def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def t_cdf(x: float, dof: float) -> float:
    """Student's t distribution function (Simpson's rule on the density from 0 to |x|; 1e-7 accurate)."""
    if dof is None or dof > 1000:
        return normal_cdf(x)
    if dof <= 0:
        raise ValueError(f"dof must be > 0, got {dof}")
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def density(u):
        return c * (1 + u * u / dof) ** (-(dof + 1) / 2)

    a = abs(x)
    n = 2 * max(50, int(200 * a))
    h = a / n
    area = density(0.0) + density(a) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    half = area * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half


# ---- one comparison ------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """A vs B: ``diff`` = A - B (lower is better), its SE (and the SE's degrees of freedom, None for a
    normal SE), the non-inferiority ``margin`` (None: "A is better than B"), a label ("NFE 64", "bound")."""

    label: str
    diff: float | None
    se: float | None
    margin: float | None = None
    dof: float | None = None
    detail: str = ""
    #: measured on data drawn before the primary comparisons were declared: it cannot open the gate
    prior: bool = False
    #: fewest samples per point of the data compared (frontiers; None elsewhere)
    samples: int | None = None

    @property
    def measured(self) -> bool:
        return (self.diff is not None and self.se is not None and math.isfinite(self.diff)
                and math.isfinite(self.se) and self.se > 0)

    @property
    def p_value(self) -> float | None:
        """One-sided p-value of the null diff >= margin (0 for "better"); None when not measured."""
        if not self.measured:
            return None
        return t_cdf((self.diff - (self.margin or 0.0)) / self.se, self.dof)

    @property
    def p_worse(self) -> float | None:
        """One-sided p-value of the null diff <= 0 (A no worse than B); None when not measured."""
        if not self.measured:
            return None
        return 1.0 - t_cdf(self.diff / self.se, self.dof)

    @property
    def against(self) -> bool:
        """A worse than B by more than Z SE."""
        return self.measured and self.diff > Z * self.se

    @property
    def outcome(self) -> str:
        """Descriptive: better / worse (beyond Z SE), tie, or undecided (no number or SE)."""
        if not self.measured:
            return UNDECIDED
        if self.diff < -Z * self.se:
            return BETTER
        return WORSE if self.against else TIE


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm-Bonferroni: which of the hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        out[i] = True
    return out


@dataclass
class ClaimResult:
    """A claim's verdict with, for each of its comparisons, whether Holm supports it and whether it is against."""

    verdict: str
    supported: list[bool]
    against: list[bool]
    #: the comparisons whose "A is worse" survives Holm at ``ALPHA`` over the family (the strength of an
    #: "against": a single comparison 2 SE worse among many is expected under a null claim)
    against_holm: list[bool] = None


def claim_verdict(comparisons: list[Comparison], primary: int | None, alpha: float = ALPHA) -> ClaimResult:
    """The verdict of a claim from its comparisons (see the module docstring): the primary comparison
    (index ``primary``; None: not measured yet) is tested alone at ``alpha``; only if it is supported (the
    gate opens) are the others tested, by Holm at ``alpha`` (serial gatekeeping: the family-wise error
    rate stays at ``alpha``). A primary measured on data seen before it was declared (``prior``) keeps
    the gate shut."""
    n = len(comparisons)
    measured = [i for i, c in enumerate(comparisons) if c.measured]
    supported, against = [False] * n, [c.against for c in comparisons]
    against_holm = [False] * n
    for i, ok in zip(measured, holm([comparisons[i].p_worse for i in measured], alpha), strict=True):
        against_holm[i] = ok and against[i]
    if primary is None or not comparisons[primary].measured:
        return ClaimResult(MISSING, supported, against, against_holm)
    first = comparisons[primary]
    if not first.prior and first.p_value <= alpha:
        supported[primary] = True
        rest = [i for i in measured if i != primary]
        for i, ok in zip(rest, holm([comparisons[i].p_value for i in rest], alpha), strict=True):
            supported[i] = ok
    if supported[primary] and not any(against):
        verdict = REPRODUCED
    elif supported[primary]:
        verdict = MIXED
    elif any(against):
        verdict = NOT_REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return ClaimResult(verdict, supported, against, against_holm)


# ---- bounds over seeds --------------------------------------------------------------------------------

@dataclass
class SeedBound:
    """A configuration's bound in bits/char over its training seeds: the mean, its SE, the SE's degrees of
    freedom (None: a normal SE), the seeds' values, the rms Monte-Carlo SE, the seed-to-seed variance of
    one run's value (None without two seeds) and where the SE's variance comes from."""

    mean: float
    se: float
    dof: float | None
    values: list
    mc_se: float
    var: float | None = None
    source: str = ""

    @property
    def seeds(self) -> int:
        return len(self.values)


def seed_spread(groups: list[list[tuple[float, float]]]) -> tuple[float, int] | None:
    """(pooled within-configuration variance of single-seed values, its degrees of freedom) over the
    groups with two or more seeds (each a list of (value, Monte-Carlo SE)); None without any. Used only
    for a configuration that has a single seed so far (it borrows the others' spread)."""
    ss = dof = 0
    for g in groups:
        if len(g) >= 2:
            m = sum(v for v, _ in g) / len(g)
            ss += sum((v - m) ** 2 for v, _ in g)
            dof += len(g) - 1
    return (ss / dof, dof) if dof else None


def seed_bound(values: list[tuple[float, float]], spread: tuple[float, int] | None = None) -> SeedBound | None:
    """A configuration's mean over its seeds ((value, Monte-Carlo SE) each) with the SE of the mean.

    With two or more seeds: its own seed-to-seed variance s^2 (k - 1 degrees of freedom; it holds seed and
    Monte-Carlo variance together), SE = sqrt(max(s^2, m^2) / k) with m^2 the mean squared Monte-Carlo SE (a
    floor when few seeds happen to agree). Configurations differ in their seed variance (a denoiser-output
    ELBO run varies far more from seed to seed than an MDM run), so it is not pooled across them. With one
    seed: the pooled ``spread`` of the other configurations if given (borrowed, its degrees of freedom),
    else the Monte-Carlo SE alone (normal)."""
    if not values:
        return None
    k = len(values)
    mean = sum(v for v, _ in values) / k
    mc = sum(s * s for _, s in values) / k
    vals = [v for v, _ in values]
    if k >= 2:
        var = sum((v - mean) ** 2 for v in vals) / (k - 1)
        return SeedBound(mean, math.sqrt(max(var, mc) / k), k - 1, vals, math.sqrt(mc), var, "own seeds")
    if spread is not None:
        return SeedBound(mean, math.sqrt(max(spread[0], mc)), spread[1], vals, math.sqrt(mc), None,
                         "borrowed spread")
    return SeedBound(mean, math.sqrt(mc), None, vals, math.sqrt(mc), None, "Monte-Carlo only")


def welch_dof(parts: list[tuple[float, float | None]]) -> float | None:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance terms (variance, its dof;
    dof None counts as infinite): (sum v)^2 / sum(v^2 / dof); None when every term is normal."""
    terms = [(v, d) for v, d in parts if d is not None and v > 0]
    if not terms:
        return None
    total = sum(v for v, _ in parts)
    return total ** 2 / sum(v * v / d for v, d in terms)


# ---- frontier curves -------------------------------------------------------------------------------

@dataclass
class Curve:
    """One frontier curve: a run's points at one NFE (None for the AR run) with fixed sampler options.
    Each point is (entropy, log gen-PPL, SE of the entropy or None, SE of the log gen-PPL or None)."""

    run: str
    sampler: str
    nfe: int | None
    temperature_on: str
    selection: str | None
    remasking: str | None
    points: list  # (entropy, log gen-PPL, entropy SE, log gen-PPL SE), sorted by entropy
    seconds: float = 0.0
    min_samples: int | None = None  # the fewest samples of any of its rows (None before the first)

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


def _number(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def curves_of(rows: list[dict]) -> list[Curve]:
    """Rows grouped into curves (run, sampler, NFE, temperature view, corrector rule, remasking).

    A point's SE of log gen-PPL is the row's ``mean_nll_se`` (log gen-PPL is the judge's mean NLL per
    token); its entropy SE is ``entropy_se`` (None in CSVs written before ``ddlm frontier`` recorded it)."""
    groups: dict[tuple, Curve] = {}
    for r in rows:
        corrector = json.loads(r["corrector"]) if r["corrector"] else None
        remasking = json.loads(r["remasking"]) if r["remasking"] else None
        key = (Path(r["run"]).name, r["sampler"], int(r["nfe"]) if r["nfe"] else None, r["temperature_on"],
               corrector["selection"] if corrector else None, remasking["kind"] if remasking else None)
        curve = groups.setdefault(key, Curve(*key, points=[]))
        samples = int(r.get("num_samples") or 0)
        curve.min_samples = samples if curve.min_samples is None else min(curve.min_samples, samples)
        h, ppl = float(r["entropy"]), float(r["gen_ppl"])
        curve.seconds += float(r["seconds"] or 0.0)
        if math.isfinite(h) and math.isfinite(ppl) and ppl > 0:
            curve.points.append((h, math.log(ppl), _number(r.get("entropy_se")), _number(r.get("mean_nll_se"))))
    for c in groups.values():
        c.points.sort()
    return list(groups.values())


def interpolate(points: list, h: float) -> tuple[float, float | None] | None:
    """(log gen-PPL at entropy h, its SE) by linear interpolation between the neighbouring points; None if
    h lies outside the curve's entropy range. The SE treats the two points' errors as independent and
    adds the entropy noise through the segment's slope (a point's entropy error moves it along x):
    var = w^2 (se_y1^2 + slope^2 se_h1^2) + (1 - w)^2 (se_y0^2 + slope^2 se_h0^2); a missing entropy SE
    counts as 0, a missing log gen-PPL SE gives None."""
    if not points or not points[0][0] <= h <= points[-1][0]:
        return None
    if len(points) == 1:
        return points[0][1], points[0][3]
    for (h0, y0, sh0, sy0), (h1, y1, sh1, sy1) in zip(points, points[1:], strict=False):
        if h0 <= h <= h1:
            w = 0.0 if h1 == h0 else (h - h0) / (h1 - h0)
            slope = 0.0 if h1 == h0 else (y1 - y0) / (h1 - h0)
            if sy0 is None or sy1 is None:
                return y0 + w * (y1 - y0), None
            var = (w * w * (sy1 ** 2 + (slope * (sh1 or 0.0)) ** 2)
                   + (1 - w) ** 2 * (sy0 ** 2 + (slope * (sh0 or 0.0)) ** 2))
            return y0 + w * (y1 - y0), math.sqrt(var)
    return None


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


def compare_curves(label: str, a: Curve | None, b: Curve | None, margin: float | None = None) -> Comparison | None:
    """A vs B at their matched entropy H* (the midpoint of their common entropy range): the difference of
    their interpolated log gen-PPLs with the SE from the points' own SEs; None when a curve is absent."""
    if a is None or b is None:
        return None
    h = common_entropy([a, b])
    if h is None:
        return Comparison(label, None, None, margin, detail="no common entropy range")
    (va, sa), (vb, sb) = interpolate(a.points, h), interpolate(b.points, h)
    se = None if sa is None or sb is None else math.hypot(sa, sb)
    detail = f"at H* = {h:.3f}" + ("" if se is not None else ", a point has no SE")
    return Comparison(label, va - vb, se, margin, detail=detail)


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
