"""Build the reproduction report (``docs/reproduction.md``) from the study's result files only.

    .venv/bin/python experiments/report.py                  # experiments/results -> docs/reproduction.md
    .venv/bin/python experiments/report.py --check          # exit 1 if the report is not what the results give

Everything in the report is computed here from ``results/`` (written by ``experiments/study.py``):
``train/NAME.json`` (steps and training time), ``bound/NAME.json`` (``ddlm eval``),
``frontier/COMPARISON/frontier.csv`` and ``frontier.png`` (``ddlm frontier``), ``probe/probe.json``
and ``probe.png`` (``ddlm probe``), ``sudoku/NAME-nfeN.json`` (``ddlm sudoku``). The only prose is
the fixed text of this generator (the claims of issue 6 and the rules); a missing result gives
"not measured yet". Tables sit between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers.

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

import argparse
import csv
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study as S  # noqa: E402

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
    for name in S.RUNS:
        for kind, into in (("train", res.train), ("bound", res.bound)):
            path = root / kind / f"{name}.json"
            if path.exists():
                into[name] = _json(path)
        for nfe in S.SUDOKU_NFE:
            path = root / "sudoku" / f"{name}-nfe{nfe}.json"
            if path.exists():
                res.sudoku[(name, nfe)] = _json(path)
    for comparison in S.COMPARISONS:
        path = root / "frontier" / comparison / "frontier.csv"
        if path.exists():
            res.frontier[comparison] = latest_rows(_csv(path))
    if (root / "probe" / "probe.json").exists():
        res.probe = _json(root / "probe" / "probe.json")
    return res


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
            parts.append(f"Gibbs {S.CORRECTOR_SWEEPS}x k={S.CORRECTOR_K} {self.selection}")
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
    for (h0, y0), (h1, y1) in zip(points, points[1:]):
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
    for lo, hi in [(e, e) for e in edges] + list(zip(edges, edges[1:])):
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


# ---- formatting ------------------------------------------------------------------------------------

def pm(value: float | None, se: float | None, digits: int = 3, spec: str = "f") -> str:
    """``value ± se`` with ``digits`` decimals (``spec`` "f") or significant digits ("g")."""
    if value is None:
        return "—"
    f = f"{{:.{digits}{spec}}}"
    return f"{f.format(value)} ± {f.format(se)}" if se is not None else f.format(value)


def table(name: str, header: list[str], rows: list[list[str]]) -> str:
    """A markdown table between ``<!-- table:NAME -->`` markers."""
    lines = [f"<!-- table:{name} -->", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines + [f"<!-- /table:{name} -->"])


def tables_in(text: str) -> dict[str, str]:
    """The marked tables of a report: name -> text between its markers."""
    out, pos = {}, 0
    while (start := text.find("<!-- table:", pos)) != -1:
        name = text[start + len("<!-- table:"): text.index(" -->", start)]
        end = text.index(f"<!-- /table:{name} -->", start)
        out[name] = text[text.index("\n", start) + 1: end]
        pos = end
    return out


def command_block(argvs: list[list[str]]) -> str:
    return "```\n" + "\n".join(shlex.join(["ddlm", *a]) for a in argvs) + "\n```"


def link(res: Results, out: Path, *parts: str) -> str:
    """Relative link from the report's folder to a result file."""
    return os.path.relpath(res.root.joinpath(*parts), out.parent).replace(os.sep, "/")


# ---- sections --------------------------------------------------------------------------------------

CLAIMS = """The paper's claims, as issue 6 states them:

1. For uniform diffusion, a leave-one-out (LOO) parameterisation trains and samples better than the
   usual denoiser parameterisation, and the plug-in ELBO and cross-entropy disagree about the target.
2. Without retraining, the informed predictor-corrector and temperature applied to the LOO improve
   generation.
3. The absorbing reformulation (AUDM) matches or beats masked diffusion (MDM).

The paper measures them at GPU scale on LM1B and OpenWebText; here every run is a 1.3M-parameter
model trained on the embedded Shakespeare corpus (character level) on a CPU, so a verdict says what
this scale shows, not what the paper's scale shows. A "not reproduced" verdict is a disagreement
with the paper at this scale."""

def _pct(log_ratio: float) -> str:
    """A log ratio as a rounded percentage change."""
    return f"{100 * (math.exp(log_ratio) - 1):.0f}"


RULES = f"""How the verdicts are computed (`experiments/report.py`; Z = {Z:g}):

- One comparison of A with B gives *better* if A beats B by more than Z combined standard errors
  (SE = sqrt(SE_A^2 + SE_B^2)), *worse* if B beats A by more than Z SE, *tie* otherwise, and
  *undecided* when a number has no SE or two frontier curves share no entropy range.
- "A is better than B" (claims 1 and 2): **reproduced** if A is better in some comparison (e.g. at
  some NFE) and worse in none; **not reproduced** if worse in some and better in none; otherwise
  **inconclusive at this scale**.
- "A matches or beats B" (claim 3) is a non-inferiority test with tolerances fixed before any
  result: {TOLERANCE['bound']:g} bits/char for bounds,
  {TOLERANCE['frontier']:g} in log gen-PPL (about {_pct(TOLERANCE['frontier'])}% gen-PPL) for frontiers,
  {TOLERANCE['sudoku']:g} in Sudoku accuracy. A comparison (difference A - B, worse is positive)
  is *better* if below -Z SE, *match* if difference + Z SE is below the tolerance, *worse* if
  difference - Z SE is above it, *undecided* otherwise (too noisy to tell). **reproduced** if some
  comparison is better or match and none is worse; **not reproduced** if some is worse and none is
  better or match; otherwise **inconclusive at this scale**.
- Multiplicity: a frontier part is decided by up to three comparisons (one per NFE) and one *better*
  suffices. Between two equally good curves one comparison comes out *better* by chance with
  probability about 2.3% (Z = 2, one-sided), so up to about 7% for a part with three; the four
  predictor-corrector rules share one baseline curve. A part that rests on a single comparison just
  past Z SE (read the evidence column) is weak evidence, not a measurement of the paper's effect size.
- A claim's verdict combines its parts the same way as "better": reproduced if some part is
  reproduced and none is not reproduced, not reproduced in the converse case, inconclusive when
  parts disagree or none is decided; parts not measured yet are left out, and the claim's verdict
  is marked *provisional* until every part is measured.
- Bounds: bits per character with the SE of `ddlm eval` (over its batches; the four passes over the
  validation split reuse the same text, so the text's share of the SE is slightly understated, and
  it is common to runs compared on the same split).
- Objectives disagree (1b): D = (bound of denoiser-ELBO - LOO-ELBO) - (bound of denoiser-CE -
  LOO-CE), SE from the four bounds' SEs; D > Z SE means the ELBO favours the LOO output more than
  cross-entropy does (each objective pulls towards its own target).
- Frontiers: at each NFE, each curve's log gen-PPL is interpolated linearly in sample entropy at the
  matched entropy H*, the midpoint of the entropy range both curves cover. `ddlm frontier` records
  no SE per point, so the SE of one point's log gen-PPL is estimated from the scatter of every curve
  of the comparison around its own quadratic fit in entropy (pooled; it includes any misfit and so
  errs towards "inconclusive"; fewer than {MIN_DOF} degrees of freedom give no estimate, hence
  *undecided*); an interpolated value's SE is that times sqrt(w^2 + (1 - w)^2).
- Probe (1d): mean TV over the states of the trajectory; its SE is the mean of the per-state SEs (each
  over the sequences). The states of one trajectory hold the same sequences and their errors are
  correlated; the standard deviation of a sum is at most the sum of the standard deviations, so this
  SE is an upper bound whatever the correlation (conservative).
- Sudoku (3d): exact-match accuracy; SE sqrt(p(1 - p)/n) with p = (solved + 1)/(n + 2), so that 0/n
  and n/n keep a non-zero SE. At an NFE where both accuracies are below {SUDOKU_FLOOR:g} neither model
  solves puzzles and the comparison is *undecided* (equal accuracies at the floor say nothing about
  which process learns Sudoku better); this floor was added after the MDM run solved 0 of 400 and before
  the AUDM run was trained."""


def training_section(res: Results) -> str:
    rows, cmds = [], []
    for name in S.RUNS:
        r = res.train.get(name)
        if r is None:
            rows.append([name, S.RUNS[name][0], "—", "—", "—", "—", "—", MISSING])
            continue
        minutes = r.get("train_minutes")
        val = pm(r.get("val_nll"), r.get("val_nll_se"), 3) if r.get("val_nll") is not None else "—"
        rows.append([name, r["config_name"], r.get("process") or "—", r.get("model_output") or "default",
                     r.get("objective") or "default", f"{r['step']:,}", "—" if minutes is None else f"{minutes:.1f}",
                     val])
        cmds.append(r["argv"][1:])
    entropies = sorted({round(r["unigram_entropy"], 4) for r in res.train.values()
                        if r.get("unigram_entropy") is not None and r.get("config_name", "").startswith("demo")})
    note = (f"Unigram entropy of the text corpus (from the training records): {entropies[0]:.4f} nats/char "
            f"({entropies[0] / LN2:.3f} bits/char).\n\n" if len(entropies) == 1 else "")
    out = ["## Training runs", "",
           "Same model size, data, steps and seed within each kind (text, Sudoku). Time: `train_minutes` of the "
           "run's last checkpoint (wall time of the training loop, summed over resumptions). Validation: the "
           "bound the training loop measured at its last evaluation (8 batches; the next section's is more "
           "precise).", "",
           table("training", ["run", "config", "process", "output", "objective", "steps", "minutes",
                              "validation bound in training (nats/token)"], rows), "", note +
           "Commands (from the study's working folder, `experiments/`; the study runs each as "
           "`python -m ddlm ...`):", "", command_block(cmds) if cmds else "(none yet)"]
    return "\n".join(out)


def bound_of(rec: dict | None) -> tuple[float, float] | None:
    """(bits/char, SE) of a bound record."""
    if rec is None or rec.get("bits_per_char") is None:
        return None
    return rec["bits_per_char"], rec["bits_per_char_se"] or 0.0


def bound_section(res: Results) -> str:
    rows, cmds = [], []
    for name in S.RUNS:
        r = res.bound.get(name)
        if r is None:
            rows.append([name, "—", "—", "—", "—", "—", MISSING])
            continue
        what = "exact NLL" if r["estimator"] == "exact_nll" else "ELBO bound"
        se = r["bits_per_char_se"]
        rows.append([name, f"{r['run']['step']:,}", pm(r["bits_per_char"] * LN2, None if se is None else se * LN2),
                     pm(r["bits_per_char"], r["bits_per_char_se"]), pm(r["nats_per_token"], r["se"]),
                     f"{r['num_batches']} x {r['batch_size']} of {r['blocks']}", what])
        cmds.append(S.bound_command(name))
    return "\n".join([
        "## Validation NLL bound", "",
        "`ddlm eval` on each run's validation split (EMA weights): Monte-Carlo ELBO for diffusion runs "
        f"({S.BOUND_PASSES} passes over the split with fresh draws of t and x_t), exact NLL for the "
        "autoregressive run (one pass). Per character, with the SE over batches.", "",
        table("bound", ["run", "step", "nats/char", "bits/char", "nats/token", "batches x blocks of N", "estimator"],
              rows), "", "Commands:", "", command_block(cmds) if cmds else "(none yet)"])


def _judge_arg(name: str) -> str:
    """The ``--judge`` argument that loads the judge named ``name`` in a frontier CSV."""
    if name.startswith("SmolLM2"):
        return "smollm2"
    if name.startswith("ddlm-ar:"):
        return name[len("ddlm-ar:"):].rsplit("@", 1)[0]
    return name[len("hf:"):] if name.startswith("hf:") else name


def frontier_commands(comparison: str, rows: list[dict]) -> list[list[str]]:
    """The study's ``ddlm frontier`` calls that make this comparison's CSV, with the grid in the CSV."""
    runs = [n for n in S.RUNS if any(Path(r["run"]).name == n for r in rows)]
    if comparison == "ancestral":
        calls = S.frontier_calls([n for n in S.TEXT_RUNS if n in runs], None, False, False)
    else:
        calls = [c for run in runs for c in S.frontier_calls([], run if run in S.UDM_RUNS else None,
                                                              run == "audm", run == "mdm")]
    calls = [c for c in calls if c.comparison == comparison]
    nfe = sorted({int(r["nfe"]) for r in rows if r["nfe"]})
    temps = sorted({float(r["temperature"]) for r in rows})
    judge = _judge_arg(rows[0]["judge"])
    samples = max(int(r["num_samples"]) for r in rows)
    return [c.argv(nfe or list(S.FRONTIER_NFE), temps, judge, samples) for c in calls]


COMPARISON_TEXT = {
    "ancestral": "Every text run with its ancestral sampler (the autoregressive run has no NFE: one pass per "
                 "token; it is interpolated at each column's H*).",
    "udm-pc": f"The best UDM run (lowest bound): ancestral, the informed Gibbs predictor-corrector "
              f"({S.CORRECTOR_SWEEPS} sweep, k = {S.CORRECTOR_K} positions per sweep, each selection rule) and "
              "maximal coupling, at equal NFE (corrector passes count).",
    "udm-temperature": "The best UDM run: temperature applied to the LOO vs to the denoiser.",
    "udm-ablation": "The best UDM run: the plug-in bridge fed the LOO (correct conversion, `ancestral`) vs fed "
                    "the raw denoiser (`bridge_raw_denoiser`).",
    "audm-reaudm": "AUDM: ancestral (carry-over) vs ReAUDM renoising.",
    "mdm-remdm": f"MDM: ancestral vs ReMDM (remasking `{S.REMASKING}`).",
}


def frontier_table(comparison: str, curves: list[Curve]) -> str:
    """gen-PPL of every curve at each NFE's matched entropy (common to the curves with that NFE)."""
    nfes = nfes_of(curves)
    hs = {n: matched_entropy([c for c in curves if c.nfe == n]) for n in nfes}
    header = ["curve"] + [f"NFE {n}" for n in nfes]
    rows = [["matched entropy H* (nats)"] + [f"{hs[n]:.3f}" if hs[n] is not None else "—" for n in nfes]]
    names = []
    for c in curves:
        if c.name not in names:
            names.append(c.name)
    for name in names:
        cells = []
        for n in nfes:
            c = next((c for c in curves if c.name == name and c.nfe in (n, None)), None)
            v = interpolate(c.points, hs[n]) if c is not None and hs[n] is not None else None
            cells.append(f"{math.exp(v[0]):.2f}" if v is not None else "—")
        rows.append([name] + cells)
    if not nfes:  # only NFE-less curves (the AR run): show their points' range
        rows = [[c.name] for c in curves]
    return table(f"frontier-{comparison}", header, rows)


def frontier_section(res: Results, out: Path) -> str:
    parts = ["## Generative frontiers", "",
             "gen-PPL under the judge against the mean unigram entropy of the samples, temperatures swept, one "
             "curve per run, sampler and NFE (`ddlm frontier`). Tables: each curve's gen-PPL at the matched "
             "entropy H* of its column, the midpoint of the entropy range covered by the most curves of that NFE "
             "(by all of them when they overlap), interpolated linearly in log gen-PPL vs entropy; — : H* outside "
             "the curve's range. Lower is better. The verdicts compare two curves at their own matched entropy."]
    for comparison in S.COMPARISONS:
        parts += ["", f"### {comparison}", "", COMPARISON_TEXT[comparison], ""]
        rows = res.frontier.get(comparison)
        if not rows:
            parts.append(f"{MISSING}.")
            continue
        curves = curves_of(rows)
        judges = sorted({r["judge"] for r in rows})
        samples = sorted({int(r["num_samples"]) for r in rows})
        seconds = sum(c.seconds for c in curves)
        parts += [frontier_table(comparison, curves), "",
                  f"Judge: {', '.join(judges)}; {', '.join(map(str, samples))} samples per point; {len(rows)} points; "
                  f"{seconds / 60:.1f} min of sampling and judging. Data: "
                  f"[frontier.csv]({link(res, out, 'frontier', comparison, 'frontier.csv')}); plot:", "",
                  f"![{comparison}]({link(res, out, 'frontier', comparison, 'frontier.png')})", "",
                  "Commands:", "", command_block(frontier_commands(comparison, rows))]
    return "\n".join(parts)


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


def probe_section(res: Results, out: Path) -> str:
    head = ["## LOO sensitivity probe", "",
            "`ddlm probe`: along an ancestral sampling trajectory, one token of a position is changed and the TV "
            "change of that position's LOO (the model's output converted exactly to the LOO) is measured; 0 for "
            "an exact LOO.", ""]
    rows = []
    by_name = {Path(r["run"]).name: r for r in (res.probe or {}).get("runs", [])}
    for name in S.UDM_RUNS:
        r = by_name.get(name)
        if r is None:
            rows.append([name, "—", "—", "—", "—", "—", MISSING])
            continue
        cfg = r["run_info"]["config"]
        mean, se = probe_mean(r)
        rows.append([name, f"{r['step']:,}", r["run_info"]["model_output"], cfg.get("objective") or "default",
                     pm(mean, se, 3, "g"), f"{r['max_tv']:.3g}", str(len(r["states"]))])
    head.append(table("probe", ["run", "step", "output", "objective", "mean TV ± SE", "max TV", "states"], rows))
    if res.probe is None:
        return "\n".join(head)
    s = res.probe["settings"]
    argv = ["probe", *(r["run"] for r in res.probe["runs"]), "--nfe", str(s["nfe"]), "--num-samples",
            str(s["num_samples"]), "--positions", str(s["positions_per_sequence"]), "--seed", str(s["seed"]),
            "--out", "results/probe"]
    return "\n".join(head + ["", f"![probe]({link(res, out, 'probe', 'probe.png')})", "", "Command:", "",
                             command_block([argv])])


def accuracy_se(rec: dict) -> float:
    """SE of a Sudoku accuracy: sqrt(p(1-p)/n), p = (solved exactly + 1)/(n + 2)."""
    n = rec["num_puzzles"]
    p = (rec["num_exact"] + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / n)


def sudoku_section(res: Results) -> str:
    rows, cmds = [], []
    for name in S.SUDOKU_RUNS:
        for nfe in S.SUDOKU_NFE:
            r = res.sudoku.get((name, nfe))
            if r is None:
                rows.append([name, str(nfe), "—", "—", "—", "—", "—", MISSING])
                continue
            rows.append([name, str(nfe), f"{r['run']['step']:,}", str(r["num_puzzles"]),
                         pm(r["accuracy"], accuracy_se(r)), f"{r['solve_rate']:.3f}", f"{r['mean_violations']:.2f}",
                         f"{r['cell_accuracy']:.3f}"])
            cmds.append(S.sudoku_command(name, r["sampler"]["nfe"], r["num_puzzles"]))
    return "\n".join([
        "## Sudoku", "",
        "`ddlm sudoku`: generated test puzzles (35 clues, seed disjoint from training and validation) solved by "
        "ancestral sampling with the clues fixed. Accuracy: the grid equals the solution (SE as in the rules); "
        "solve rate: no row/column/box violation; violations: per grid, sum over the 27 units of 9 - distinct "
        "digits.", "",
        table("sudoku", ["run", "NFE", "step", "puzzles", "accuracy ± SE", "solve rate", "mean violations",
                         "cell accuracy"], rows), "", "Commands:", "", command_block(cmds) if cmds else "(none yet)"])


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
    b = {n: bound_of(res.bound.get(n)) for n in S.UDM_RUNS}
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
    for nfe in S.SUDOKU_NFE:
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
        return S.best_udm_run(res.root)
    except S.StudyError:
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
    for rule in S.SELECTIONS:
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


def verdict_section(res: Results) -> str:
    parts = parts_of(res)
    claims = claim_verdicts(parts)
    rows = []
    for c, v in claims.items():
        counted = [p for p in parts if p.claim == c and p.counted]
        measured = sum(p.verdict != MISSING for p in counted)
        if v == MISSING or measured == len(counted):
            rows.append([f"claim {c}", "**" + v + "**", "combined from its parts below", ""])
        else:  # some parts still to measure: the verdict may change
            rows.append([f"claim {c}", f"**{v}** (provisional)",
                         f"combined from the {measured} of its {len(counted)} parts measured so far", ""])
    rows += [[p.label, p.verdict, p.evidence, p.rule] for p in parts]
    differ = [f"- **{p.label}**: {p.verdict}. {p.evidence}." for p in parts
              if p.verdict in (NOT_REPRODUCED, INCONCLUSIVE)]
    return "\n".join(["## Verdicts", "",
                      table("verdicts", ["claim / part", "verdict", "evidence", "rule"], rows), "",
                      "The rules are spelled out at the end of this page.", "",
                      "Where this scale does not confirm the paper (a part not reproduced disagrees with it; an "
                      "inconclusive part is one the numbers here cannot decide, for the reason given):", "",
                      "\n".join(differ) if differ else "nowhere, among the parts measured so far."])


# ---- the report ------------------------------------------------------------------------------------

def render(results: str | os.PathLike, out: str | os.PathLike) -> str:
    """The report's text from the files under ``results`` (links made relative to ``out``'s folder)."""
    res, out = load_results(results), Path(out).resolve()
    res.root = res.root.resolve()
    header = ("# Reproduction study: the paper's claims at CPU scale\n\n"
              "<!-- Generated by experiments/report.py from the files under experiments/results/; do not edit. -->\n\n"
              "Made by `.venv/bin/python experiments/study.py` (see experiments/README.md): every number below is read "
              "from a result file the study wrote (JSON or CSV with full settings) by `experiments/report.py`, "
              "which also applies the verdict rules. Commands run from the study's working folder "
              "(`experiments/`).")
    sections = [header, "## Claims", CLAIMS, verdict_section(res), training_section(res), bound_section(res),
                frontier_section(res, out), probe_section(res, out), sudoku_section(res), "## Rules", RULES]
    return "\n\n".join(sections) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(S.ROOT / "results"), help="the study's results folder")
    p.add_argument("--out", default=str(S.ROOT.parent / "docs" / "reproduction.md"), help="the report file")
    p.add_argument("--check", action="store_true", help="exit 1 if the report file differs from what the results give")
    args = p.parse_args(argv)
    text = render(args.results, args.out)
    out = Path(args.out)
    current = out.read_text() if out.exists() else None
    if args.check:
        if current != text:
            print(f"{out} is not what {args.results} gives; run experiments/report.py", file=sys.stderr)
            return 1
        return 0
    if current == text:
        print(f"{out}: up to date")
        return 0
    from ddlm._io import atomic_write_text

    atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
