"""Exact oracle for small toy laws: enumerate all K^L sequences (docs/maths.md §7).

For a law p_0 over {0..K-1}^L this module gives, by brute-force enumeration in float64:

- the time-t marginal p_t (UDM, MDM) and the per-position likelihoods q_t(x_t^i | x_0^i);
- the UDM denoiser d_i(y | x_t), LOO posterior r_i(y | x_t^{-i}) and concrete score s_i(y | x_t)
  (also the masked one: from the mask state to each clean token);
- the MDM denoiser and the AUDM posterior p(x_0^i | x_t, u);
- the exact NLL bound of any per-token objective, integrated over t by tanh-sinh quadrature;

What a process contributes (its per-token likelihood, its noisy states, its exact predictions) is
asked of the process object (``ddlm.processes.Process``); a process may be given by its short name.
- D3PM (discrete time): ``ddlm.exact_d3pm`` (cumulative products, posteriors, the exact joint reverse
  kernel, the discrete-time bound), re-exported here as ``d3pm``;
- ``model(...)``: the oracle wrapped as a network ``model(xt, t, noise=None) -> logits``, so samplers
  can be checked against the exact law, and ``tv_distance`` to compare samples with p_0.

It is a testing and validation tool: cost grows as K^(2L), keep K^L below a few thousand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_tokens, check_vocab_size
from .processes import AbsorbingUniformDiffusion, MaskedDiffusion, UniformDiffusion
from .schedules import LinearSchedule

_F64 = torch.float64


@dataclass(frozen=True)
class ToyLaw:
    """A law p_0 over all K^L sequences, listed in lexicographic order (position 0 most significant)."""

    p0: Tensor  # (K^L,) float64, sums to 1
    vocab_size: int
    length: int

    def __post_init__(self):
        check_vocab_size("vocab_size", self.vocab_size)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        n = self.vocab_size**self.length
        if tuple(self.p0.shape) != (n,):
            raise ValueError(f"p0 has shape {tuple(self.p0.shape)}, expected ({n},) = K^L")
        if float(self.p0.min()) < 0 or abs(float(self.p0.sum()) - 1.0) > 1e-9:
            raise ValueError("p0 must be a probability vector (non-negative, summing to 1)")

    @property
    def num_states(self) -> int:
        return self.vocab_size**self.length

    @property
    def sequences(self) -> Tensor:
        """All K^L sequences, shape (K^L, L), int64, in the order of p0."""
        return all_sequences(self.vocab_size, self.length)

    def index(self, x: Tensor) -> Tensor:
        """Index into p0 of each sequence in x (..., L)."""
        check_tokens("x", x, self.vocab_size)
        weights = self.vocab_size ** torch.arange(self.length - 1, -1, -1, device=x.device)
        return (x * weights).sum(-1)

    def sample(self, n: int, generator=None) -> Tensor:
        """n iid draws from p_0, shape (n, L)."""
        idx = torch.multinomial(self.p0, n, replacement=True, generator=generator)
        return self.sequences[idx]

    def entropy(self) -> float:
        """H(p_0) in nats."""
        p = self.p0[self.p0 > 0]
        return float(-(p * p.log()).sum())


def all_sequences(k: int, length: int, device=None) -> Tensor:
    """All k^length sequences over {0..k-1}, lexicographic, shape (k^length, length)."""
    grids = torch.meshgrid(*[torch.arange(k, device=device)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def random_law(vocab_size: int, length: int, seed: int = 0, concentration: float = 1.0) -> ToyLaw:
    """A Dirichlet(concentration) draw over all vocab_size^length sequences (numpy's generator)."""
    import numpy as np

    n = check_vocab_size("vocab_size", vocab_size) ** length
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    p = np.random.default_rng(seed).dirichlet(np.full(n, float(concentration)))
    p = torch.as_tensor(p, dtype=_F64).clamp_min(1e-300)
    return ToyLaw(p / p.sum(), vocab_size, length)


# ---- per-position likelihoods ------------------------------------------------------------------

def _alpha_per_row(alpha, xt: Tensor) -> Tensor:
    """alpha as a float64 tensor of shape xt.shape[:-1] (one value per sequence)."""
    a = torch.as_tensor(alpha, dtype=_F64, device=xt.device)
    if a.dim() >= 1 and a.dim() == xt.dim() - 1 and tuple(a.shape) == tuple(xt.shape[:-1]):
        a = a.unsqueeze(-1)
    a = torch.broadcast_to(a, xt.shape)
    if a.numel() and (float(a.min()) < 0 or float(a.max()) > 1):
        raise ValueError(f"alpha must lie in [0, 1], got values in [{float(a.min())}, {float(a.max())}]")
    return a[..., 0]


def _process(process, k: int):
    """A process object from a process or a registered short name, with vocabulary k."""
    from .processes import Process, get_process

    if isinstance(process, Process):
        if process.vocab_size != k:
            raise ValueError(f"process.vocab_size is {process.vocab_size}, expected the law's vocab_size {k}")
        return process
    if isinstance(process, str):
        return get_process(process, k, LinearSchedule(eps=0.0))
    if isinstance(process, type) and issubclass(process, Process):
        return process(k, LinearSchedule(eps=0.0))
    raise TypeError(f"process must be a ddlm process or a process name, got {type(process).__name__}")


def _lik(cls, law: ToyLaw, x: Tensor, a: Tensor, noise: Tensor | None = None) -> Tensor:
    return _process(cls, law.vocab_size).token_loglik(x, law.sequences, a, noise)


def token_loglik(process, xt: Tensor, x0: Tensor, alpha: Tensor, k: int, noise: Tensor | None = None) -> Tensor:
    """log q_t(x_t^i | x_0^i) for every pair of a batch of x_t (B, L) and of x_0 (N, L): (B, N, L).

    ``process`` is a process object or name; see its ``token_loglik`` (for AUDM the uniform law of u,
    independent of x_0, is left out).
    """
    return _process(process, k).token_loglik(xt, x0, alpha, noise)


def _marginals(logw: Tensor, k: int, length: int, i: int) -> Tensor:
    """Given log weights (B, K^L) over x_0, the normalised log marginal of x_0^i: (B, K)."""
    b = logw.shape[0]
    grid = logw.reshape(b, *([k] * length))
    other = [d + 1 for d in range(length) if d != i]
    m = torch.logsumexp(grid, dim=other) if other else grid
    return m - torch.logsumexp(m, dim=-1, keepdim=True)


def _posterior(law: ToyLaw, loglik: Tensor, leave_one_out: bool) -> Tensor:
    """Per-position log posterior of x_0^i, (B, L, K), from token log-likelihoods (B, N, L)."""
    logp0 = law.p0.log()[None, :]
    out = []
    for i in range(law.length):
        keep = [j for j in range(law.length) if not (leave_one_out and j == i)]
        logw = logp0 + loglik[:, :, keep].sum(-1) if keep else logp0.expand(loglik.shape[0], -1)
        out.append(_marginals(logw, law.vocab_size, law.length, i))
    return torch.stack(out, dim=1)


def _flat(xt: Tensor, law: ToyLaw, name: str, high: int):
    if xt.shape[-1] != law.length:
        raise ValueError(f"{name} has length {xt.shape[-1]}, expected the law's length {law.length}")
    check_tokens(name, xt, high)
    return xt.reshape(-1, law.length)


def posterior(law: ToyLaw, process, xt: Tensor, alpha, noise: Tensor | None = None,
              leave_one_out: bool = False) -> Tensor:
    """The exact per-position posterior of x_0^i for any process, by Bayes over all K^L sequences with
    the process's ``token_loglik``: given x_t (and u), or, with ``leave_one_out``, given x_t^{-i}
    only. Shape (..., L, K). The generic form of every exact view below."""
    proc = _process(process, law.vocab_size)
    a = _alpha_per_row(alpha, xt).reshape(-1)
    x = _flat(xt, law, "xt", proc.input_vocab_size)
    u = None
    if noise is not None:
        if tuple(noise.shape) != tuple(xt.shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected xt's shape {tuple(xt.shape)}")
        u = _flat(noise, law, "noise", law.vocab_size)
    elif proc.has_noise:
        raise ValueError(f"noise is required for {proc.label} (its states carry noise tokens), got None")
    ll = proc.token_loglik(x, law.sequences, a, u)
    return _posterior(law, ll, leave_one_out=leave_one_out).reshape(*xt.shape, law.vocab_size)


def denoiser(law: ToyLaw, xt: Tensor, alpha) -> Tensor:
    """UDM denoiser log d_i(y | x_t), shape (..., L, K)."""
    a = _alpha_per_row(alpha, xt).reshape(-1)
    x = _flat(xt, law, "xt", law.vocab_size)
    ll = _lik(UniformDiffusion, law, x, a)
    return _posterior(law, ll, leave_one_out=False).reshape(*xt.shape, law.vocab_size)


def loo(law: ToyLaw, xt: Tensor, alpha) -> Tensor:
    """UDM leave-one-out posterior log r_i(y | x_t^{-i}), shape (..., L, K)."""
    a = _alpha_per_row(alpha, xt).reshape(-1)
    x = _flat(xt, law, "xt", law.vocab_size)
    ll = _lik(UniformDiffusion, law, x, a)
    return _posterior(law, ll, leave_one_out=True).reshape(*xt.shape, law.vocab_size)


def log_marginal(law: ToyLaw, xt: Tensor, alpha, process=None) -> Tensor:
    """log p_t(x_t) for a batch of x_t (..., L) under ``process`` (a process or name; default uniform
    diffusion); x_t may hold the mask id K for masked diffusion."""
    proc = _process(UniformDiffusion if process is None else process, law.vocab_size)
    a = _alpha_per_row(alpha, xt).reshape(-1)
    x = _flat(xt, law, "xt", proc.input_vocab_size)
    ll = proc.token_loglik(x, law.sequences, a)
    return torch.logsumexp(law.p0.log()[None, :] + ll.sum(-1), dim=-1).reshape(xt.shape[:-1])


def score(law: ToyLaw, xt: Tensor, alpha, process=None) -> Tensor:
    """Concrete score as log-ratios log p_t(x^{i<-y}) - log p_t(x) for the K data tokens y, shape
    (..., L, K), under ``process`` (a process or name; default uniform diffusion). For masked
    diffusion x_t may hold the mask id K: at a masked position these are the ratios from the mask state
    to each clean token (SEDD's absorbing graph, docs/maths.md §10)."""
    proc = _process(UniformDiffusion if process is None else process, law.vocab_size)
    k, length = law.vocab_size, law.length
    x = _flat(xt, law, "xt", proc.input_vocab_size)
    a = _alpha_per_row(alpha, xt).reshape(-1)
    b = x.shape[0]
    nb = x[:, None, None, :].repeat(1, length, k, 1)  # (B, L, K, L): position i set to y
    pos = torch.arange(length)
    nb[:, pos, :, pos] = torch.arange(k).expand(b, length, k).permute(1, 0, 2)
    lp_nb = log_marginal(law, nb, a[:, None, None].expand(b, length, k), proc)
    lp_x = log_marginal(law, x, a, proc)
    return (lp_nb - lp_x[:, None, None]).reshape(*xt.shape, k)


def mdm_denoiser(law: ToyLaw, xt: Tensor, alpha) -> Tensor:
    """MDM denoiser log p(x_0^i = y | x_t) for x_t with mask id K, shape (..., L, K)."""
    a = _alpha_per_row(alpha, xt).reshape(-1)
    x = _flat(xt, law, "xt", law.vocab_size + 1)
    ll = _lik(MaskedDiffusion, law, x, a)
    return _posterior(law, ll, leave_one_out=False).reshape(*xt.shape, law.vocab_size)


def audm_posterior(law: ToyLaw, xt: Tensor, noise: Tensor, alpha) -> Tensor:
    """AUDM posterior log p(x_0^i = y | x_t, u), shape (..., L, K)."""
    a = _alpha_per_row(alpha, xt).reshape(-1)
    x = _flat(xt, law, "xt", law.vocab_size)
    if tuple(noise.shape) != tuple(xt.shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected xt's shape {tuple(xt.shape)}")
    u = _flat(noise, law, "noise", law.vocab_size)
    ll = _lik(AbsorbingUniformDiffusion, law, x, a, u)
    return _posterior(law, ll, leave_one_out=False).reshape(*xt.shape, law.vocab_size)


# ---- the oracle as a model ---------------------------------------------------------------------

def predictor(law: ToyLaw, process, prediction: str) -> Callable:
    """The exact prediction as a function ``f(xt, alpha, noise=None) -> logp (..., L, K)``.

    ``process`` is a process or a name; ``prediction`` one of ``process.predictions`` ("score": the
    concrete score as log-ratios, for the processes that have one).
    """
    return _process(process, law.vocab_size).exact_predictor(law, prediction)


def model(law: ToyLaw, process, prediction: str | None = None) -> Callable:
    """The oracle as a network: ``model(xt, t, noise=None) -> logits (B, L, K)`` (float64).

    ``process`` is a ddlm process object (its schedule maps t to alpha). ``prediction`` defaults to
    the process's ``default_prediction`` ("loo" for UDM, "denoiser" for MDM, "posterior" for AUDM);
    the returned callable declares it in ``.prediction``, as ddlm's networks do.
    """
    if process.vocab_size != law.vocab_size:
        raise ValueError(
            f"process.vocab_size is {process.vocab_size}, expected the law's vocab_size {law.vocab_size}"
        )
    prediction = prediction or process.default_prediction
    f = predictor(law, process, prediction)

    def oracle(xt: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        alpha = process.alpha(torch.as_tensor(t, dtype=_F64)).expand(xt.shape[:-1]).reshape(-1)
        flat = xt.reshape(-1, xt.shape[-1])
        u = None if noise is None else noise.reshape(-1, xt.shape[-1])
        if flat.shape[0] > 1 and bool((alpha == alpha[0]).all()):
            # a batch holds at most a few thousand distinct rows: evaluate each (x_t, u) once
            cols = flat if u is None else torch.cat([flat, u], -1)
            base = int(cols.max()) + 1
            key = (cols * base ** torch.arange(cols.shape[-1], device=cols.device)).sum(-1)
            _, first, inverse = _unique_first(key)
            out = f(flat[first], alpha[first], None if u is None else u[first])[inverse]
        else:
            out = f(flat, alpha, u)
        return out.reshape(*xt.shape, law.vocab_size)

    oracle.prediction = prediction
    oracle.process = process
    return oracle


def _unique_first(key: Tensor):
    """Unique values of a 1-D key, the index of one occurrence of each, and the inverse map."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.empty(uniq.shape[0], dtype=torch.long, device=key.device)
    first.scatter_(0, inverse, torch.arange(key.shape[0], device=key.device))
    return uniq, first, inverse


# ---- exact ELBO ----------------------------------------------------------------------------------

def tanh_sinh_nodes(level: int = 5, max_abs: float = 3.5, dtype=_F64):
    """Tanh-sinh (double-exponential) nodes and weights on (0, 1), step h = 2^-level.

    Returns (t, one_minus_t, w); the complement is computed directly, so nodes near t = 1 keep
    full relative precision in 1 - t. Endpoint (log or power) singularities are handled well.
    """
    h = 2.0**-level
    tau = torch.arange(-max_abs, max_abs + h / 2, h, dtype=dtype)
    x = 0.5 * math.pi * torch.sinh(tau)
    t = torch.sigmoid(2 * x)
    one_minus_t = torch.sigmoid(-2 * x)
    w = h * 0.5 * math.pi * torch.cosh(tau) / (2 * torch.cosh(x) ** 2)
    keep = (t > 0) & (one_minus_t > 0) & (w > 0)
    return t[keep], one_minus_t[keep], w[keep]


def elbo(
    law: ToyLaw,
    process,
    objective: Callable,
    prediction: str | Callable | None = None,
    schedule=None,
    level: int = 5,
) -> Tensor:
    """Exact NLL bound of every sequence x_0: integral over t in (0, 1) of E_{q(x_t|x_0)} sum_i l_t^i.

    Args:
        law: the toy law p_0.
        process: a process or its name, e.g. "udm", "mdm" or "audm" (for AUDM the expectation also
            averages over the noise tokens u).
        objective: a per-token loss ``f(logp, x0, xt, alpha, dalpha)`` (``f(logp, x0, xt, noise,
            alpha, dalpha)`` for "audm") returning shape (..., L), e.g. ``ddlm.losses.udm_elbo``.
        prediction: what to feed the objective: a name for the exact oracle (see ``predictor``), or
            a callable ``f(xt, alpha, noise=None) -> logp``. Default: the process's
            ``default_prediction`` ("loo" for UDM, "denoiser" for MDM, "posterior" for AUDM).
        schedule: maps t to alpha; default: the process object's schedule, or LinearSchedule(eps=0)
            (alpha from 1 to 0) when the process is given by name.
        level: quadrature refinement (step 2^-level in tanh-sinh variable).

    Returns:
        (K^L,) float64: the bound for each sequence of ``law.sequences``.

    For a discrete-time process (D3PM, ``process.steps`` set) the integral over t is the expectation
    over the steps, ``objective(logp, x0, xt, t, process)`` takes integer steps and ``schedule`` and
    ``level`` do not apply (``ddlm.exact_d3pm.discrete_elbo``).
    """
    proc = _process(process, law.vocab_size)
    if proc.steps is not None:  # discrete time (D3PM): a sum over the steps, ``exact_d3pm.discrete_elbo``
        from .exact_d3pm import discrete_elbo

        name = prediction or proc.default_prediction
        predict = prediction if callable(prediction) else proc.exact_predictor(law, name)
        return discrete_elbo(law, proc, objective, predict)
    if schedule is None:  # a process object brings its schedule; a name means alpha from 1 to 0
        schedule = proc.schedule if not isinstance(process, (str, type)) else LinearSchedule(eps=0.0)
    predict = prediction if callable(prediction) else proc.exact_predictor(law, prediction or proc.default_prediction)
    xt, noise = proc.exact_states(law.length)
    x0 = law.sequences
    n0, ns = x0.shape[0], xt.shape[0]
    ts, _, ws = tanh_sinh_nodes(level)
    total = torch.zeros(n0, dtype=_F64)
    for t, w in zip(ts, ws, strict=False):
        alpha = schedule.alpha(t)
        dalpha = schedule.dalpha(t)
        if not 0.0 < float(alpha) < 1.0:
            # only the outermost nodes (weights < 1e-15) round alpha to exactly 0 or 1, where the
            # predictions are degenerate point masses; their contribution is below float64 noise.
            continue
        a_states = alpha.expand(ns)
        logq = proc.token_loglik(xt, x0, a_states, noise).sum(-1).T + proc.exact_noise_logweight(law.length)
        logp = predict(xt, a_states, noise) if noise is not None else predict(xt, a_states)
        big = (n0, ns, law.length)
        args = [logp[None].expand(n0, ns, law.length, law.vocab_size), x0[:, None].expand(big), xt[None].expand(big)]
        if noise is not None:
            args.append(noise[None].expand(big))
        loss = objective(*args, alpha, dalpha).sum(-1)  # (N0, S)
        q = logq.exp()
        total += w * torch.where(q > 0, q * loss, torch.zeros_like(loss)).sum(-1)
    return total


def tv_distance(law: ToyLaw, samples: Tensor) -> float:
    """Total-variation distance between the empirical law of samples (n, L) and p_0."""
    idx = law.index(samples)
    counts = torch.bincount(idx, minlength=law.num_states).to(_F64)
    return 0.5 * float((counts / counts.sum() - law.p0).abs().sum())


from . import exact_d3pm as d3pm  # noqa: E402, F401  (the discrete-time oracle: ``ddlm.exact.d3pm``)
