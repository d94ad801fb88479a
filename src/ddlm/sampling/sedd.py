"""SEDD's samplers (Lou et al. 2024): Euler (tau-leaping) and Tweedie (analytic) steps fed the concrete
score, for the uniform graph (uniform diffusion) and the absorbing graph (masked diffusion)
(docs/maths.md §10.4).

Both consume a ``ddlm.sampling.prediction.Score``: log s_i(y) = log p_t(x^{i<-y}) - log p_t(x), the loop
having converted the network's output when it is not a score network. Let sigma = -log alpha (so the
forward jump rate is beta = d sigma / dt) and, over a step t -> s, dsigma = log(alpha_s / alpha_t) and
rho = alpha_t / alpha_s (the probability that a token is kept from s to t).

- Euler: the reverse rates at time t held fixed over the step. Uniform: jump from x^i to y != x^i with
  probability (dsigma / K) s_i(y); absorbing: a masked position unmasks to y with probability
  dsigma s_i(y). Where the jump probabilities add up to more than 1 they are renormalised (stay 0).
- Tweedie: p(x_s^i = z | x_t) proportional to q_{t|s}(x^i | z) sum_w s_i(w) q_{t|s}^{-1}(w, z), the exact
  reverse step of one token with the other positions held fixed, negative weights clipped at 0.
  Uniform: weights (rho 1[z = x^i] + (1 - rho)/K) (s_i(z) - (1 - rho) S_i / K)_+ with S_i = sum_w s_i(w);
  absorbing: unmask to y with probability s_i(y) (alpha_s - alpha_t) / alpha_t, renormalised if the total
  exceeds 1. With the exact score both are the exact per-position reverse kernels (the UDM plug-in bridge
  fed the LOO, the MDM ancestral step).
- The last step (alpha_s = 1) of both samplers is the Tweedie step, which lands on clean data (SEDD's
  final "denoise" step); for the absorbing graph it draws every remaining mask from the normalised score.
- At alpha_t = 0 the score carries no information about x_0 (identically 1 for the uniform graph, 0 for
  the absorbing one): uniform Tweedie redraws every position uniformly (the prior again), absorbing
  samplers unmask nothing, and a single step from alpha_t = 0 to alpha_s = 1 is refused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..processes import MaskedDiffusion, State, UniformDiffusion
from .kernels import uniform
from .prediction import _CHUNK, Score, _categorical_
from .registry import Step, register_kernel


def _check_informative(at: float, as_: float) -> None:
    if at <= 0.0 and as_ >= 1.0:
        raise ValueError("a SEDD step from alpha_t = 0 to alpha_s = 1 is undefined: the score at alpha = 0 carries "
                         "no information about x_0; use nfe >= 2 or a schedule with eps > 0 (alpha_1 > 0)")


def _clipped_rows(score: Score, b: Tensor, part) -> Tensor:
    """Weights (s_i(z) - b_i)_+ for z != x^i at the positions ``part``: float64 (M, K), 0 at x^i."""
    w = (score.rows(part).exp_() - b[part].unsqueeze(-1)).clamp_min_(0.0)
    return w.scatter_(-1, score.x[part].clamp(max=score.k - 1).unsqueeze(-1), 0.0)


def _positions(where: Tensor, k: int):
    idx = where.nonzero(as_tuple=True)
    rows = max(1, _CHUNK // k)
    for start in range(0, idx[0].numel(), rows):
        yield tuple(i[start : start + rows] for i in idx)


def _clipped_mass(score: Score, b: Tensor) -> Tensor:
    """sum_{z != x^i} (s_i(z) - b_i)_+ per position, float64 (B, L), in chunks of rows."""
    out = torch.zeros(score.x.shape, dtype=torch.float64, device=score.x.device)
    for part in _positions(torch.ones_like(score.x, dtype=torch.bool), score.k):
        out[part] = _clipped_rows(score, b, part).sum(-1)
    return out


def _draw_clipped(score: Score, b: Tensor, where: Tensor, generator) -> Tensor:
    """Draws proportional to (s_i(z) - b_i)_+ over z != x^i at the positions ``where``; 0 elsewhere."""
    out = torch.zeros(where.shape, dtype=torch.long, device=where.device)
    for part in _positions(where, score.k):
        out[part] = _categorical_(_clipped_rows(score, b, part).log_(), generator)
    return out


# ---- uniform graph -------------------------------------------------------------------------------

def uniform_tweedie(x: Tensor, score: Score, at: float, as_: float, generator) -> Tensor:
    """Tweedie step of the uniform graph: weights (rho 1[z = x] + (1 - rho)/K) (s(z) - (1 - rho) S / K)_+."""
    _check_informative(at, as_)
    k = score.k
    if at <= 0.0:  # s = 1: the weights vanish; every position is redrawn uniformly (the prior)
        return torch.randint(k, x.shape, generator=generator, device=x.device)
    rho = at / as_
    b = (1.0 - rho) * score.log_total().exp() / k
    stay = (rho + (1.0 - rho) / k) * (1.0 - b).clamp_min(0.0)
    jump = (1.0 - rho) / k * _clipped_mass(score, b)
    moves = uniform(x.shape, generator, x.device) < jump / (jump + stay)
    return torch.where(moves, _draw_clipped(score, b, moves, generator), x)


def uniform_euler(x: Tensor, score: Score, at: float, as_: float, generator) -> Tensor:
    """Euler step of the uniform graph: jump to y != x w.p. (dsigma / K) s(y) (renormalised if > 1)."""
    if as_ >= 1.0:
        return uniform_tweedie(x, score, at, as_, generator)
    log_dsigma = math.log(math.log(as_ / at)) if at > 0.0 else math.inf
    p = (log_dsigma - math.log(score.k) + score.log_jump()).exp().clamp(max=1.0)
    moves = uniform(x.shape, generator, x.device) < p
    return torch.where(moves, score.draw(moves, generator), x)


# ---- absorbing graph -----------------------------------------------------------------------------

def _unmask(x: Tensor, score: Score, p: Tensor, generator) -> Tensor:
    """Each masked position unmasks w.p. p (B, L), to a token drawn proportionally to its score."""
    moves = (x >= score.k) & (uniform(x.shape, generator, x.device) < p)
    return torch.where(moves, score.draw(moves, generator), x)


def absorbing_tweedie(x: Tensor, score: Score, at: float, as_: float, generator) -> Tensor:
    """Tweedie step of the absorbing graph: unmask to y w.p. s(y) (alpha_s - alpha_t)/alpha_t (the MDM
    ancestral step for the exact score); every mask resolves at alpha_s = 1."""
    _check_informative(at, as_)
    if at <= 0.0:  # the score is 0: nothing is unmasked
        return x
    if as_ >= 1.0:
        p = torch.ones(x.shape, dtype=torch.float64, device=x.device)
    else:
        p = (math.log((as_ - at) / at) + score.log_total()).exp().clamp(max=1.0)
    return _unmask(x, score, p, generator)


def absorbing_euler(x: Tensor, score: Score, at: float, as_: float, generator) -> Tensor:
    """Euler step of the absorbing graph: unmask to y w.p. dsigma s(y) (renormalised if the total exceeds 1)."""
    if as_ >= 1.0:
        return absorbing_tweedie(x, score, at, as_, generator)
    if at <= 0.0:
        return x
    p = (math.log(math.log(as_ / at)) + score.log_total()).exp().clamp(max=1.0)
    return _unmask(x, score, p, generator)


# ---- registrations ---------------------------------------------------------------------------------

@register_kernel(UniformDiffusion, "sedd_euler", consumes="score")
def _udm_euler(state: State, pred: Score, step: Step, generator) -> State:
    """SEDD Euler (tau-leaping) step of the uniform graph, fed the concrete score; Tweedie at the last step."""
    return State(uniform_euler(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(UniformDiffusion, "sedd_tweedie", consumes="score")
def _udm_tweedie(state: State, pred: Score, step: Step, generator) -> State:
    """SEDD Tweedie (analytic) step of the uniform graph, fed the concrete score."""
    return State(uniform_tweedie(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(MaskedDiffusion, "sedd_euler", consumes="score")
def _mdm_euler(state: State, pred: Score, step: Step, generator) -> State:
    """SEDD Euler (tau-leaping) step of the absorbing graph, fed the concrete score; Tweedie at the last step."""
    return State(absorbing_euler(state.xt, pred, step.alpha_t, step.alpha_s, generator))


@register_kernel(MaskedDiffusion, "sedd_tweedie", consumes="score")
def _mdm_tweedie(state: State, pred: Score, step: Step, generator) -> State:
    """SEDD Tweedie (analytic) step of the absorbing graph, fed the concrete score."""
    return State(absorbing_tweedie(state.xt, pred, step.alpha_t, step.alpha_s, generator))


__all__ = ["absorbing_euler", "absorbing_tweedie", "uniform_euler", "uniform_tweedie"]
