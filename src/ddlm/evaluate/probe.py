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
summarised per state), ``trajectory`` and ``probe``; the plot and the command line (``ddlm probe``) are
in ``ddlm.evaluate.probe_cli``.
"""

from __future__ import annotations

import dataclasses
import math

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
    """Raise ValueError unless ``process`` is a ``UniformDiffusion``."""
    from ..processes import Process, UniformDiffusion

    if not isinstance(process, UniformDiffusion):
        shown = ("None (an autoregressive model)" if process is None
                 else process.label if isinstance(process, Process) else repr(process))
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
    if prediction not in process.predictions:
        raise ValueError(f"prediction must be one of {process.predictions} for ddlm.sample, got {prediction!r}")
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
