"""``ddlm probe``: the command line and the plot of the LOO sensitivity probe (``ddlm.evaluate.probe``).

For each UDM run: sample a trajectory, measure the LOO sensitivity at every state it visits, and write
OUT/probe.json (settings, checkpoint, per-state results) and OUT/probe.png (mean TV against t).
"""

from __future__ import annotations

from pathlib import Path

from ..processes import REGISTRY, UniformDiffusion
from .probe import _WHY_UDM, _check_udm, probe

# ---- plot --------------------------------------------------------------------------------------

def _curves(results) -> dict[str, list[dict]]:
    """Normalise the accepted inputs of ``plot_probe`` to {label: per-state dicts}."""
    if isinstance(results, list):
        results = {"": results}
    if not isinstance(results, dict) or not results:
        raise ValueError(f"results must be a non-empty list of per-state dicts or a dict label -> list, "
                         f"got {type(results).__name__}")
    curves = {}
    for label, states in results.items():
        if isinstance(states, dict) and "states" in states:  # a ``probe`` record
            states = states["states"]
        if not isinstance(states, list) or not states or not all(isinstance(s, dict) and {"t", "mean_tv"} <= s.keys()
                                                                 for s in states):
            raise ValueError(f"results[{label!r}] must be a non-empty list of dicts with keys 't' and 'mean_tv' "
                             f"(as returned by loo_sensitivity), got {type(states).__name__}")
        curves[str(label)] = states
    return curves


def _pyplot():
    """matplotlib.pyplot on the Agg backend; ImportError with the install hint if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plot_probe needs matplotlib: pip install 'ddlm[eval]' (or matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_probe(results: list[dict] | dict[str, list[dict]], path: str | Path) -> None:
    """Mean TV of the LOO against t, with a +- 1 SE band, one curve per label; written as a PNG.

    Args:
        results: per-state dicts from ``loo_sensitivity`` (one curve), or {label: per-state dicts or a
            ``probe`` record} (one curve per label).
        path: the PNG file.
    """
    curves = _curves(results)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for label, states in curves.items():
            t = [s["t"] for s in states]
            mean = [s["mean_tv"] for s in states]
            (line,) = ax.plot(t, mean, marker=".", label=label or None)
            se = [s.get("se_tv") for s in states]
            if all(v is not None for v in se):
                ax.fill_between(t, [m - v for m, v in zip(mean, se, strict=True)],
                                [m + v for m, v in zip(mean, se, strict=True)],
                                color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_xlim(1.0, 0.0)  # sampling runs from t = 1 to t = 0
        ax.set_xlabel("t (sampling runs left to right, from t = 1 to t = 0)")
        ax.set_ylabel("mean TV of the LOO under a one-token change")
        ax.set_title("LOO sensitivity along the sampling trajectory (0 = exact LOO)")
        ax.grid(alpha=0.3)
        if any(curves):
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)


# ---- command line ------------------------------------------------------------------------------

def _load_udm_run(path: str, device: str = "cpu", weights: str = "ema"):
    """(model, process, run_info) of a run folder, checkpoint folder or released checkpoint; ValueError
    unless it is UDM."""
    from ..pretrained import is_pretrained
    from ..runs import load, model_from_checkpoint, open_checkpoint
    from .results import _info, resolve_device, run_info

    info = run_info(path)  # FileNotFoundError / ValueError naming the path
    cls = REGISTRY.get(info["process"])
    if cls is None or not issubclass(cls, UniformDiffusion):  # refuse before loading the weights
        raise ValueError(f"run {path!r} has process {info['process'].upper()}; {_WHY_UDM}")
    if is_pretrained(path):
        model, process, _ = load(path, weights)
        info = dict(info, imported=model.conventions)
    else:
        ckpt = open_checkpoint(path, weights_only=True)  # verified; a damaged latest names the way out
        info = _info(path, ckpt.path, ckpt.config, ckpt.step)
        model, process, _ = model_from_checkpoint(ckpt, ema=weights == "ema")
    _check_udm(process, f"the process of run {path!r}")
    return model.to(resolve_device(device)).eval(), process, info


def _default_out(runs: list[str]) -> Path:
    from ..runs import is_run_folder

    if len(runs) == 1 and is_run_folder(runs[0]):
        return Path(runs[0]) / "probe"
    raise ValueError(f"--out is required unless a single training run folder is given (then it defaults to "
                     f"RUN/probe); got runs {runs}")


def _command(args) -> int:
    """``ddlm probe``: the probe of each run on the same settings, to OUT/probe.json and OUT/probe.png."""
    from .results import write_json

    if len(set(args.runs)) != len(args.runs):
        raise ValueError(f"runs must be distinct (each is one curve and one record), got {args.runs}")
    _pyplot()  # fail before any work if the plot cannot be made
    out = Path(args.out) if args.out is not None else _default_out(args.runs)
    json_path, png_path = out / "probe.json", out / "probe.png"
    if json_path.exists() and not args.overwrite:  # fail before any work; write_json re-checks atomically
        raise FileExistsError(f"result file {str(json_path)!r} already exists; choose another --out or pass "
                              "--overwrite")
    from .._io import check_writable

    check_writable(out, "--out folder")
    # every run is checked before any is probed
    loaded = [(run, *_load_udm_run(run, args.device, args.weights)) for run in args.runs]
    records = []
    for run, model, process, info in loaded:
        length = args.length if args.length is not None else model.net.config.max_len
        rec = probe(model, process, num_samples=args.num_samples, length=length, nfe=args.nfe,
                    positions_per_sequence=args.positions, sampler=args.sampler, batch_size=args.batch_size,
                    seed=args.seed, device=next(model.parameters()).device, progress=not args.no_progress)
        records.append({"run": run, "checkpoint": info["checkpoint"], "step": info["step"], "weights": args.weights,
                        "run_info": info, **rec})
        print(f"{run} (step {info['step']}): mean TV {rec['mean_tv']:.4g}, max TV {rec['max_tv']:.4g} "
              f"over {len(rec['states'])} states")
    settings = {"nfe": args.nfe, "num_samples": args.num_samples, "positions_per_sequence": args.positions,
                "seed": args.seed, "sampler": args.sampler, "length": args.length, "batch_size": args.batch_size,
                "device": args.device}
    write_json(json_path, {"command": "probe", "settings": settings, "runs": records}, overwrite=args.overwrite)
    plot_probe({r["run"]: r["states"] for r in records}, png_path)
    print(f"wrote {json_path} and {png_path}")
    return 0


def add_command(subparsers) -> None:
    """Add ``ddlm probe RUN [RUN ...]`` to an ``argparse`` subparsers object (sets ``func``)."""
    from ..sampling.registry import samplers

    p = subparsers.add_parser(
        "probe", help="LOO sensitivity probe of uniform-diffusion runs along the sampling trajectory",
        description="For each UDM run: sample a trajectory, then at every state it visits change one token at "
                    "P positions per sequence and measure the TV change of the model's LOO there (0 for an exact "
                    "LOO). Writes OUT/probe.json (settings, checkpoint, per-state results) and OUT/probe.png.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="UDM run folder(s), checkpoint folder(s) or released UDM checkpoint(s)")
    p.add_argument("--nfe", type=int, default=64, help="forward passes of the sampled trajectory (default 64)")
    p.add_argument("--num-samples", type=int, default=16, help="sequences sampled per run (default 16)")
    p.add_argument("--positions", type=int, default=8, help="perturbed positions per sequence and state (default 8)")
    p.add_argument("--length", type=int, default=None, help="sequence length (default: the run's block size)")
    p.add_argument("--sampler", default="ancestral", choices=samplers(UniformDiffusion),
                   help="UDM sampler of the trajectory (default ancestral)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per forward pass of the probe (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trajectory and the perturbations (default 0)")
    p.add_argument("--out", default=None,
                   help="output folder (default RUN/probe for a single run folder; required otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/probe.json")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="EMA (default) or raw weights of a run or of a file that holds both")
    p.set_defaults(func=_command)
