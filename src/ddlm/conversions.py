"""Exact conversions between the three views of a uniform-diffusion model (docs/maths.md §3).

At time t with alpha = alpha_t and noisy sequence x = x_t, for position i:

- denoiser   d_i(y | x)      = p(x_0^i = y | x_t = x)
- LOO        r_i(y | x^{-i}) = p(x_0^i = y | x_t^{-i}), independent of the token x^i itself
- score      s_i(y | x)      = p_t(x^{i<-y}) / p_t(x), returned as log-ratios (zero at y = x^i)

They are linked by Bayes' rule with the token likelihood l(x^i | y) = alpha 1[y = x^i] + (1 - alpha)/K:

- log d_i = log r_i + delta e_{x^i} (renormalised), delta = log(1 + K alpha / (1 - alpha));
- s_i(y) = xbar(y) / xbar(x^i) with xbar(y) = K alpha r_i(y) + 1 - alpha;
- r_i(y) = (K s_i(y) / sum_y' s_i(y') - (1 - alpha)) / (K alpha), clipped at 0 and renormalised.

All functions are called as ``f(logp, xt, alpha)`` with ``logp`` of shape (..., L, K) (log-probabilities,
or unnormalised logits, or log-scores for the ``score_to_*`` functions), ``xt`` of shape (..., L) and
``alpha`` a float or a tensor broadcastable to xt's shape. They work in log space; use float64 when
alpha is within about 1e-6 of 0 or 1.

Edge cases: at alpha = 1 the denoiser is a point mass on x^i and carries no information about the
LOO; at alpha = 0 the score is identically 1 and carries none either. Conversions that would need
that information return a point mass / NaN there rather than an invented answer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_alpha, check_logp, check_tokens

#: delta is capped here; exp(-_DELTA_CAP) underflows to 0 in float64, so the cap only represents
#: the alpha = 1 limit (infinite self-evidence) exactly, without inf - inf = NaN.
_DELTA_CAP = 1e4

VIEWS = ("denoiser", "loo", "score")


def self_evidence(alpha: Tensor, k: int) -> Tensor:
    """delta_t = log(1 + K alpha / (1 - alpha)): the log-likelihood ratio of the token at its own position."""
    return torch.log1p(k * alpha / (1.0 - alpha)).clamp(max=_DELTA_CAP)


def _add_at_token(logp: Tensor, xt: Tensor, value: Tensor) -> Tensor:
    """logp + value * onehot(xt), with value broadcastable to xt's shape."""
    value = torch.broadcast_to(value, xt.shape).to(logp.dtype)
    return logp.scatter_add(-1, xt.unsqueeze(-1), value.unsqueeze(-1))


# ---- unchecked kernels (alpha already a tensor broadcastable to xt's shape) -------------------

def _loo_to_denoiser(logr: Tensor, xt: Tensor, alpha: Tensor) -> Tensor:
    logr = torch.log_softmax(logr, dim=-1)
    return torch.log_softmax(_add_at_token(logr, xt, self_evidence(alpha, logr.shape[-1])), dim=-1)


def _denoiser_to_loo(logd: Tensor, xt: Tensor, alpha: Tensor) -> Tensor:
    logd = torch.log_softmax(logd, dim=-1)
    return torch.log_softmax(_add_at_token(logd, xt, -self_evidence(alpha, logd.shape[-1])), dim=-1)


def _log_xbar(logr: Tensor, alpha: Tensor) -> Tensor:
    """log(K alpha r(y) + 1 - alpha) for each y."""
    k = logr.shape[-1]
    a = alpha.unsqueeze(-1)
    return torch.logaddexp(torch.log(k * a) + logr, torch.log1p(-a))


def _loo_to_score(logr: Tensor, xt: Tensor, alpha: Tensor) -> Tensor:
    log_xbar = _log_xbar(torch.log_softmax(logr, dim=-1), torch.broadcast_to(alpha, xt.shape))
    return log_xbar - log_xbar.gather(-1, xt.unsqueeze(-1))


def _score_to_loo(logs: Tensor, xt: Tensor, alpha: Tensor) -> Tensor:
    k = logs.shape[-1]
    a = torch.broadcast_to(alpha, xt.shape).unsqueeze(-1).to(logs.dtype)
    # K s(y) / sum s = xbar(y) = K alpha r(y) + 1 - alpha
    log_xbar = torch.log_softmax(logs, dim=-1) + torch.log(torch.tensor(float(k), dtype=logs.dtype))
    gap = torch.log1p(-a) - log_xbar  # log((1 - alpha) / xbar(y)); r(y) > 0 iff gap < 0
    safe_gap = torch.where(gap < 0, gap, torch.full_like(gap, -1.0))
    log_r = log_xbar + torch.log(-torch.expm1(safe_gap))
    # clipped entries get probability finfo.tiny rather than exactly 0 (-inf logs make NaN gradients)
    log_r = torch.where(gap < 0, log_r, torch.full_like(log_r, math.log(torch.finfo(logs.dtype).tiny)))
    return torch.log_softmax(log_r, dim=-1)


# ---- public API ------------------------------------------------------------------------------

def _prepare(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    check_logp(logp, xt)
    check_tokens("xt", xt, logp.shape[-1])
    return as_alpha("alpha", alpha, logp, xt.shape)


def loo_to_denoiser(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    """LOO log-probabilities -> denoiser log-probabilities (adds the self-evidence delta_t at x^i)."""
    return _loo_to_denoiser(logp, xt, _prepare(logp, xt, alpha))


def denoiser_to_loo(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    """Denoiser log-probabilities -> LOO log-probabilities (removes delta_t at x^i)."""
    return _denoiser_to_loo(logp, xt, _prepare(logp, xt, alpha))


def loo_to_score(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    """LOO log-probabilities -> log concrete score log s_i(y) = log xbar(y) - log xbar(x^i)."""
    return _loo_to_score(logp, xt, _prepare(logp, xt, alpha))


def score_to_loo(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    """Log concrete score (any per-position scale) -> LOO log-probabilities (clipped at 0, renormalised)."""
    return _score_to_loo(logp, xt, _prepare(logp, xt, alpha))


def denoiser_to_score(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    """Denoiser log-probabilities -> log concrete score (through the LOO)."""
    a = _prepare(logp, xt, alpha)
    return _loo_to_score(_denoiser_to_loo(logp, xt, a), xt, a)


def score_to_denoiser(logp: Tensor, xt: Tensor, alpha) -> Tensor:
    """Log concrete score -> denoiser log-probabilities (through the LOO)."""
    a = _prepare(logp, xt, alpha)
    return _loo_to_denoiser(_score_to_loo(logp, xt, a), xt, a)


_TO_LOO = {"loo": lambda lp, x, a: torch.log_softmax(lp, -1), "denoiser": _denoiser_to_loo, "score": _score_to_loo}
_FROM_LOO = {"loo": lambda lr, x, a: lr, "denoiser": _loo_to_denoiser, "score": _loo_to_score}


def _convert(logp: Tensor, xt: Tensor, a: Tensor, source: str, target: str) -> Tensor:
    """Unchecked ``convert`` (alpha already a tensor broadcastable to xt's shape)."""
    if source == target:
        return logp if source == "score" else torch.log_softmax(logp, dim=-1)
    if source == "denoiser" and target == "loo":
        return _denoiser_to_loo(logp, xt, a)
    return _FROM_LOO[target](_TO_LOO[source](logp, xt, a), xt, a)


def convert(logp: Tensor, xt: Tensor, alpha, source: str, target: str) -> Tensor:
    """Convert between any two views ("denoiser", "loo", "score") of a uniform-diffusion model."""
    for name, value in (("source", source), ("target", target)):
        if value not in VIEWS:
            raise ValueError(f"{name} must be one of {VIEWS}, got {value!r}")
    return _convert(logp, xt, _prepare(logp, xt, alpha), source, target)
