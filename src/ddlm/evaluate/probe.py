"""The LOO sensitivity probe for uniform diffusion (MATH.md sections 3 and 6).

The leave-one-out posterior r_i(y | x^{-i}) = p(x_0^i = y | x_t^{-i}) does not depend on the
position's own noisy token x^i. For a model, write r_i^theta(. | x) for the LOO it predicts at
position i of the noisy sequence x at time t (its output if it predicts the LOO, the exact
denoiser -> LOO conversion of ``ddlm.conversions`` at alpha_t if it predicts the denoiser). The
probe measures, for a position i and a replacement token y != x^i,

    TV_i(x, y) = 1/2 sum_z | r_i^theta(z | x) - r_i^theta(z | x^{i<-y}) |,

which is 0 for the exact LOO (and for the exact denoiser converted to the LOO) and positive for a
model that leaks its own token, e.g. a denoiser used as if it were a LOO. It is evaluated on the
states (x_t, t) the sampler actually visits (``trajectory``), at ``positions_per_sequence`` distinct
positions per sequence, each with one replacement drawn uniformly from the K - 1 other tokens.

Public API: ``draw_perturbations``, ``loo_tv`` (explicit picks), ``loo_sensitivity`` (random picks,
summarised per state), ``trajectory``, ``probe``, ``plot_probe`` and ``add_command`` (``ddlm probe``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor

from .. import conversions
from .._checks import check_tokens

#: views of a uniform-diffusion model that convert to the LOO (see ``ddlm.conversions.VIEWS``)
OUTPUTS = conversions.VIEWS

_WHY_UDM = (
    "the LOO sensitivity probe applies to uniform diffusion (UDM) only: the LOO r_i(y | x^{-i}) it "
    "tests is what UDM networks predict and the plug-in bridge consumes, whereas MDM and AUDM networks "
    "predict the denoiser / posterior p(x_0^i | x_t), which legitimately depends on the token x^i"
)


# ---- checks ------------------------------------------------------------------------------------

def _check_udm(process, what: str = "process") -> None:
    """Raise ValueError unless ``process`` is a UniformDiffusion (process.name == "udm")."""
    name = getattr(process, "name", None)
    if name != "udm":
        shown = "None (an autoregressive model)" if process is None else (name.upper() if name else repr(process))
        raise ValueError(f"{what} is {shown}; {_WHY_UDM}")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _output_of(model, output: str | None) -> str:
    """What the model predicts: ``output`` if given, else ``model.output``."""
    if output is None:
        output = getattr(model, "output", None)
        if output is None:
            raise ValueError(
                f"output is None and the model ({type(model).__name__}) has no .output attribute; "
                f"pass output= one of {OUTPUTS}"
            )
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS} (what the model predicts), got {output!r}")
    return output


def _check_eval_mode(model) -> None:
    if isinstance(model, torch.nn.Module) and model.training:
        raise ValueError(
            "model is in training mode (dropout would make the original and perturbed passes differ); "
            "call model.eval() first"
        )


# ---- the probe on explicit perturbations --------------------------------------------------------

def draw_perturbations(x: Tensor, vocab_size: int, positions_per_sequence: int,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random perturbation picks for the probe.

    Args:
        x: (B, L) noisy tokens in [0, vocab_size).
        vocab_size: K.
        positions_per_sequence: P; min(P, L) distinct positions are drawn per sequence.
        generator: source of randomness (its device is used for the draws).

    Returns:
        positions (B, P') and tokens (B, P') int64 on x's device, P' = min(P, L): distinct positions
        drawn uniformly without replacement per row, and for each a replacement token drawn uniformly
        from the K - 1 tokens other than the current one.
    """
    check_tokens("x", x, vocab_size)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, L), got shape {tuple(x.shape)}")
    _check_positive_int("positions_per_sequence", positions_per_sequence)
    b, length = x.shape
    p = min(positions_per_sequence, length)
    dev = generator.device if generator is not None else x.device
    positions = torch.rand((b, length), generator=generator, device=dev).argsort(-1)[:, :p].to(x.device)
    shift = torch.randint(1, vocab_size, (b, p), generator=generator, device=dev).to(x.device)
    tokens = (x.gather(1, positions) + shift) % vocab_size  # uniform over the K - 1 other tokens
    return positions, tokens


def _forward(model, x: Tensor, t: float, vocab_size: int, batch_size: int) -> Tensor:
    """Model logits over the K data tokens for the rows of x (N, L), in batches, float64 (N, L, K)."""
    outs = []
    for start in range(0, x.shape[0], batch_size):
        xi = x[start : start + batch_size]
        tt = torch.full((xi.shape[0],), float(t), dtype=torch.float64, device=x.device)
        out = model(xi, tt)
        want = (xi.shape[0], xi.shape[1])
        if not isinstance(out, Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != want or out.shape[-1] < vocab_size:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"model output has shape {got}, expected logits of shape ({want[0]}, {want[1]}, V) "
                f"with V >= K = {vocab_size}"
            )
        outs.append(out[..., :vocab_size].to(torch.float64))
    return torch.cat(outs, 0)


def _to_loo(logits: Tensor, x: Tensor, alpha: float, output: str) -> Tensor:
    """The LOO log-probabilities (N, L, K) the model's output implies at alpha (exact conversion)."""
    return conversions.convert(logits, x, alpha, output, "loo")


def _alpha_at(process, t: float, output: str) -> float:
    """alpha_t as a float, checking that the model's view carries the LOO information at this t."""
    if not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
        raise ValueError(f"t must be a float in [0, 1], got {t!r}")
    alpha = float(process.alpha(torch.tensor(float(t), dtype=torch.float64)))
    if output == "denoiser" and alpha >= 1.0:
        raise ValueError(f"t = {t} gives alpha = 1, where a denoiser is a point mass on x^i and holds no "
                         "LOO information")
    if output == "score" and alpha <= 0.0:
        raise ValueError(f"t = {t} gives alpha = 0, where the score is constant and holds no LOO information")
    return alpha


@torch.no_grad()
def loo_tv(model, process, x: Tensor, t: float, positions: Tensor, tokens: Tensor, *, output: str | None = None,
           batch_size: int = 256) -> Tensor:
    """TV between the model's LOO at each picked position before and after changing that position's token.

    Args:
        model: ``model(xt, t) -> logits (N, L, V)``, V >= K; ``t`` is passed as an (N,) float64 tensor.
        process: a ``UniformDiffusion`` (maps t to alpha_t).
        x: (B, L) noisy tokens.
        t: the time of the state.
        positions: (B, P) positions i to perturb (one perturbed copy of x per entry).
        tokens: (B, P) replacement tokens y (any token; y = x^i gives TV 0).
        output: what the model predicts ("loo", "denoiser" or "score"); default ``model.output``.
        batch_size: rows per forward pass.

    Returns:
        (B, P) float64: TV_i(x, y) = 1/2 sum_z |r_i(z | x) - r_i(z | x^{i<-y})| with r the model's LOO
        (converted exactly from its output at alpha_t).
    """
    _check_udm(process)
    output = _output_of(model, output)
    _check_positive_int("batch_size", batch_size)
    k = process.vocab_size
    check_tokens("x", x, k)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, L), got shape {tuple(x.shape)}")
    for name, v in (("positions", positions), ("tokens", tokens)):
        if v.dim() != 2 or v.shape[0] != x.shape[0]:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, expected ({x.shape[0]}, P)")
    if positions.shape != tokens.shape:
        raise ValueError(f"positions has shape {tuple(positions.shape)} but tokens has {tuple(tokens.shape)}; "
                         "expected equal shapes")
    check_tokens("positions", positions, x.shape[1])
    check_tokens("tokens", tokens, k)
    _check_eval_mode(model)
    alpha = _alpha_at(process, t, output)
    b, p = positions.shape
    rows = torch.arange(b, device=x.device).repeat_interleave(p)
    pos, tok = positions.reshape(-1), tokens.reshape(-1)
    xp = x[rows].clone()
    xp[torch.arange(b * p, device=x.device), pos] = tok
    r = _to_loo(_forward(model, x, t, k, batch_size), x, alpha, output)  # (B, L, K)
    rp = _to_loo(_forward(model, xp, t, k, batch_size), xp, alpha, output)  # (B P, L, K)
    before = r[rows, pos]
    after = rp[torch.arange(b * p, device=x.device), pos]
    return (0.5 * (before.exp() - after.exp()).abs().sum(-1)).reshape(b, p)


def summarise(tv: Tensor) -> dict:
    """Mean, standard error and max of a (B, P) TV table.

    The standard error is over sequences (rows are independent, positions within a row are not):
    std of the per-row means (ddof 1) / sqrt(B); None when B = 1.
    """
    per_row = tv.mean(-1)
    b = tv.shape[0]
    se = float(per_row.std(unbiased=True) / math.sqrt(b)) if b > 1 else None
    return {"mean_tv": float(tv.mean()), "se_tv": se, "max_tv": float(tv.max()), "num": int(tv.numel()),
            "num_sequences": int(b)}


def loo_sensitivity(model, process, states: list[tuple[Tensor, float]], *, positions_per_sequence: int = 8,
                    output: str | None = None, generator: torch.Generator | None = None, batch_size: int = 256,
                    progress: bool = False) -> list[dict]:
    """The LOO sensitivity of a model at each state (x_t, t), with random perturbations.

    For each state, ``draw_perturbations`` picks min(P, L) distinct positions per sequence and a
    replacement token for each, and ``loo_tv`` gives the TV between the model's LOO at the position
    before and after the change. One forward pass is made on the B states and one on the B P'
    perturbed copies (in batches of ``batch_size`` rows).

    Args:
        model: ``model(xt, t) -> logits``; ``output`` (or ``model.output``) says what it predicts.
        process: a ``UniformDiffusion``.
        states: list of (x_t (B, L) int64, t float).
        positions_per_sequence: P.
        output: "loo", "denoiser" or "score"; default ``model.output``.
        generator: draws the perturbations.
        batch_size: rows per forward pass.
        progress: show a progress bar over the states.

    Returns:
        One dict per state: "t", "alpha", "mean_tv", "se_tv" (over sequences; None if B = 1),
        "max_tv", "num" (sequence-position pairs), "num_sequences".
    """
    _check_udm(process)
    output = _output_of(model, output)
    _check_positive_int("positions_per_sequence", positions_per_sequence)
    if not isinstance(states, (list, tuple)) or not states:
        raise ValueError(f"states must be a non-empty list of (x_t, t) pairs, got {type(states).__name__} "
                         f"of length {len(states) if hasattr(states, '__len__') else '?'}")
    from tqdm.auto import tqdm

    results = []
    for j, state in enumerate(tqdm(states, desc="LOO probe", unit="state", disable=not progress, leave=False)):
        if not (isinstance(state, (tuple, list)) and len(state) == 2 and isinstance(state[0], Tensor)):
            raise ValueError(f"states[{j}] must be an (x_t tensor, t float) pair, got {type(state).__name__}")
        x, t = state
        positions, tokens = draw_perturbations(x, process.vocab_size, positions_per_sequence, generator)
        tv = loo_tv(model, process, x, t, positions, tokens, output=output, batch_size=batch_size)
        alpha = float(process.alpha(torch.tensor(float(t), dtype=torch.float64)))
        results.append({"t": float(t), "alpha": alpha, **summarise(tv)})
    return results


# ---- the states the sampler visits -------------------------------------------------------------

class _Recorder:
    """Passes every call through to the model and records its input (x_t, t)."""

    def __init__(self, model):
        self.model = model
        self.states: list[tuple[Tensor, float]] = []

    def __call__(self, xt: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is not None:
            raise ValueError("the probe's recorder got AUDM noise tokens; " + _WHY_UDM)
        if not bool((t == t[0]).all()):
            raise ValueError(f"expected one time per forward pass, got times {t.unique().tolist()}")
        self.states.append((xt.clone(), float(t[0])))
        return self.model(xt, t)


def trajectory(model, process, num_samples: int, length: int, nfe: int, *, prediction: str | None = None,
               sampler: str = "ancestral", corrector=None, temperature: float = 1.0, temperature_on: str | None = None,
               top_p: float = 1.0, generator: torch.Generator | None = None, device=None,
               progress: bool = False) -> list[tuple[Tensor, float]]:
    """The states (x_t, t) at which ``ddlm.sample`` calls the model, in the order of the calls.

    The model is wrapped in a recorder that passes each call through and keeps a copy of its input.
    ``ddlm.sample`` is run with ``time_conditioned=True``: that disables its input cache (which, for
    time-unconditioned models, calls the model on the changed rows only and would record partial
    batches), so every forward pass sees, and records, the full (num_samples, length) state. For a
    time-unconditioned model this costs extra passes but does not change the trajectory (the cache
    only reuses outputs the model would reproduce). Every pass is recorded, predictor and corrector
    alike, so there are exactly ``nfe`` states; t is non-increasing along them (a corrector pass at
    s is followed by the predictor pass at the same s). The final samples (t = 0) are not a model
    input and are not included.

    Args:
        model: ``model(xt, t) -> logits``.
        process: a ``UniformDiffusion``.
        num_samples, length, nfe: as for ``ddlm.sample``.
        prediction: what the model predicts, passed to ``ddlm.sample``; default ``model.output``.
        sampler, corrector, temperature, temperature_on, top_p, generator, device, progress: as for
            ``ddlm.sample``.

    Returns:
        list of (x_t (num_samples, length) int64, t float), one per forward pass.
    """
    from ..sampling import sample

    _check_udm(process)
    prediction = _output_of(model, prediction)
    if prediction not in ("loo", "denoiser"):
        raise ValueError(f"prediction must be 'loo' or 'denoiser' for ddlm.sample, got {prediction!r}")
    _check_eval_mode(model)
    rec = _Recorder(model)
    sample(rec, process, num_samples, length, nfe, prediction=prediction, sampler=sampler, corrector=corrector,
           temperature=temperature, temperature_on=temperature_on, top_p=top_p, time_conditioned=True,
           generator=generator, device=device, progress=progress)
    return rec.states


# ---- the whole probe ---------------------------------------------------------------------------

def probe(model, process, *, num_samples: int, length: int, nfe: int, positions_per_sequence: int = 8,
          output: str | None = None, sampler: str = "ancestral", corrector=None, temperature: float = 1.0,
          temperature_on: str | None = None, top_p: float = 1.0, batch_size: int = 256, seed: int = 0,
          device=None, progress: bool = False) -> dict:
    """Sample a trajectory and measure the LOO sensitivity at every state it visits.

    One generator seeded with ``seed`` (on ``device``, default CPU) draws the trajectory, then the
    perturbations, so a seed fixes the whole result.

    Returns:
        {"settings": every argument that determines the result, "states": ``loo_sensitivity`` per
        state, "mean_tv": mean over states of the per-state mean TV, "max_tv": max over states}.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    output = _output_of(model, output)
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    states = trajectory(model, process, num_samples, length, nfe, prediction=output, sampler=sampler,
                        corrector=corrector, temperature=temperature, temperature_on=temperature_on, top_p=top_p,
                        generator=g, device=device, progress=progress)
    per_state = loo_sensitivity(model, process, states, positions_per_sequence=positions_per_sequence,
                                output=output, generator=g, batch_size=batch_size, progress=progress)
    settings = {
        "process": process.name, "vocab_size": process.vocab_size, "schedule": repr(process.schedule),
        "output": output, "num_samples": num_samples, "length": length, "nfe": nfe, "sampler": sampler,
        "corrector": None if corrector is None else dataclasses.asdict(corrector),
        "temperature": temperature, "temperature_on": temperature_on, "top_p": top_p,
        "positions_per_sequence": positions_per_sequence, "seed": seed,
    }
    return {"settings": settings, "states": per_state,
            "mean_tv": sum(s["mean_tv"] for s in per_state) / len(per_state),
            "max_tv": max(s["max_tv"] for s in per_state)}


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
                ax.fill_between(t, [m - v for m, v in zip(mean, se)], [m + v for m, v in zip(mean, se)],
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

def _load_udm_run(path: str, device: str = "cpu"):
    """(model, process, run_info) of a run folder or checkpoint folder; ValueError unless it is UDM."""
    from ..runs import load
    from .results import resolve_device, run_info

    info = run_info(path)  # FileNotFoundError / ValueError naming the path
    if info["process"] != "udm":
        raise ValueError(f"run {path!r} has process {info['process'].upper()}; {_WHY_UDM}")
    model, process, _ = load(info["checkpoint"], ema=True)
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
    loaded = [(run, *_load_udm_run(run, args.device)) for run in args.runs]  # every run is checked before any is probed
    records = []
    for run, model, process, info in loaded:
        length = args.length if args.length is not None else model.net.config.max_len
        rec = probe(model, process, num_samples=args.num_samples, length=length, nfe=args.nfe,
                    positions_per_sequence=args.positions, sampler=args.sampler, batch_size=args.batch_size,
                    seed=args.seed, device=next(model.parameters()).device, progress=not args.no_progress)
        records.append({"run": run, "checkpoint": info["checkpoint"], "step": info["step"], "weights": "ema",
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
    from ..sampling.loop import SAMPLERS

    p = subparsers.add_parser(
        "probe", help="LOO sensitivity probe of uniform-diffusion runs along the sampling trajectory",
        description="For each UDM run: sample a trajectory, then at every state it visits change one token at "
                    "P positions per sequence and measure the TV change of the model's LOO there (0 for an exact "
                    "LOO). Writes OUT/probe.json (settings, checkpoint, per-state results) and OUT/probe.png.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="UDM run folder(s) or checkpoint folder(s) (EMA weights)")
    p.add_argument("--nfe", type=int, default=64, help="forward passes of the sampled trajectory (default 64)")
    p.add_argument("--num-samples", type=int, default=16, help="sequences sampled per run (default 16)")
    p.add_argument("--positions", type=int, default=8, help="perturbed positions per sequence and state (default 8)")
    p.add_argument("--length", type=int, default=None, help="sequence length (default: the run's block size)")
    p.add_argument("--sampler", default="ancestral", choices=sorted(SAMPLERS["udm"]),
                   help="UDM sampler of the trajectory (default ancestral)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per forward pass of the probe (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trajectory and the perturbations (default 0)")
    p.add_argument("--out", default=None,
                   help="output folder (default RUN/probe for a single run folder; required otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/probe.json")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_command)
