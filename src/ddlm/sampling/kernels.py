"""Reverse steps t -> s < t, one function per sampler (docs/maths.md §5), and their registration.

Each kernel is a pure function of the current state, the prediction it consumes (a lazy
``Prediction`` view of the network output, or a (B, L, K) tensor of log-probabilities over the K
data tokens), alpha_t, alpha_s and a ``torch.Generator``; it returns the new state. Tokens are updated
independently given the prediction (factorised steps).

Draws are exact in float64 but cheap: every kernel is a mixture of "stay", "uniform token" and
"draw from the prediction"; the component is chosen per position with one float64 uniform, and
only the positions that chose "draw" pay for a float64 categorical draw over the vocabulary
(inverse CDF on those rows only). No float32 Gumbel noise over the whole vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..processes import AbsorbingUniformDiffusion, MaskedDiffusion, State, UniformDiffusion
from .prediction import Prediction
from .registry import Step, register_kernel

# ---- exact draws -------------------------------------------------------------------------------

def as_prediction(pred, x: Tensor) -> Prediction:
    """Accept a ``Prediction`` or a (B, L, K) tensor of log-probabilities/logits."""
    return pred if isinstance(pred, Prediction) else Prediction.from_logp(pred, x)


def uniform(shape, generator, device) -> Tensor:
    """Float64 uniforms on [0, 1)."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def random_tokens(shape, k: int, generator, device) -> Tensor:
    return torch.randint(k, shape, generator=generator, device=device)


def _mixture(x: Tensor, p_draw, p_uniform, pred: Prediction, generator) -> Tensor:
    """Per position: draw from pred w.p. p_draw, a uniform token w.p. p_uniform, else stay at x."""
    u = uniform(x.shape, generator, x.device)
    draw = u < p_draw
    unif = (~draw) & (u < p_draw + p_uniform)
    out = torch.where(draw, pred.draw(draw, generator), x)
    if bool(unif.any()):
        out = torch.where(unif, random_tokens(x.shape, pred.k, generator, x.device), out)
    return out


# ---- masked diffusion ----------------------------------------------------------------------------

def mdm_ancestral(x: Tensor, logd: Tensor, at: float, as_: float, generator, mask_id: int) -> Tensor:
    """MDLM step: a masked token is unmasked w.p. (alpha_s - alpha_t)/(1 - alpha_t), drawing from d;
    unmasked tokens stay."""
    masked = x == mask_id
    p = (as_ - at) / (1.0 - at)
    unmask = masked & (uniform(x.shape, generator, x.device) < p)
    return torch.where(unmask, as_prediction(logd, x).draw(unmask, generator), x)


def remdm(x: Tensor, logd: Tensor, at: float, as_: float, generator, mask_id: int, sigma: float) -> Tensor:
    """ReMDM step: a masked token stays masked w.p. (1 - alpha_s - sigma alpha_t)/(1 - alpha_t), else
    draws from d; an unmasked token is remasked w.p. sigma (0 <= sigma <= sigma_max)."""
    masked = x == mask_id
    u = uniform(x.shape, generator, x.device)
    p_unmask = 1.0 - (1.0 - as_ - sigma * at) / (1.0 - at)
    unmask = masked & (u < p_unmask)
    remask = (~masked) & (u < sigma)
    out = torch.where(unmask, as_prediction(logd, x).draw(unmask, generator), x)
    return torch.where(remask, torch.full_like(x, mask_id), out)


# ---- uniform diffusion ---------------------------------------------------------------------------

def udm_bridge(x: Tensor, logr: Tensor, at: float, as_: float, generator) -> Tensor:
    """Plug-in bridge fed the LOO r (exact reverse kernel for the exact r).

    With rho = alpha_t/alpha_s the weights are (alpha_s - alpha_t) r(z) + (1 - rho)(1 - alpha_s)/K
    + 1[z = x] (K alpha_t r(x) + rho - alpha_t): "draw from r", "uniform" and "stay" components.
    """
    pred = as_prediction(logr, x)
    rho = at / as_
    a = as_ - at
    b = (1.0 - rho) * (1.0 - as_)
    c = pred.k * at * pred.log_prob_at(x).exp() + rho - at
    total = a + b + c
    return _mixture(x, a / total, b / total, pred, generator)


def udm_x0(x: Tensor, logd: Tensor, at: float, as_: float, generator) -> Tensor:
    """D3PM x0-form step sum_y d(y) q(x_s | x_t, x_0 = y), fed the denoiser.

    Dividing d by the likelihood q_t(x_t | y) inside the sum is exactly the denoiser -> LOO
    conversion, so this is the bridge applied to the converted LOO. Top-p given to this sampler acts
    on the denoiser (the view it consumes); temperature acts on ``temperature_on``, as for every
    sampler (docs/maths.md §5.4, §5.10).
    """
    return udm_bridge(x, as_prediction(logd, x).convert("denoiser", "loo", at), at, as_, generator)


def udm_bridge_raw_denoiser(x: Tensor, logd: Tensor, at: float, as_: float, generator) -> Tensor:
    """ABLATION, WRONG ON PURPOSE: the plug-in bridge fed the raw denoiser as if it were the LOO.

    The denoiser already contains the evidence of x^i, which the bridge adds again; the sampler
    does not converge to p_0 however many steps it takes. Kept to reproduce that failure.
    """
    return udm_bridge(x, logd, at, as_, generator)


def max_coupling(x: Tensor, logd: Tensor, at: float, as_: float, generator) -> Tensor:
    """Maximal coupling: stay w.p. (1 - alpha_s)/(1 - alpha_t), else draw from the denoiser."""
    return _mixture(x, (as_ - at) / (1.0 - at), 0.0, as_prediction(logd, x), generator)


# ---- absorbing-uniform diffusion -------------------------------------------------------------------

def audm_carry_over(x: Tensor, noise: Tensor, logp: Tensor, at: float, as_: float, generator):
    """AUDM step: on active positions (x = u) weights (alpha_s - alpha_t) p + (1 - alpha_s) e_x;
    inactive positions are certainly clean and carried over. The noise u is unchanged."""
    active = x == noise
    move = active & (uniform(x.shape, generator, x.device) < (as_ - at) / (1.0 - at))
    return torch.where(move, as_prediction(logp, x).draw(move, generator), x), noise


def reaudm(x: Tensor, noise: Tensor, logp, at: float, as_: float, generator):
    """ReAUDM renoising: x0hat ~ p (carried over where inactive); x_s from the UDM bridge with
    one-hot x0hat; then u_s = x_s if x_s != x0hat, else u_s = x_s w.p. 1/(1 + (K - 1) alpha_s) and
    uniform over the other K - 1 tokens otherwise. Keeps (x_s, u_s) on the AUDM law.

    x0hat is drawn lazily: first whether it equals x (probability p(x)); its identity is drawn only
    where the bridge moves to it, and whether a uniform draw z hits it has probability
    p(z)/(1 - p(x)). Only those positions touch the vocabulary.
    """
    pred = as_prediction(logp, x)
    k = pred.k
    active = x == noise
    p_x = pred.log_prob_at(x).exp()
    same = ~active | (uniform(x.shape, generator, x.device) < p_x)  # x0hat == x
    rho = at / as_
    a = as_ - at
    b = (1.0 - rho) * (1.0 - as_)
    c = k * at * same.double() + rho - at
    total = a + b + c
    u = uniform(x.shape, generator, x.device)
    to_hat = u < a / total
    unif = (~to_hat) & (u < (a + b) / total)
    hat = pred.draw(to_hat & ~same, generator, exclude_current=True)
    z = random_tokens(x.shape, k, generator, x.device)
    xs = torch.where(to_hat, torch.where(same, x, hat), torch.where(unif, z, x))
    # is x_s == x0hat?
    p_z = pred.log_prob_at(z).exp()
    hit_z = torch.where(same, z == x, (z != x) & (uniform(x.shape, generator, x.device) < p_z / (1.0 - p_x)))
    equal = torch.where(to_hat, torch.ones_like(same), torch.where(unif, hit_z, same))
    keep_u = uniform(x.shape, generator, x.device) < 1.0 / (1.0 + (k - 1) * as_)
    other = (xs + torch.randint(1, k, x.shape, generator=generator, device=x.device)) % k
    us = torch.where(~equal | keep_u, xs, other)
    return xs, us


# ---- confidence (greedy) ---------------------------------------------------------------------------

def confidence(x: Tensor, logd, eligible: Tensor, count: Tensor) -> Tensor:
    """Set, in each row, the ``count`` eligible positions with the largest margin
    max_y log d(y) - log d(x^i) to argmax d (deterministic; ``count`` is (B,) int64). A masked
    position (MDM, id K) has no current token: its margin is its confidence max_y log d(y)."""
    pred = as_prediction(logd, x)
    arg, best, _ = pred.top2()
    cur = torch.where(x < pred.k, pred.log_prob_at(x), torch.zeros_like(best))
    margin = torch.where(eligible, best - cur, torch.full_like(best, float("-inf")))
    order = margin.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order))
    chosen = eligible & (rank < count.unsqueeze(-1))
    return torch.where(chosen, arg, x)


def commit_count(eligible: Tensor, at: float, as_: float) -> Tensor:
    """How many eligible positions each row resolves in a step: round(n (alpha_s - alpha_t)/(1 - alpha_t))."""
    frac = (as_ - at) / (1.0 - at)
    return torch.round(eligible.sum(-1).double() * frac).long()


# ---- registrations: sampler name -> kernel, per process (``ddlm.sampling.registry``) ---------------

@register_kernel(MaskedDiffusion, "ancestral", consumes="denoiser")
def _mdm_ancestral(state: State, pred, step: Step, generator) -> State:
    """MDLM ancestral step: unmask w.p. (alpha_s - alpha_t)/(1 - alpha_t), drawing from the denoiser."""
    return State(mdm_ancestral(state.xt, pred, step.alpha_t, step.alpha_s, generator, pred.k))


@register_kernel(MaskedDiffusion, "remdm", consumes="denoiser", remasking=True)
def _remdm(state: State, pred, step: Step, generator) -> State:
    """ReMDM: the MDLM step with remasking probability sigma from the remasking schedule."""
    return State(remdm(state.xt, pred, step.alpha_t, step.alpha_s, generator, pred.k, step.sigma))


@register_kernel(MaskedDiffusion, "confidence", consumes="denoiser", greedy=True)
def _mdm_confidence(state: State, pred, step: Step, generator) -> State:
    """Greedy: unmask the most confident masked positions, as many as the ancestral step would on average."""
    masked = state.xt == pred.k
    return State(confidence(state.xt, pred, masked, commit_count(masked, step.alpha_t, step.alpha_s)))


@register_kernel(UniformDiffusion, "ancestral", consumes="loo")
def _udm_ancestral(state: State, pred, step: Step, generator) -> State:
    """Plug-in bridge fed the LOO (exact reverse kernel for the exact LOO)."""
    return State(udm_bridge(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(UniformDiffusion, "x0", consumes="denoiser")
def _udm_x0(state: State, pred, step: Step, generator) -> State:
    """D3PM x0-form fed the denoiser (the bridge on the converted LOO; temperature acts on the denoiser)."""
    return State(udm_x0(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(UniformDiffusion, "max_coupling", consumes="denoiser")
def _udm_max_coupling(state: State, pred, step: Step, generator) -> State:
    """Maximal coupling: stay w.p. (1 - alpha_s)/(1 - alpha_t), else draw from the denoiser."""
    return State(max_coupling(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(UniformDiffusion, "bridge_raw_denoiser", consumes="denoiser")
def _udm_bridge_raw_denoiser(state: State, pred, step: Step, generator) -> State:
    """ABLATION (wrong on purpose): the bridge fed the raw denoiser as if it were the LOO."""
    return State(udm_bridge_raw_denoiser(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(UniformDiffusion, "confidence", consumes="denoiser", greedy=True)
def _udm_confidence(state: State, pred, step: Step, generator) -> State:
    """Greedy: set the free positions with the largest margin to argmax, round(L alpha) in all by time s."""
    b, length = state.xt.shape
    at, as_ = step.alpha_t, step.alpha_s
    n = length if as_ >= 1.0 else round(length * as_) - round(length * at)
    count = torch.full((b,), n, dtype=torch.long, device=state.xt.device)
    return State(confidence(state.xt, pred, step.free, count))


@register_kernel(AbsorbingUniformDiffusion, "ancestral", consumes="denoiser")
def _audm_ancestral(state: State, pred, step: Step, generator) -> State:
    """AUDM carry-over: active positions move w.p. (alpha_s - alpha_t)/(1 - alpha_t); the others are kept."""
    return State(*audm_carry_over(state.xt, state.noise, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(AbsorbingUniformDiffusion, "reaudm", consumes="denoiser")
def _reaudm(state: State, pred, step: Step, generator) -> State:
    """ReAUDM renoising: the UDM bridge with a drawn x0hat, the noise tokens redrawn on the AUDM law."""
    return State(*reaudm(state.xt, state.noise, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(AbsorbingUniformDiffusion, "confidence", consumes="denoiser", greedy=True)
def _audm_confidence(state: State, pred, step: Step, generator) -> State:
    """Greedy: resolve the most confident active free positions, as many as the carry-over step would."""
    active = (state.xt == state.noise) & step.free
    return State(confidence(state.xt, pred, active, commit_count(active, step.alpha_t, step.alpha_s)), state.noise)
