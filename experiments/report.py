"""Build the reproduction report (``docs/reproduction.md``) from the study's result files only.

    .venv/bin/python experiments/report.py                  # experiments/results -> docs/reproduction.md
    .venv/bin/python experiments/report.py --check          # exit 1 if the report is not what the results give

Everything in the report is computed from ``results/`` (written by ``experiments/study.py``):
``train/NAME.json`` (steps and training time), ``bound/NAME.json`` (``ddlm eval``),
``frontier/COMPARISON/frontier.csv`` and ``frontier.png`` (``ddlm frontier``), ``probe/probe.json``
and ``probe.png`` (``ddlm probe``), ``sudoku/NAME-nfeN.json`` (``ddlm sudoku``). The only prose is
the fixed text of this generator (the claims of issue 6 and the rules); a missing result gives
"not measured yet". Tables sit between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers.

The statistics and verdict rules are in ``report_rules.py``, each claim's parts and their evidence
in ``report_claims.py``; this file renders them as Markdown.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_plan as P  # noqa: E402
from report_claims import (  # noqa: E402
    PRIMARY,
    PRIMARY_TEXT,
    Results,
    bound_spread,
    claim_results,
    family_sizes,
    load_results,
    parts_of,
    seed_bound_of,
)
from report_rules import (  # noqa: E402
    ALPHA,
    INCONCLUSIVE,
    LN2,
    MISSING,
    MIXED,
    NOT_REPRODUCED,
    SUDOKU_FLOOR,
    Curve,
    Z,
    accuracy_se,
    curves_of,
    interpolate,
    matched_entropy,
    nfes_of,
    pm,
    probe_mean,
)

# ---- formatting ------------------------------------------------------------------------------------

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

RULES = f"""How the verdicts are computed (`experiments/report_rules.py`, `report_claims.py`; family-wise
level ALPHA = {ALPHA:g}, Z = {Z:g}):

- **Comparisons.** Each part of a claim is one or more comparisons of A with B (a bound, or a frontier at
  one NFE); the difference A - B is on a lower-is-better scale. A comparison is a one-sided test: of
  "A is better than B" (null: difference >= 0) or, for claim 3, of "A matches or beats B" (null:
  difference >= margin). Its p-value is Phi((difference - margin) / SE), or Student's t with the SE's
  degrees of freedom when the SE comes from a seed spread.
- **Error-rate control (serial gatekeeping).** Each claim has one **primary comparison** (listed in the
  verdict table), declared in `report_claims.PRIMARY` on 2026-11-28, before the seed replicates and the
  128-sample frontiers were measured, but after the first study's seed-0 bounds and 64-sample frontiers
  had been seen: the primaries are the paper's headline comparison of each claim (claim 2: ddlm's
  default selection rule, lowest_log_margin, at the middle NFE), not the comparisons that looked best
  then. The primary is tested alone at level {ALPHA:g}; only if it is *supported* are the claim's other
  comparisons tested, by Holm-Bonferroni at {ALPHA:g} over them. The family-wise error rate of a claim
  stays at {ALPHA:g}. A frontier primary measured on points drawn before the declaration (fewer than
  {P.FRONTIER_SAMPLES} samples: the first study's, sampling seed 0 on the seed-0 runs) cannot open the
  gate. The plan's points are fresh on two counts: sampling seed {P.FRONTIER_SEED}, and drawn from each
  configuration's training-seed-{P.FRONTIER_TRAINING_SEED} replicate (`study_plan.frontier_run`), models
  nobody had sampled when the primaries were declared. A comparison uses the replicates' curves when
  both of its curves exist there, else the seed-0 runs' curves, never one of each.
- **Against.** A comparison in which A is worse than B by more than Z SE counts *against* its claim,
  for a match claim too (a significantly worse A is not called a match even inside the margin).
- **Claim verdict.** **reproduced**: the primary comparison is supported and no comparison is against;
  **mixed**: the primary is supported and some comparison is against; **not reproduced**: the primary
  is not supported and some comparison is against; **inconclusive at this scale** otherwise; **not
  measured yet** while the primary comparison is not measured. Under a null claim (equal results plus
  noise) "reproduced" needs the primary's own test to reject, which happens in at most {100 * ALPHA:g}%
  of draws; `tests/test_reproduction.py` checks this on 3,000 synthetic null studies run through this
  report's code (reproduced: 3.6%, 3.9% and 1.2% of them for claims 1-3), and that the previous rules,
  "some part better and none worse", fail that check (15.5%, 15.8%, 7.0%).
- **Weight of "not reproduced".** The 2-SE "against" is deliberately not corrected for multiplicity (it
  guards "reproduced"), so under a null claim with 9-12 comparisons one of them is 2 SE "worse" by
  chance fairly often and the claim reads "not reproduced" (in about 17-22% of the calibration test's
  null draws for claims 1 and 2). The evidence column therefore says of each "against" whether it also
  survives Holm over the family ("against, Holm": strong) or not ("against, 2 SE": weak); an
  "against, Holm" comes out in at most {100 * ALPHA:g}% of null draws (tested as well).
- **Margins of "matches".** The margin is the seed-to-seed standard deviation of the quantity: for
  bounds (3a), the SD of one run's bound over its training seeds, from the two configurations compared
  (the root of the mean of their seed variances): a difference smaller than what retraining with
  another seed changes. Frontiers and Sudoku accuracies are measured for one seed, so their margin is 0:
  there a match can only be shown as *better*.
- **Bounds.** Bits per character. Every run whose bound enters a verdict (the four UDM runs, MDM, AUDM)
  is trained with seeds {", ".join(map(str, P.SEEDS))}; a configuration's bound is the mean over its
  seeds, with SE sqrt(max(s^2, m^2) / k): s^2 the configuration's own seed-to-seed variance of one
  run's bound (k - 1 degrees of freedom; it holds seed and Monte-Carlo variance together), m^2 the mean
  squared Monte-Carlo SE of `ddlm eval` (a floor when few seeds happen to agree), k the seeds. Seed
  variances differ between configurations (the denoiser-output ELBO runs vary most), so they are not
  pooled; a difference is tested with Student's t on the Welch-Satterthwaite degrees of freedom. A
  configuration with one seed so far borrows the variance pooled over the configurations that have
  several (the table says which); without any, its SE is the Monte-Carlo SE alone (normal), which
  leaves out seed variance.
- **Objectives (1b).** D = (denoiser - LOO under the ELBO) - (denoiser - LOO under cross-entropy), from
  the seed means; D > 0 means the ELBO favours the LOO output more than cross-entropy does. Both
  objectives' own preferences are shown: the part measures a difference of degree.
- **Frontiers.** At each NFE, each curve's log gen-PPL is interpolated linearly in sample entropy at the
  matched entropy H*, the midpoint of the entropy range both curves cover. A point's SE of log gen-PPL
  is the `mean_nll_se` of its CSV row (the judge's mean NLL per token over the samples); its entropy SE
  (`entropy_se`, when the CSV has it) enters through the segment's slope. The two points' errors are
  taken as independent: the entropy and the NLL of the same samples move together along the curve, so
  this overstates the SE (conservative).
- **Probe (1d).** Mean TV over the states of the trajectory; its SE is the mean of the per-state SEs, an
  upper bound on the SE of the mean whatever the correlation between states (conservative).
- **Sudoku (3d).** Exact-match accuracy; SE sqrt(p(1 - p)/n) with p = (solved + 1)/(n + 2). At an NFE
  where both accuracies are below {SUDOKU_FLOOR:g} neither model solves puzzles and the comparison is not
  measured (equal accuracies at the floor say nothing about which process learns Sudoku better); this
  floor was added after the MDM run solved 0 of 400 and before the AUDM run was trained."""


def status_section(res: Results) -> str:
    """What of the study's plan the results hold so far (the verdicts rest on that)."""
    reps = [r for r in P.REPLICATES if r in res.bound]
    samples = sorted({int(r["num_samples"]) for rows in res.frontier.values() for r in rows})
    lines = [f"- Seed replicates with a bound: {len(reps)} of {len(P.REPLICATES)} (seeds "
             f"{', '.join(map(str, P.SEEDS[1:]))} of {', '.join(P.SEEDED_RUNS)}; seed 0 is the run itself)."]
    if samples:
        short = sum(int(r["num_samples"]) < P.FRONTIER_SAMPLES for rows in res.frontier.values() for r in rows)
        lines.append(f"- Frontier points: {', '.join(map(str, samples))} samples each"
                     + (f"; {short} points have fewer than the plan's {P.FRONTIER_SAMPLES} (the first study's, on the "
                        "seed-0 runs)" if short else "") + ".")
    frontier = [p for p in parts_of(res) if p.frontier]
    prior = [f"{p.key} {c.label}" for p in frontier for c in p.comparisons if c.prior]
    unmeasured = [p.key for p in frontier if {c.label for c in p.comparisons} != {f"NFE {n}" for n in P.FRONTIER_NFE}]
    lines.append(f"- Frontier comparisons on the plan's points (>= {P.FRONTIER_SAMPLES} samples, seed-"
                 f"{P.FRONTIER_TRAINING_SEED} replicates): {sum(len(p.comparisons) for p in frontier) - len(prior)}"
                 + (f"; on the first study's points: {', '.join(prior)}" if prior else "")
                 + (f"; parts without a comparison at every NFE: {', '.join(unmeasured)}" if unmeasured else "") + ".")
    topup = [f"{p.key} {c.label}" for p in frontier for c in p.comparisons if c.measured and not c.prior
             and P.near_threshold(c.diff / c.se) and c.samples < P.TOPUP_SAMPLES]
    if topup:
        lines.append(f"- Near a threshold (|z| in [{P.NEAR[0]:g}, {P.NEAR[1]:g}]) and not yet topped up to "
                     f"{P.TOPUP_SAMPLES} samples (`--stage topup`): {', '.join(topup)}.")
    done = (not any(r not in res.bound for r in P.REPLICATES) and bool(frontier) and not prior and not unmeasured
            and not topup)
    lines.append("- The study is complete: every verdict rests on the planned evidence." if done else
                 "- The study is not complete: verdicts may change as the missing evidence comes in.")
    return "\n".join(["## Status", ""] + lines)


def training_section(res: Results) -> str:
    rows, cmds = [], []
    for name in P.RUNS:
        r = res.train.get(name)
        if r is None:
            rows.append([name, P.RUNS[name][0], "—", "—", "—", "—", "—", MISSING])
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
           "Same model size, data, steps and seed within each kind (text, Sudoku), except that the replicates "
           "`NAME-seedS` are trained with seed S. Time: `train_minutes` of the "
           "run's last checkpoint (wall time of the training loop, summed over resumptions). Validation: the "
           "bound the training loop measured at its last evaluation (8 batches; the next section's is more "
           "precise).", "",
           table("training", ["run", "config", "process", "output", "objective", "steps", "minutes",
                              "validation bound in training (nats/token)"], rows), "", note +
           "Commands (from the study's working folder, `experiments/`; the study runs each as "
           "`python -m ddlm ...`):", "", command_block(cmds) if cmds else "(none yet)"]
    return "\n".join(out)


def bound_section(res: Results) -> str:
    rows, cmds = [], []
    for name in P.RUNS:
        r = res.bound.get(name)
        if r is None:
            rows.append([name, "—", "—", "—", "—", "—", MISSING])
            continue
        what = "exact NLL" if r["estimator"] == "exact_nll" else "ELBO bound"
        se = r["bits_per_char_se"]
        rows.append([name, f"{r['run']['step']:,}", pm(r["bits_per_char"] * LN2, None if se is None else se * LN2),
                     pm(r["bits_per_char"], r["bits_per_char_se"]), pm(r["nats_per_token"], r["se"]),
                     f"{r['num_batches']} x {r['batch_size']} of {r['blocks']}", what])
        cmds.append(P.bound_command(name))
    seeds = []
    for name in P.SEEDED_RUNS:
        b = seed_bound_of(res, name)
        if b is None:
            seeds.append([name, "0", "—", "—", "—", "—", MISSING])
            continue
        seeds.append([name, str(b.seeds), ", ".join(f"{v:.3f}" for v in b.values), pm(b.mean, b.se),
                      "—" if b.var is None else f"{math.sqrt(b.var):.3f}", f"{b.mc_se:.3f}",
                      b.source + (f", t {b.dof:g} dof" if b.dof is not None else ", normal")])
    spread = bound_spread(res)
    spread_text = ("No configuration has two seeds yet: the SEs are Monte-Carlo SEs, which leave out seed variance."
                   if spread is None else
                   f"A configuration with one seed so far borrows the seed-to-seed variance pooled over the others: "
                   f"SD {math.sqrt(spread[0]):.3f} bits/char ({spread[1]} degrees of freedom).")
    return "\n".join([
        "## Validation NLL bound", "",
        "`ddlm eval` on each run's validation split (EMA weights): Monte-Carlo ELBO for diffusion runs "
        f"({P.BOUND_PASSES} passes over the split with fresh draws of t and x_t), exact NLL for the "
        "autoregressive run (one pass). Per character, with the Monte-Carlo SE over batches. Runs `NAME-seedS` "
        "repeat `NAME` with training seed S (the validation blocks are the same for every seed).", "",
        table("bound", ["run", "step", "nats/char", "bits/char", "nats/token", "batches x blocks of N", "estimator"],
              rows), "",
        "Means over training seeds (bits/char), the bounds the verdicts use; SE of the mean as in the rules:", "",
        table("bound-seeds", ["configuration", "seeds", "per seed", "mean ± SE", "seed-to-seed SD",
                              "Monte-Carlo SE (rms)", "SE from"], seeds), "", spread_text, "",
        "Commands:", "", command_block(cmds) if cmds else "(none yet)"])


def _judge_arg(name: str) -> str:
    """The ``--judge`` argument that loads the judge named ``name`` in a frontier CSV."""
    if name.startswith("SmolLM2"):
        return "smollm2"
    if name.startswith("ddlm-ar:"):
        return name[len("ddlm-ar:"):].rsplit("@", 1)[0]
    return name[len("hf:"):] if name.startswith("hf:") else name


def frontier_commands(comparison: str, rows: list[dict]) -> list[list[str]]:
    """The study's ``ddlm frontier`` calls that made this comparison's points, one group per sampling seed
    and number of samples (the first study's seed-0 grid, the plan's grid, then the top-ups of points near a
    threshold), with the NFEs and temperatures in the CSV."""
    runs = [n for n in P.RUNS if any(Path(r["run"]).name == n for r in rows)]
    if comparison == "ancestral":
        calls = P.frontier_calls([n for n in runs if P.RUNS[n][2] == "text"], None, None, None)
    else:
        calls = [c for run in runs for c in P.frontier_calls(
            [], run if P.base_run(run) in P.UDM_RUNS else None, run if P.base_run(run) == "audm" else None,
            run if P.base_run(run) == "mdm" else None)]
    calls = [c for c in calls if c.comparison == comparison]
    judge = _judge_arg(rows[0]["judge"])
    temps = sorted({float(r["temperature"]) for r in rows})
    out = []
    for samples, seed in sorted({(int(r["num_samples"]), int(r["seed"])) for r in rows}, key=lambda k: (k[1], k[0])):
        sub = [r for r in rows if int(r["num_samples"]) == samples and int(r["seed"]) == seed]
        steps = {Path(r["run"]).name: int(r["step"]) for r in sub}
        for call in calls:
            runs_here = tuple(n for n in call.runs if n in steps)
            if not runs_here:
                continue
            call = P.FrontierCall(call.comparison, runs_here, call.options)
            nfes = sorted({int(r["nfe"]) for r in sub if r["nfe"] and P.row_matches(
                r, Path(r["run"]).name, steps[Path(r["run"]).name], call, int(r["nfe"]), float(r["temperature"]),
                samples, seed)})
            ar_rows = any(P.row_matches(r, Path(r["run"]).name, steps[Path(r["run"]).name], call, None,
                                        float(r["temperature"]), samples, seed) for r in sub if not r["nfe"])
            if nfes or ar_rows:
                out.append(call.argv(nfes or list(P.FRONTIER_NFE), temps, judge, samples, seed))
    return out


COMPARISON_TEXT = {
    "ancestral": "Every text run with its ancestral sampler (the autoregressive run has no NFE: one pass per "
                 "token; it is interpolated at each column's H*).",
    "udm-pc": f"The best UDM run (lowest bound): ancestral, the informed Gibbs predictor-corrector "
              f"({P.CORRECTOR_SWEEPS} sweep, k = {P.CORRECTOR_K} positions per sweep, each selection rule) and "
              "maximal coupling, at equal NFE (corrector passes count).",
    "udm-temperature": "The best UDM run: temperature applied to the LOO vs to the denoiser.",
    "udm-ablation": "The best UDM run: the plug-in bridge fed the LOO (correct conversion, `ancestral`) vs fed "
                    "the raw denoiser (`bridge_raw_denoiser`).",
    "audm-reaudm": "AUDM: ancestral (carry-over) vs ReAUDM renoising.",
    "mdm-remdm": f"MDM: ancestral vs ReMDM (remasking `{P.REMASKING}`).",
}


def frontier_table(comparison: str, curves: list[Curve]) -> str:
    """gen-PPL of every curve at each NFE's matched entropy (common to the curves with that NFE)."""
    nfes = nfes_of(curves)
    hs = {n: matched_entropy([c for c in curves if c.nfe == n]) for n in nfes}
    header = ["curve"] + [f"NFE {n}" for n in nfes] + ["samples per point"]
    rows = [["matched entropy H* (nats)"] + [f"{hs[n]:.3f}" if hs[n] is not None else "—" for n in nfes] + [""]]
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
        counts = sorted({c.min_samples for c in curves if c.name == name and c.min_samples})
        samples = f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else str(counts[0]) if counts else "—"
        rows.append([name] + cells + [samples])
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
    for comparison in P.COMPARISONS:
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


def probe_section(res: Results, out: Path) -> str:
    head = ["## LOO sensitivity probe", "",
            "`ddlm probe`: along an ancestral sampling trajectory, one token of a position is changed and the TV "
            "change of that position's LOO (the model's output converted exactly to the LOO) is measured; 0 for "
            "an exact LOO.", ""]
    rows = []
    by_name = {Path(r["run"]).name: r for r in (res.probe or {}).get("runs", [])}
    for name in P.UDM_RUNS:
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


def sudoku_section(res: Results) -> str:
    rows, cmds = [], []
    for name in P.SUDOKU_RUNS:
        for nfe in P.SUDOKU_NFE:
            r = res.sudoku.get((name, nfe))
            if r is None:
                rows.append([name, str(nfe), "—", "—", "—", "—", "—", MISSING])
                continue
            rows.append([name, str(nfe), f"{r['run']['step']:,}", str(r["num_puzzles"]),
                         pm(r["accuracy"], accuracy_se(r)), f"{r['solve_rate']:.3f}", f"{r['mean_violations']:.2f}",
                         f"{r['cell_accuracy']:.3f}"])
            cmds.append(P.sudoku_command(name, r["sampler"]["nfe"], r["num_puzzles"]))
    return "\n".join([
        "## Sudoku", "",
        "`ddlm sudoku`: generated test puzzles (35 clues, seed disjoint from training and validation) solved by "
        "ancestral sampling with the clues fixed. Accuracy: the grid equals the solution (SE as in the rules); "
        "solve rate: no row/column/box violation; violations: per grid, sum over the 27 units of 9 - distinct "
        "digits.", "",
        table("sudoku", ["run", "NFE", "step", "puzzles", "accuracy ± SE", "solve rate", "mean violations",
                         "cell accuracy"], rows), "", "Commands:", "", command_block(cmds) if cmds else "(none yet)"])


def verdict_section(res: Results) -> str:
    parts = parts_of(res)
    results, sizes = claim_results(parts), family_sizes(parts)
    rows = []
    for c, r in results.items():
        counted = [p for p in parts if p.claim == c and p.counted]
        measured = sum(p.verdict != MISSING for p in counted)
        how = (f"primary: {PRIMARY_TEXT[c]}, tested alone at {ALPHA:g}; once it is supported, the other "
               f"{max(sizes[c] - 1, 0)} measured comparisons by Holm at {ALPHA:g} (gatekeeping)")
        if r.verdict == MISSING or measured == len(counted):
            rows.append([f"claim {c}", "**" + r.verdict + "**", how, ""])
        else:  # some parts still to measure: the verdict may change
            rows.append([f"claim {c}", f"**{r.verdict}** (provisional)",
                         f"{how}; {measured} of its {len(counted)} parts measured so far", ""])
    rows += [[p.label, p.verdict, p.evidence, "primary" if any(
        (p.key, cmp.label) == PRIMARY[p.claim] for cmp in p.comparisons) else ""] for p in parts]
    differ = [f"- **claim {c}**: {r.verdict}." for c, r in results.items()
              if r.verdict in (NOT_REPRODUCED, INCONCLUSIVE, MIXED)]
    return "\n".join(["## Verdicts", "",
                      "A part's verdict says which of its comparisons are supported (the claim's primary tested "
                      "alone, the others by Holm once the primary is supported) and which count against the claim "
                      "(A worse by more than Z SE); numbers are A - B on a lower-is-better scale with their SE and "
                      "one-sided p-value.", "",
                      table("verdicts", ["claim / part", "verdict", "evidence", "role"], rows), "",
                      "The rules are spelled out at the end of this page.", "",
                      "Where this scale does not confirm the paper (not reproduced: some comparison is against it, "
                      "weak evidence unless it is 'against, Holm'; mixed: evidence both ways; inconclusive: the "
                      "numbers here cannot decide):", "",
                      "\n".join(differ) if differ else "nowhere, among the claims measured so far."])


def compute_section(res: Results) -> str:
    """Training and evaluation time the study took, from its result files."""
    train = sum(r.get("train_minutes") or 0.0 for r in res.train.values())
    frontier = sum(float(r["seconds"] or 0) for rows in res.frontier.values() for r in rows) / 60
    timed: dict[str, float] = {}
    for t in res.times:
        timed[t["command"]] = timed.get(t["command"], 0.0) + t["seconds"] / 60
    rows = [["training (`train_minutes` of the runs' last checkpoints)", f"{len(res.train)} runs", f"{train:.0f}"],
            ["frontier points in the report (`seconds` of their CSV rows: sampling and judging)",
             f"{sum(len(v) for v in res.frontier.values())} points", f"{frontier:.0f}"]]
    for command, minutes in sorted(timed.items()):
        n = sum(t["command"] == command for t in res.times)
        rows.append([f"`ddlm {command}` commands of the study (wall time, `results/times.jsonl`)", f"{n} commands",
                     f"{minutes:.0f}"])
    return "\n".join(["## Compute", "",
                      "Wall-clock minutes the study took (2-core CPU machines; runs trained one or two at a time). "
                      "`results/times.jsonl` holds the wall time of every command the study ran since it started "
                      "recording them (the runs and results made before that have only their own records).", "",
                      table("compute", ["what", "count", "minutes"], rows)])


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
    sections = [header, status_section(res), "## Claims", CLAIMS, verdict_section(res), training_section(res),
                bound_section(res), frontier_section(res, out), probe_section(res, out), sudoku_section(res),
                compute_section(res), "## Rules", RULES]
    return "\n\n".join(sections) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(P.ROOT / "results"), help="the study's results folder")
    p.add_argument("--out", default=str(P.ROOT.parent / "docs" / "reproduction.md"), help="the report file")
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
