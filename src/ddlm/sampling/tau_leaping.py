"""Tau-leaping (Euler) for uniform diffusion: the reverse jump rates, held fixed over a step
(docs/maths.md §5; the worked example of docs/extending.md).

The reverse process of UDM jumps at position i from x^i to y != x^i at rate
(beta_t / K) p_t(x^{i<-y}) / p_t(x) = (beta_t / K) xbar(y) / xbar(x^i), xbar(y) = K alpha_t r_i(y) + 1 - alpha_t,
with r the LOO. Over a step t -> s the integrated rate beta dt is -d alpha / alpha ~ (alpha_s - alpha_t)/alpha_t.
Each position jumps at most once per step, to y with probability c xbar(y), c = (alpha_s - alpha_t) /
(alpha_t K xbar(x^i)); as a mixture this is "draw from r" w.p. c K alpha_t, "uniform token" w.p.
c K (1 - alpha_t), else stay. Where those add up to more than 1 (the first steps, where alpha_t is
near 0) the step is renormalised. Unlike the plug-in bridge it is not exact for a finite number of
steps; it converges as the steps shrink.
"""

from __future__ import annotations

from ..processes import State, UniformDiffusion
from .kernels import _mixture
from .registry import Step, register_kernel


@register_kernel(UniformDiffusion, "tau_leaping", consumes="loo")
def tau_leaping(state: State, pred, step: Step, generator) -> State:
    """Tau-leaping (Euler) step of the reverse CTMC with the rates read from the LOO at time t."""
    at, as_ = step.alpha_t, step.alpha_s
    x, k = state.xt, pred.k
    if at <= 0.0:  # alpha_t = 0: the rates are infinite, every position jumps to a uniform token
        return State(_mixture(x, 0.0, 1.0, pred, generator), state.noise)
    xbar_x = k * at * pred.log_prob_at(x).exp() + 1.0 - at  # (B, L) float64
    c = (as_ - at) / (at * k * xbar_x)
    p_draw, p_unif = c * k * at, c * k * (1.0 - at)
    scale = (p_draw + p_unif).clamp_min(1.0)  # renormalise where the step would jump w.p. > 1
    return State(_mixture(x, p_draw / scale, p_unif / scale, pred, generator), state.noise)
