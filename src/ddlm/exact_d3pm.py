"""The exact oracle for discrete-time processes (D3PM; docs/maths.md §9): everything by brute force over
all K'^L states and all K^L clean sequences, in float64, from the process's dense matrices Q_1..Q_T
(``family.dense()``) multiplied out here, independently of the closed forms the process uses.

- ``cumulative``: Qbar_0..Qbar_T by explicit matrix products;
- ``posterior``: q(x_{t-1}^i | x_t^i, x_0^i) per token by Bayes on the matrices;
- ``log_marginal``: log q_t(x_t) of every state for a toy law;
- ``reverse``: the exact joint reverse kernel q(x_s | x_t) over whole sequences;
- ``bound_terms`` / ``bound``: the discrete-time bound of every sequence, prior term plus the T
  per-step terms, with the x0-parameterised kernel fed any prediction (``ddlm.losses.d3pm_vb``) or
  with the exact joint reverse kernel, and the process's prior or the exact q(x_T);
- ``sampler_law``: the exact law of the ancestral sampler's output on any grid of steps (over all
  T steps it is the model's own marginal p_theta(x_0), which the bound bounds for every x_0);
- ``discrete_elbo``: ``ddlm.exact.elbo`` for a discrete-time process (sum over steps instead of an
  integral over t).

Keep K'^L to a few hundred states.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_tokens

_F64 = torch.float64


def _dense(process) -> Tensor:
    states = process.family.states
    if process.steps * states * states > 1 << 24:
        raise ValueError(f"the exact oracle needs T K'^2 <= 2^24, got T = {process.steps}, K' = {states}")
    return process.family.dense().to(_F64)


def cumulative(process) -> Tensor:
    """Qbar_n = Q_1 ... Q_n for n = 0..T by matrix products: (T + 1, K', K') float64."""
    q = _dense(process)
    out = [torch.eye(q.shape[1], dtype=_F64)]
    for n in range(q.shape[0]):
        out.append(out[-1] @ q[n])
    return torch.stack(out)


def _log(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(0.0))


def posterior(process, x0: Tensor, xt: Tensor, t: int) -> Tensor:
    """log q(x_{t-1} = . | x_t, x_0) per token, (..., L, K'), from Q_t[., x_t] Qbar_{t-1}[x_0, .]."""
    if not 1 <= t <= process.steps:
        raise ValueError(f"t must be an integer step in [1, {process.steps}], got {t!r}")
    q, qbar = _dense(process), cumulative(process)
    w = q[t - 1][:, xt].movedim(0, -1) * qbar[t - 1][x0]
    return _log(w / w.sum(-1, keepdim=True))


def _states(law, process) -> Tensor:
    from .exact import all_sequences

    return all_sequences(process.family.states, law.length)


def _joint_forward(qbar_n: Tensor, x0: Tensor, xs: Tensor) -> Tensor:
    """log prod_i Qbar[x0^i, x^i] for every pair of rows: (N0, S)."""
    lq = _log(qbar_n)
    return lq[x0[:, None, :], xs[None, :, :]].sum(-1)


def log_marginal(law, process, t: int) -> Tensor:
    """log q_t(x) for every state x (the rows of ``all_sequences(K', L)``): (S,)."""
    qbar = cumulative(process)
    return torch.logsumexp(law.p0.log()[:, None] + _joint_forward(qbar[t], law.sequences, _states(law, process)), 0)


def reverse(law, process, xt: Tensor, t: int, s: int | None = None) -> Tensor:
    """The exact joint reverse kernel log q(x_s = x | x_t) over every state x, for a batch of
    sequences xt (B, L): (B, S). s = t - 1 by default; 0 <= s < t <= T."""
    s = t - 1 if s is None else s
    if not 0 <= s < t <= process.steps:
        raise ValueError(f"steps must satisfy 0 <= s < t <= T = {process.steps}, got s={s!r}, t={t!r}")
    check_tokens("xt", xt, process.family.states)
    q, qbar = _dense(process), cumulative(process)
    skip = torch.eye(q.shape[1], dtype=_F64)
    for n in range(s, t):
        skip = skip @ q[n]
    xs = _states(law, process)
    a = torch.logsumexp(law.p0.log()[:, None] + _joint_forward(qbar[s], law.sequences, xs), 0)  # log q_s(x_s)
    b = _joint_forward(skip, xs, xt)  # (S, B): log q(x_t | x_s)
    joint = a[:, None] + b
    return (joint - torch.logsumexp(joint, 0, keepdim=True)).T


def _predict(law, process, prediction):
    if callable(prediction):
        return prediction
    return process.exact_predictor(law, prediction or process.default_prediction)


def _expect(logq: Tensor, values: Tensor) -> Tensor:
    """sum_x q(x | x0) values(x0, x), skipping impossible states: (N0,)."""
    q = logq.exp()
    return torch.where(q > 0, q * values, torch.zeros_like(values)).sum(-1)


def bound_terms(law, process, prediction: str | Callable | None = None, prior: str = "process",
                reverse_kernel: str = "x0") -> Tensor:
    """The terms of the discrete-time bound of every sequence x_0 (``law.sequences``): (T + 1, N0), row 0
    the prior term KL(q(x_T | x_0) || p(x_T)), row t the expected step term E_{x_t | x_0}[...].

    Args:
        prediction: what feeds the x0-parameterisation: a view name of the exact oracle ("loo",
            "denoiser") or ``f(xt, alpha) -> logp``; default the process's default prediction.
        prior: "process" (the process's prior, factorised) or "exact" (the law's own q(x_T)).
        reverse_kernel: "x0" (the factorised kernel, ``ddlm.losses.d3pm_vb`` summed over positions)
            or "exact" (the exact joint reverse kernel q(x_{t-1} | x_t), which makes the bound tight).
    """
    from .losses_d3pm import d3pm_vb

    if prior not in ("process", "exact"):
        raise ValueError(f"prior must be 'process' or 'exact', got {prior!r}")
    if reverse_kernel not in ("x0", "exact"):
        raise ValueError(f"reverse_kernel must be 'x0' or 'exact', got {reverse_kernel!r}")
    if process.vocab_size != law.vocab_size:
        raise ValueError(f"process.vocab_size is {process.vocab_size}, expected the law's vocab_size {law.vocab_size}")
    q, qbar = _dense(process), cumulative(process)
    x0, xs = law.sequences, _states(law, process)
    n0, ns, length = x0.shape[0], xs.shape[0], law.length
    predict = _predict(law, process, prediction) if reverse_kernel == "x0" else None
    terms = torch.zeros(process.steps + 1, n0, dtype=_F64)
    logq_t = _joint_forward(qbar[process.steps], x0, xs)
    if prior == "exact":
        log_prior = torch.logsumexp(law.p0.log()[:, None] + logq_t, 0)[None, :]
    else:
        log_prior = process.log_prior[xs].sum(-1)[None, :]
    terms[0] = _expect(logq_t, logq_t - log_prior)
    for t in range(1, process.steps + 1):
        logq = _joint_forward(qbar[t], x0, xs)
        if reverse_kernel == "x0":
            logp = predict(xs, process.alphas[t].expand(ns))
            big = (n0, ns, length)
            vb = d3pm_vb(logp[None].expand(n0, ns, length, law.vocab_size), x0[:, None].expand(big),
                         xs[None].expand(big), t, process).sum(-1)
        else:
            lpost = _log(q[t - 1][:, xs].permute(1, 2, 0)[None] * qbar[t - 1][x0][:, None])  # (N0, S, L, K')
            lpost = lpost - torch.logsumexp(lpost, -1, keepdim=True)
            # log q(x_{t-1} = y | x_t, x_0) for whole sequences y: (N0, S_t, S_{t-1})
            seq = lpost[..., torch.arange(length)[None, :], xs].sum(-1)
            rev = reverse(law, process, xs, t)  # (S_t, S_{t-1})
            w = seq.exp()
            vb = torch.where(w > 0, w * (seq - rev[None]), torch.zeros_like(seq)).sum(-1)
        terms[t] = _expect(logq, vb)
    return terms


def bound(law, process, prediction: str | Callable | None = None, prior: str = "process",
          reverse_kernel: str = "x0") -> Tensor:
    """The discrete-time bound of every sequence: prior term + sum_t E[step term], (N0,) nats (see
    ``bound_terms``). Equals -log p_0 with ``reverse_kernel="exact"`` and ``prior="exact"``."""
    return bound_terms(law, process, prediction, prior, reverse_kernel).sum(0)


def discrete_elbo(law, process, objective: Callable, predict: Callable) -> Tensor:
    """``ddlm.exact.elbo`` for a discrete-time process: the expectation, over t drawn from the process's
    step law (t = n(u), u uniform: P(n) = step_probs[n]), of E_{x_n | x_0} sum_i objective(logp, x_0,
    x_n, n, process), for every sequence x_0 (N0,). With ``ddlm.losses.d3pm_elbo`` it is ``bound``."""
    qbar = cumulative(process)
    x0, xs = law.sequences, _states(law, process)
    n0, ns, length = x0.shape[0], xs.shape[0], law.length
    total = torch.zeros(n0, dtype=_F64)
    for t in range(1, process.steps + 1):
        logq = _joint_forward(qbar[t], x0, xs)
        logp = predict(xs, process.alphas[t].expand(ns))
        big = (n0, ns, length)
        loss = objective(logp[None].expand(n0, ns, length, law.vocab_size), x0[:, None].expand(big),
                         xs[None].expand(big), t, process).sum(-1)
        total += float(process.step_probs[t - 1]) * _expect(logq, loss)
    return total


def sampler_law(law, process, prediction: str | Callable | None = None, grid=None) -> Tensor:
    """log P(the ancestral sampler returns x_0) for every sequence of ``law.sequences``, (N0,): start
    from the prior, step through ``grid`` (integer steps T = n_0 > n_1 > ... > n_k = 0; default every
    step) with the factorised x0-parameterised kernel (``process.reverse``) fed ``prediction``."""
    steps = list(range(process.steps, -1, -1)) if grid is None else [int(n) for n in grid]
    if steps[0] != process.steps or steps[-1] != 0 or any(b > a for a, b in zip(steps[:-1], steps[1:], strict=True)):
        raise ValueError(f"grid must decrease from T = {process.steps} to 0, got {steps}")
    predict = _predict(law, process, prediction)
    xs = _states(law, process)
    ns, length = xs.shape[0], law.length
    cur = process.log_prior[xs].sum(-1)
    for t, s in zip(steps[:-1], steps[1:], strict=True):
        if s == t:
            continue
        kernel = process.reverse(predict(xs, process.alphas[t].expand(ns)), xs, t, s)  # (S, L, K')
        seq = kernel[:, torch.arange(length)[None, :], xs].sum(-1)  # (S_t, S_s)
        reached = (cur > float("-inf"))[:, None]  # (unreachable states may have no prediction)
        cur = torch.logsumexp(torch.where(reached, cur[:, None] + seq, torch.full_like(seq, float("-inf"))), 0)
    data = (xs < law.vocab_size).all(-1)
    out = torch.full((law.num_states,), float("-inf"), dtype=_F64)
    out[law.index(xs[data])] = cur[data]
    return out
