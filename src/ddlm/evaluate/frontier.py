"""Generative frontiers (MATH.md section 6): generative perplexity under an external judge against the
unigram entropy of the samples, sweeping temperature or top-p, one curve per run, sampler and NFE.

log GenPPL ~ H + KL, so a sampler can lower its GenPPL by lowering its entropy alone; only curves
compare samplers honestly. A sweep is a grid of points (run x sampler x NFE x temperature x top-p,
with fixed other options); each point draws ``num_samples`` samples, decodes them, scores them with
the judge and records one CSV row with every setting. Points already in the CSV are skipped, so an
interrupted sweep resumes where it stopped, and sweeps with other options (a corrector, remasking,
temperature on the denoiser, another run) can be added to the same folder and plotted together.

With ``--mauve`` each point also gets MAUVE between its samples and as many held-out blocks of the
run's validation split (decoded, cut the same way as the samples), on the judge's features.

Files in the output folder: ``frontier.csv`` (one row per point), ``samples/<name>.jsonl`` (the
decoded samples of each point, named by :func:`samples_name`, e.g.
``demo-mdm-ancestral-nfe64-T0.8-p1-seed0-1a2b3c4d.jsonl``; each row names its file, so folders made
when the files were named by a hash alone read as before) and ``frontier.png``
(``ddlm.evaluate.frontier_plot``). The command prints one line per point as it is scored and the
whole table at the end (:func:`format_table`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import time
from pathlib import Path

from .._io import atomic_write_text
from .metrics import sample_entropy
from .options import TEMPERATURE_ON, SamplerSettings, draw, resolve_sampler

#: settings that identify a point (a resumed sweep skips rows whose key is already in the CSV)
KEY_FIELDS = ("run", "checkpoint", "step", "process", "sampler", "nfe", "temperature", "temperature_on", "top_p",
              "corrector", "remasking", "seed", "num_samples", "length", "batch_size", "judge", "mauve_reference")
RESULT_FIELDS = ("gen_ppl", "mean_nll", "mean_nll_se", "judge_tokens", "num_empty", "entropy", "entropy_se",
                 "pooled_entropy", "mauve", "seconds")
FIELDS = ("label",) + KEY_FIELDS + RESULT_FIELDS + ("samples_file", "ddlm_version")
#: the header of CSVs written before ``entropy_se`` was recorded: read as such (the column empty), and
#: rewritten with the current header before a new row is appended
OLD_FIELDS = tuple(f for f in FIELDS if f != "entropy_se")
CSV_NAME, PLOT_NAME = "frontier.csv", "frontier.png"


def _as_cell(value) -> str:
    """CSV text of a setting: '' for None, JSON for dicts, repr-exact floats."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_key(row: dict) -> tuple[str, ...]:
    """The identity of a point: its settings as CSV text (results excluded)."""
    return tuple(_as_cell(row[f]) for f in KEY_FIELDS)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a frontier CSV as dicts of strings ([] when the file does not exist).

    Raises:
        ValueError: the file's header is not the frontier header (another file, or another version).
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) not in (FIELDS, OLD_FIELDS):
            raise ValueError(f"frontier file {str(path)!r} has columns {reader.fieldnames}, expected {list(FIELDS)}; "
                             "use another --out folder")
        return [{k: r.get(k, "") for k in FIELDS} for r in reader]


def _upgrade(path: Path) -> None:
    """Rewrite a CSV of the previous header (no ``entropy_se``) with the current one, every row kept."""
    with open(path, newline="") as f:
        header = tuple(next(csv.reader(f), ()))
    if header != OLD_FIELDS:
        return
    import io

    rows = read_rows(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one point to the CSV (header first if new), flushed to disk before returning."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _upgrade(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: _as_cell(row.get(k)) for k in FIELDS})
        f.flush()
        os.fsync(f.fileno())


def samples_name(row: dict) -> str:
    """The file name of a point's samples: label (the curve's, e.g. the run folder's name), sampler,
    NFE, temperature, top-p and seed, readable, then 8 hex digits of the hash of every setting, so that
    points differing in anything else (corrector, remasking, sample count, judge, checkpoint) never
    share a file, in this folder or in another one rows are copied to."""
    digest = hashlib.sha1(repr(point_key(row)).encode()).hexdigest()[:8]
    parts = [str(row.get("label") or Path(str(row["run"])).name), str(row["sampler"])]
    if row.get("nfe"):
        parts.append(f"nfe{row['nfe']}")
    parts += [f"T{float(row['temperature']):g}", f"p{float(row['top_p']):g}", f"seed{row['seed']}", digest]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts)) + ".jsonl"


TABLE_HEADER = (f"{'label':<18} {'sampler':<16} {'nfe':>4} {'T':>5} {'top-p':>5}  {'gen-PPL':>9} {'+-SE':>6}  "
                f"{'entropy':>7}  {'MAUVE':>5}  {'s':>5}  judge")


def format_row(row: dict) -> str:
    """One line of the frontier table: settings, gen-PPL (+- its SE as a factor of exp(mean NLL)), the
    samples' mean unigram entropy, MAUVE when scored, seconds and judge."""
    def num(key, fmt, width):
        value = row.get(key)
        return f"{float(value):{width}{fmt}}" if value not in (None, "") else f"{'-':>{width}}"

    se = row.get("mean_nll_se")
    factor = f"x{math.exp(float(se)):.3f}" if se not in (None, "") else "-"
    return (f"{str(row.get('label') or ''):<18.18} {str(row['sampler']):<16.16} {str(row.get('nfe') or '-'):>4} "
            f"{float(row['temperature']):>5g} {float(row['top_p']):>5g}  {num('gen_ppl', '.2f', 9)} {factor:>6}  "
            f"{num('entropy', '.3f', 7)}  {num('mauve', '.3f', 5)}  {num('seconds', '.0f', 5)}  {row['judge']}")


def format_table(rows: list[dict]) -> str:
    """The frontier table, one line per point, in the CSV's order."""
    return "\n".join([TABLE_HEADER] + [format_row(r) for r in rows])


def grid(samplers, nfes, temperatures, top_ps, base: SamplerSettings) -> list[SamplerSettings]:
    """Every combination of the swept values over ``base`` (the fixed options), validated."""
    out = []
    for sampler, nfe, temperature, top_p in itertools.product(samplers, nfes, temperatures, top_ps):
        out.append(dataclasses.replace(base, sampler=sampler, nfe=nfe, temperature=temperature, top_p=top_p))
    return out


def _check_list(name: str, values) -> list:
    if not values:
        raise ValueError(f"{name} must hold at least one value, got {values!r}")
    return list(values)


def sweep(runs: list, settings: list[SamplerSettings], judge, out_dir: str | os.PathLike, *, num_samples: int = 64,
          length: int | None = None, batch_size: int = 32, labels: list[str] | None = None, device=None,
          mauve: bool = False, progress: bool = True, log=print) -> list[dict]:
    """Score every (run, settings) point not yet in ``out_dir/frontier.csv``; return all rows of the CSV.

    Args:
        runs: ``LoadedRun`` objects (``ddlm.evaluate.results.load_run``).
        settings: the sampler settings of the points (see :func:`grid`); for an autoregressive run the
            diffusion options are dropped and the NFE is not recorded (one pass per token), so a
            temperature or top-p sweep gives one point per value.
        judge: an object with ``name`` and ``gen_ppl(texts)`` (``ddlm.evaluate.judge_loading.load_judge``).
        out_dir: the sweep's folder (created); its CSV is appended to point by point.
        num_samples, length, batch_size: per point; length defaults to each run's ``sample_length``
            (the block size; for an autoregressive run BOS + a block).
        labels: curve labels per run (default: the run folder's name).
        mauve: also score MAUVE against held-out text (:func:`held_out_texts`; needs ``judge.features``).
        device, progress: where sampling runs; progress bars.

    Raises:
        ValueError: mismatched labels, a setting that does not apply to a run (named), an existing CSV
            of another format.
    """
    from tqdm import tqdm

    from .. import __version__

    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    csv_path = out / CSV_NAME
    labels = labels or [Path(r.info["run"]).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"labels has {len(labels)} entries for {len(runs)} runs; give one label per run")
    done = {point_key(r) for r in read_rows(csv_path)}
    todo = []
    for run, label in zip(runs, labels, strict=True):
        length_ = run.sample_length if length is None else length
        seen = set()
        for s in settings:
            row = _point_settings(run, s, judge.name, num_samples, length_, batch_size)
            row["mauve_reference"] = "validation" if mauve else None
            key = point_key(row)
            if key in seen:
                continue  # an autoregressive run has one point per (temperature, top_p) whatever the NFE
            seen.add(key)
            if key not in done:
                todo.append((run, label, s, row))
    log(f"frontier: {len(todo)} points to score ({len(done)} already in {csv_path})")
    bar = tqdm(todo, desc="frontier", unit="point", disable=not progress)
    say = tqdm.write if progress and log is print else log  # a line above the bar, not through it
    if todo:
        say(TABLE_HEADER)
    for run, label, s, row in bar:
        bar.set_postfix_str(f"{label} {row['sampler']} nfe={row['nfe']} T={row['temperature']} p={row['top_p']}")
        start = time.perf_counter()
        s_run = _for_run(run, s)
        x = draw(run.model, run.process, run.tokenizer, s_run, num_samples, row["length"], batch_size=batch_size,
                 device=device)
        texts = [run.tokenizer.decode(r) for r in x.tolist()]
        scored = judge.gen_ppl(texts)
        if mauve:
            from .mauve import mauve_score

            reference = held_out_texts(run, num_samples, row["length"], seed=s.seed)
            row["mauve"] = mauve_score(reference, [t for t in texts if t.strip()], judge)["mauve"]
        ent = content_entropy(x.tolist(), run.tokenizer)
        name = samples_name(dict(row, label=label))
        atomic_write_text(out / "samples" / name, "".join(json.dumps({"text": text}) + "\n" for text in texts))
        row.update(label=label, gen_ppl=scored["gen_ppl"], mean_nll=scored["mean_nll"],
                   mean_nll_se=scored.get("mean_nll_se"),
                   judge_tokens=scored["num_tokens"], num_empty=scored.get("num_empty", 0),
                   entropy=ent["mean_entropy"], entropy_se=ent["entropy_se"], pooled_entropy=ent["pooled_entropy"],
                   seconds=round(time.perf_counter() - start, 3), samples_file=f"samples/{name}",
                   ddlm_version=__version__)
        append_row(csv_path, row)
        say(format_row(row))
    return read_rows(csv_path)


def held_out_texts(run, num: int, length: int, seed: int = 0) -> list[str]:
    """``num`` blocks of the run's validation split (a seeded random choice), cut to ``length`` tokens
    and decoded: the human text MAUVE compares samples with.

    Raises:
        ValueError: the split has fewer than ``num`` blocks.
    """
    import torch

    from .bound import run_blocks

    blocks, _ = run_blocks(run, None)
    if blocks.shape[0] < num:
        raise ValueError(f"MAUVE needs {num} held-out blocks (one per sample), the validation split of "
                         f"{run.info['run']!r} has {blocks.shape[0]}; use fewer --num-samples")
    pick = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(seed))[:num]
    return [run.tokenizer.decode(row[:length]) for row in blocks[pick].tolist()]


def content_entropy(rows: list[list[int]], tokenizer) -> dict:
    """``sample_entropy`` of the samples' content tokens: BOS/EOS (which decoding drops and the judge
    never sees) are removed first; samples made only of them are left out of the mean."""
    special = {tokenizer.bos_id, tokenizer.eos_id}
    content = [[i for i in row if i not in special] for row in rows]
    content = [row for row in content if row]
    if not content:
        return {"mean_entropy": float("nan"), "entropy_se": float("nan"), "pooled_entropy": float("nan")}
    return sample_entropy(content)


def _for_run(run, s: SamplerSettings) -> SamplerSettings:
    """The settings a run actually uses: an autoregressive run keeps temperature, top-p and seed."""
    if run.process is None:
        return SamplerSettings(temperature=s.temperature, top_p=s.top_p, seed=s.seed)
    return s


def _point_settings(run, s: SamplerSettings, judge_name: str, num_samples: int, length: int, batch_size: int) -> dict:
    ar = run.process is None
    s = _for_run(run, s)
    return {"run": run.info["run"], "checkpoint": run.info["checkpoint"], "step": run.info["step"],
            "process": run.info["process"], "sampler": "ancestral" if ar else resolve_sampler(s, run.process),
            "nfe": None if ar else s.nfe, "temperature": s.temperature, "temperature_on": s.temperature_on,
            "top_p": s.top_p, "corrector": s.corrector, "remasking": s.remasking, "seed": s.seed,
            "num_samples": num_samples, "length": length, "batch_size": batch_size, "judge": judge_name}


# ---- command line ---------------------------------------------------------------------------------

def _handler(args) -> int:
    from .frontier_plot import plot_frontier
    from .options import settings_from_args
    from .results import load_run

    out = Path(args.out)
    if args.plot_only:
        rows = read_rows(out / CSV_NAME)
        if not rows:
            raise FileNotFoundError(f"no frontier points in {str(out / CSV_NAME)!r}")
        print(f"frontier table ({len(rows)} points, {out / CSV_NAME}):\n{format_table(rows)}\n")
        print(f"wrote {plot_frontier(rows, out / PLOT_NAME)}")
        return 0
    if not args.runs:
        raise ValueError("give at least one RUN folder (or --plot-only)")
    from .._io import check_writable

    check_writable(out, "--out folder")  # before loading the judge and sampling
    temps = _check_list("--temperature", args.temperature)
    top_ps = _check_list("--top-p", args.top_p)
    if len(temps) > 1 and len(top_ps) > 1:
        raise ValueError("sweep --temperature or --top-p, not both (give one value for the other)")
    fixed = argparse.Namespace(**vars(args))
    fixed.sampler, fixed.nfe, fixed.temperature, fixed.top_p = None, None, 1.0, 1.0
    base = settings_from_args(fixed)
    points = grid(args.sampler or [None], _check_list("--nfe", args.nfe), temps, top_ps, base)
    from .judge_loading import load_judge

    judge = load_judge(args.judge, device=args.device or "cpu", progress=not args.no_progress)
    runs = [load_run(r, device=args.device or "cpu", tokenizer=args.tokenizer) for r in args.runs]
    for run in runs:  # fail before any sampling if an option does not apply to a run
        from .options import check_applicable

        for s in points:
            check_applicable(_for_run(run, s), run.process)
    before = len(read_rows(out / CSV_NAME)) if (out / CSV_NAME).exists() else 0
    rows = sweep(runs, points, judge, out, num_samples=args.num_samples, length=args.length,
                 batch_size=args.batch_size, labels=args.labels, device=args.device, mauve=args.mauve,
                 progress=not args.no_progress)
    print(f"\nfrontier table ({len(rows)} points, {out / CSV_NAME}):\n{format_table(rows)}\n")
    if len(rows) == before and (out / PLOT_NAME).exists():
        print(f"{len(rows)} points in {out / CSV_NAME}, none new; {out / PLOT_NAME} left as it is")
    else:
        print(f"{len(rows)} points in {out / CSV_NAME}; wrote {plot_frontier(rows, out / PLOT_NAME)}")
    return 0


def add_command(subparsers) -> None:
    """Register ``ddlm frontier``."""
    p = subparsers.add_parser(
        "frontier", help="generative frontier sweep: gen-PPL under a judge against sample entropy (CSV + PNG)",
        description=__doc__.split("\n\n")[0] + " Resumable: points already in OUT/frontier.csv are skipped.")
    p.add_argument("runs", nargs="*", help="run folders, checkpoint folders or released checkpoints (several are "
                                           "overlaid)")
    p.add_argument("--out", required=True, help="output folder (frontier.csv, samples/, frontier.png)")
    p.add_argument("--labels", nargs="+", default=None, help="curve label per run (default: folder names)")
    p.add_argument("--sampler", nargs="+", default=None, help="samplers to sweep (default: the process's ancestral)")
    p.add_argument("--nfe", nargs="+", type=int, default=[16, 64, 256], help="NFE values (default 16 64 256)")
    p.add_argument("--temperature", nargs="+", type=float, default=[1.0], help="temperatures to sweep (default 1)")
    p.add_argument("--top-p", nargs="+", type=float, default=[1.0], help="top-p values to sweep (default 1)")
    p.add_argument("--temperature-on", choices=TEMPERATURE_ON, default=None, help="UDM: temper the LOO or the denoiser")
    p.add_argument("--corrector-sweeps", type=int, default=None, help="UDM: Gibbs corrector sweeps (enables it)")
    p.add_argument("--corrector-k", type=int, default=None, help="positions per corrector sweep")
    p.add_argument("--corrector-selection", default=None,
                   choices=("random", "lowest_maxprob", "lowest_current_prob", "lowest_log_margin"))
    p.add_argument("--corrector-tau", type=float, default=None)
    p.add_argument("--remasking", default=None, choices=("cap", "constant", "rescale", "loop"),
                   help="MDM: ReMDM remasking schedule (sampler remdm)")
    p.add_argument("--remasking-eta", type=float, default=None)
    for name in ("t_on", "t_off", "alpha_on", "t_switch"):
        p.add_argument(f"--remasking-{name.replace('_', '-')}", dest=f"remasking_{name}", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every point (default 0)")
    p.add_argument("--judge", default="smollm2",
                   help="smollm2 (default), a local Hugging Face causal-LM folder, or a ddlm AR run")
    p.add_argument("--num-samples", type=int, default=64, help="samples per point (default 64)")
    p.add_argument("--length", type=int, default=None, help="tokens per sample (default: the run's block size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    p.add_argument("--mauve", action="store_true",
                   help="also MAUVE against as many held-out validation blocks, on the judge's features")
    p.add_argument("--plot-only", action="store_true", help="only redraw OUT/frontier.png from the CSV")
    from .results import add_model_options

    add_model_options(p, weights=False)  # EMA weights: a point's key (its CSV row) does not record the weights
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_handler)
