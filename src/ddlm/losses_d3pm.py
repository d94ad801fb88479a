"""D3PM's objectives (docs/maths.md §9): the per-step variational term, the estimators of the bound
that training and evaluation use, the auxiliary cross-entropy and the hybrid loss.

Every function takes ``(logp, x0, xt, t, process)``: ``logp`` (..., L, K) the x0-parameterisation
p~(x~ | x_t) over the K data tokens (logits are normalised), ``x0`` (..., L) data tokens, ``xt`` (..., L)
tokens of the process's K' states, ``t`` integer steps in 1..T broadcastable to x0, ``process`` a
``ddlm.D3PM``. They return nats per token, shape (..., L).

The bound of a sequence is ``process.prior_kl(x0)`` + sum_{t=1..T} E_{x_t | x_0}[d3pm_vb] summed over
positions; ``d3pm_elbo`` is its one-step estimator w(t) d3pm_vb + prior_kl with w(t) = 1/P(t) (T for
uniform steps), unbiased when t is drawn from the process's ``step_probs``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._checks import check_logp, check_same_shape, check_tokens

_CHUNK_ELEMENTS = 1 << 21  # rows per chunk = this / K': bounded temporaries whatever the vocabulary


def _prepare(logp, x0, xt, t, process):
    """Checked, flattened inputs: logits (N, K) in >= float32, x0, xt, steps (N,), and the shape."""
    check_logp(logp, xt)
    k = process.vocab_size
    if logp.shape[-1] != k:
        raise ValueError(f"logp has {logp.shape[-1]} columns, expected K = {k} (the process's data tokens)")
    check_same_shape("x0", x0, "xt", xt)
    check_tokens("x0", x0, k)
    check_tokens("xt", xt, process.input_vocab_size)
    n = process._int_steps(t, x0)
    dtype = torch.promote_types(logp.dtype, torch.float32)
    return logp.reshape(-1, k).to(dtype), x0.reshape(-1), xt.reshape(-1), n.reshape(-1), x0.shape


def _vb_rows(logits: Tensor, x0: Tensor, xt: Tensor, n: Tensor, family) -> Tensor:
    """KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)) per row, both over the K' states in log space.

    q propto Q_n[., x_n] Qbar_{n-1}[x_0, .], p propto Q_n[., x_n] sum_x~ p~(x~) Qbar_{n-1}[x~, .]; at
    n = 1 q is the point mass at x_0 and the KL is -log p(x_0 | x_1). Pairs with q(x_n | x_0) = 0 get 0.
    """
    logp = torch.log_softmax(logits, dim=-1)
    col = family.log_column(xt, n - 1, n, logp.dtype)
    lq = col + family.log_forward(x0, n - 1, logp.dtype)
    lq_norm = torch.logsumexp(lq, -1, keepdim=True)
    possible = lq_norm > float("-inf")
    lq = torch.where(possible, lq - lq_norm, torch.full_like(lq, float("-inf")))
    lp = col + family.log_predicted(logp, n - 1)
    lp = lp - torch.logsumexp(lp, -1, keepdim=True)
    support = lq > float("-inf")
    diff = torch.where(support, lq - torch.where(support, lp, torch.zeros_like(lp)), torch.zeros_like(lq))
    return (lq.exp() * diff).sum(-1)


def _rows(fn, logits: Tensor, *rows) -> Tensor:
    """``fn(logits_chunk, *row_chunks)`` over row chunks (N,); under autograd each chunk is
    recomputed in backward (activation checkpointing), so only the logits are kept."""
    width = max(logits.shape[-1] + 1, 2)
    step = max(1, _CHUNK_ELEMENTS // width)
    grad = torch.is_grad_enabled() and logits.requires_grad
    out = []
    for i in range(0, logits.shape[0], step):
        args = [logits[i : i + step], *(r[i : i + step] for r in rows)]
        out.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    return torch.cat(out) if out else logits.new_zeros(0)


def d3pm_vb(logp: Tensor, x0: Tensor, xt: Tensor, t, process) -> Tensor:
    """D3PM's per-step term: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t >= 2 and
    -log p(x_0 | x_1) for t = 1, with p the x0-parameterised reverse kernel fed ``logp``. Shape (..., L).

    Minimised in expectation over x_0 | x_t by the leave-one-out posterior p(x_0^i | x_t^{-i}), which
    makes p the exact per-position reverse marginal (docs/maths.md §9).

    Raises:
        ValueError: shapes or tokens out of range; ``t`` outside 1..T (named).
        TypeError: ``t`` not integer.
    """
    flat, x0f, xtf, n, shape = _prepare(logp, x0, xt, t, process)
    family = process.family
    return _rows(lambda lg, a, b, m: _vb_rows(lg, a, b, m, family), flat, x0f, xtf, n).reshape(shape)


def _ce(flat: Tensor, x0f: Tensor) -> Tensor:
    return -torch.log_softmax(flat, -1).gather(-1, x0f.unsqueeze(-1)).squeeze(-1)


def d3pm_cross_entropy(logp: Tensor, x0: Tensor, xt: Tensor, t, process) -> Tensor:
    """D3PM's auxiliary cross-entropy -log p~(x_0 | x_t) on every position (no weight); minimised by the
    denoiser p(x_0^i | x_t). Not a bound."""
    flat, x0f, _, _, shape = _prepare(logp, x0, xt, t, process)
    return _rows(_ce, flat, x0f).reshape(shape)


def d3pm_elbo(logp: Tensor, x0: Tensor, xt: Tensor, t, process) -> Tensor:
    """One-step estimator of the bound per token: w(t) d3pm_vb + prior_kl, w(t) = 1/P(t) from the
    process's ``step_probs`` (T for uniform steps). Its mean over t ~ P is the bound prior_kl +
    sum_t E[d3pm_vb]; the objective ``d3pm_elbo`` ("L_vb") and the bound ``ddlm eval`` reports."""
    vb = d3pm_vb(logp, x0, xt, t, process)
    n = process._int_steps(t, x0)
    return process._on("step_weights", vb.device)[n].to(vb.dtype) * vb + process.prior_kl(x0).to(vb.dtype)


def d3pm_hybrid(logp: Tensor, x0: Tensor, xt: Tensor, t, process) -> Tensor:
    """D3PM's hybrid loss L_vb + lambda CE, lambda = ``process.hybrid_lambda``: per token
    w(t) (d3pm_vb + lambda (-log p~(x_0 | x_t))) + prior_kl, i.e. D3PM's per-step L_{t-1} + lambda CE_t
    scaled by w(t) = T (uniform steps) so that lambda = 0 is ``d3pm_elbo``. Not a bound for lambda > 0."""
    vb = d3pm_vb(logp, x0, xt, t, process)
    ce = d3pm_cross_entropy(logp, x0, xt, t, process) if process.hybrid_lambda else torch.zeros_like(vb)
    n = process._int_steps(t, x0)
    w = process._on("step_weights", vb.device)[n].to(vb.dtype)
    return w * (vb + process.hybrid_lambda * ce) + process.prior_kl(x0).to(vb.dtype)
