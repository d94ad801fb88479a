"""Score entropy (SEDD's denoising score entropy, DWDSE) for a network that outputs the concrete score
(docs/maths.md §10). Exposed as ``ddlm.losses.score_entropy``.

For a forward process whose tokens jump from y to x at rate Q_t(y -> x), the per-token integrand of
the NLL bound of a model with reverse rates Q_t(y -> x) s_theta(y) is

    l = sum_{y != x} Q_t(y -> x) [s_theta(y) - R(y) log s_theta(y) + R(y) (log R(y) - 1)]
      = sum_{y != x} Q_t(y -> x) R(y) phi(log s_theta(y) - log R(y)),     phi(u) = e^u - 1 - u >= 0,

with R(y) = q_t(y | x_0) / q_t(x | x_0) the score of the forward process given x_0. Two graphs:

- "uniform" (uniform diffusion): Q_t(y -> x) = beta_t / K for every y != x; R(y) is e^{-delta} for every
  y when x = x_0, and e^{delta} at y = x_0, 1 elsewhere, when x != x_0 (delta: ``conversions.self_evidence``).
  This is the plug-in ELBO of docs/maths.md §4.1 with s_theta free instead of loo_to_score(r_theta).
- "absorbing" (masked diffusion): only a masked position receives jumps, from each clean y at rate
  beta_t; R(y) = alpha/(1 - alpha) 1[y = x_0]. Clean positions contribute 0.

The network's value at y = x^i is ignored (log s(x^i) = 0 by definition). The sum over y is one fused
pass over the vocabulary in row chunks with an analytic gradient, d l / d log s(y) = Q (s(y) - R(y)), so
the loss keeps no (..., L, K) intermediate for backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_alpha, as_rate, check_logp, check_same_shape, check_tokens

GRAPHS = ("uniform", "absorbing")
_CHUNK_ELEMENTS = 1 << 21  # elements per chunk: bounded temporaries whatever the vocabulary


def _terms(ls: Tensor, log_r: Tensor) -> Tensor:
    """R phi(ls - log R) elementwise (R = e^{log_r} broadcast against the log-scores ls),
    cancellation-free for small arguments; e^ls where R = 0 (the limit)."""
    r = log_r.exp()
    u = ls - log_r
    small = r * (torch.expm1(u) - u)
    large = ls.exp() - r - r * u
    return torch.where(r > 0, torch.where(u.abs() < 1.0, small, large), ls.exp())


class _ScoreEntropySum(torch.autograd.Function):
    """Per row: sum_{y != skip} R(y) phi(l(y) - log R(y)) with R(y) = R_0 at y = x_0 and R_bulk elsewhere;
    0 on inactive rows. ``skip`` = -1 means no column is skipped. Backward: (e^{l(y)} - R(y)) per
    column (0 at ``skip`` and on inactive rows)."""

    @staticmethod
    def forward(ctx, logits, skip, x0, log_bulk, log_r0, active):
        n, k = logits.shape
        dtype = log_bulk.dtype
        step = max(1, _CHUNK_ELEMENTS // k)
        out = torch.zeros(n, dtype=dtype, device=logits.device)
        for i in range(0, n, step):
            sl = slice(i, i + step)
            ls = logits[sl].to(dtype)
            rows = torch.arange(ls.shape[0], device=ls.device)
            term = _terms(ls, log_bulk[sl].unsqueeze(-1))
            term[rows, x0[sl]] = _terms(ls[rows, x0[sl]], log_r0[sl])
            has_skip = skip[sl] >= 0
            at = skip[sl].clamp_min(0)
            term[rows, at] = torch.where(has_skip, torch.zeros_like(term[rows, at]), term[rows, at])
            out[sl] = torch.where(active[sl], term.sum(-1), torch.zeros_like(out[sl]))
        ctx.save_for_backward(logits, skip, x0, log_bulk, log_r0, active)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, skip, x0, log_bulk, log_r0, active = ctx.saved_tensors
        n, k = logits.shape
        step = max(1, _CHUNK_ELEMENTS // k)
        grad = torch.zeros_like(logits)
        for i in range(0, n, step):
            sl = slice(i, i + step)
            ls = logits[sl].to(log_bulk.dtype, copy=True)
            rows = torch.arange(ls.shape[0], device=ls.device)
            g = ls.exp_().sub_(log_bulk[sl].exp().unsqueeze(-1))  # e^l - R_bulk
            g[rows, x0[sl]] += log_bulk[sl].exp() - log_r0[sl].exp()  # e^l - R_0 at x_0
            at = skip[sl].clamp_min(0)
            g[rows, at] = torch.where(skip[sl] >= 0, torch.zeros_like(g[rows, at]), g[rows, at])
            scale = torch.where(active[sl], grad_out[sl], torch.zeros_like(grad_out[sl])).unsqueeze(-1)
            g = torch.where(active[sl].unsqueeze(-1), g * scale, torch.zeros_like(g))
            grad[sl] = g.to(grad.dtype)
        return grad, None, None, None, None, None


def graph_of(process) -> str:
    """The SEDD graph of a process (``process.score_graph``); ValueError if it has none."""
    graph = getattr(process, "score_graph", None)
    if graph not in GRAPHS:
        label = getattr(process, "label", type(process).__name__)
        raise ValueError(f"process {label} has no concrete-score graph (score_graph = {graph!r}, expected one of "
                         f"{GRAPHS}): score_entropy applies to uniform and masked diffusion")
    return graph


def score_entropy(log_score: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha, process) -> Tensor:
    """Per-token score-entropy (DWDSE) integrand in nats, shape (..., L) (docs/maths.md §10).

    Args:
        log_score: (..., L, K) log concrete score log s_i(y) = log p_t(x^{i<-y}) - log p_t(x) over the K
            data tokens (the convention of ``ddlm.conversions``; the value at y = x^i is ignored). For
            masked diffusion, at a masked position, the ratios from the mask state to each clean token.
        x0: (..., L) clean tokens.
        xt: (..., L) noisy tokens (ids up to ``process.input_vocab_size``; the mask is K).
        alpha, dalpha: alpha_t and alpha'_t, floats or tensors broadcastable to xt's shape.
        process: the forward process; its ``score_graph`` ("uniform" or "absorbing") selects the rates.

    Integrated over t with the exact score it equals -log p_0(x_0) (when alpha runs from 1 to 0); for
    a LOO r (UDM) it is ``udm_elbo`` of r term by term when log_score = loo_to_score(r), and for a
    denoiser d (MDM) ``mdm_elbo`` of d when log_score = log d + log(alpha/(1 - alpha)).
    """
    graph = graph_of(process)
    check_logp(log_score, xt, name="log_score")
    k = process.vocab_size
    if log_score.shape[-1] != k:
        raise ValueError(f"log_score has shape {tuple(log_score.shape)}: K = {log_score.shape[-1]} columns, expected "
                         f"process.vocab_size = {k} (one log-ratio per data token)")
    check_same_shape("x0", x0, "xt", xt)
    check_tokens("x0", x0, k)
    check_tokens("xt", xt, process.input_vocab_size)
    like = torch.empty(0, dtype=torch.promote_types(log_score.dtype, torch.float32), device=log_score.device)
    a = torch.broadcast_to(as_alpha("alpha", alpha, like, xt.shape), xt.shape)
    da = torch.broadcast_to(as_rate("dalpha", dalpha, like, xt.shape), xt.shape)
    tiny = torch.finfo(like.dtype).tiny
    beta = -da / a.clamp_min(tiny)
    log_a, log_c = torch.log(a.clamp_min(tiny)), torch.log((1.0 - a).clamp_min(tiny))
    if graph == "uniform":
        log_big = torch.logaddexp(math.log(k) + log_a, log_c)  # log(K alpha + 1 - alpha)
        delta = log_big - log_c
        same = xt == x0
        log_bulk = torch.where(same, -delta, torch.zeros_like(delta))
        log_r0 = torch.where(same, -delta, delta)
        skip, active, weight = xt, torch.ones_like(same), beta / k
    else:
        log_bulk = torch.full_like(a, float("-inf"))
        log_r0 = log_a - log_c  # log(alpha / (1 - alpha))
        active = xt == k
        skip, weight = torch.full_like(xt, -1), beta
    total = _ScoreEntropySum.apply(log_score.reshape(-1, k), skip.reshape(-1), x0.reshape(-1),
                                   log_bulk.reshape(-1), log_r0.reshape(-1), active.reshape(-1))
    loss = weight * total.reshape(xt.shape)
    return torch.where(active, loss, torch.zeros_like(loss))


def score_entropy_by_definition(log_score: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha, process) -> Tensor:
    """The same integrand written over the whole vocabulary with autograd (a reference for the tests):
    sum_{y != x} Q(y -> x) [s(y) - R(y) log s(y) + R(y) (log R(y) - 1)], R from the forward kernel."""
    graph = graph_of(process)
    k = process.vocab_size
    a = torch.broadcast_to(torch.as_tensor(alpha, dtype=log_score.dtype), xt.shape).unsqueeze(-1)
    da = torch.broadcast_to(torch.as_tensor(dalpha, dtype=log_score.dtype), xt.shape).unsqueeze(-1)
    beta = -da / a
    y = torch.arange(k, device=xt.device)
    hit = (y == x0.unsqueeze(-1)).to(log_score.dtype)
    if graph == "uniform":
        q_y = a * hit + (1 - a) / k  # q_t(y | x_0)
        q_x = q_y.gather(-1, xt.unsqueeze(-1))
        rate = beta / k * (y != xt.unsqueeze(-1))
    else:
        q_y = a * hit
        q_x = (1 - a).expand_as(q_y[..., :1]) * (xt == k).unsqueeze(-1)
        rate = beta * (xt == k).unsqueeze(-1).to(log_score.dtype)
    r = torch.where(rate > 0, q_y / q_x, torch.zeros_like(q_y))
    s = log_score.exp()
    r_log_r = torch.where(r > 0, r * (torch.log(r) - 1), torch.zeros_like(r))
    terms = torch.where(rate > 0, rate * (s - r * log_score + r_log_r), torch.zeros_like(s))
    return terms.sum(-1)
