"""Dense transition matrices for D3PM (docs/maths.md §9): validation of user matrices, D3PM's
discretised Gaussian matrices for ordinal tokens, and nearest-neighbour (graph) transitions, among
them the banded ordinal graph. The matrices go to ``d3pm_transitions.Dense``."""

from __future__ import annotations

import torch
from torch import Tensor

from .d3pm_transitions import TransitionError

_F64 = torch.float64


def check_transitions(q, tol: float = 1e-6) -> Tensor:
    """Validate a user stack of transition matrices (T, K', K'): float, finite, non-negative (entries
    down to -1e-12 are rounding and set to 0), rows summing to 1 within ``tol`` (then renormalised)."""
    if not isinstance(q, Tensor) or not q.is_floating_point():
        got = q.dtype if isinstance(q, Tensor) else type(q).__name__
        raise TransitionError(f"transitions must be a floating-point tensor (T, K', K'), got {got}")
    if q.dim() != 3 or q.shape[1] != q.shape[2] or q.shape[0] < 1 or q.shape[1] < 2:
        raise TransitionError(f"transitions must have shape (T, K', K') with T >= 1 and K' >= 2, got "
                              f"{tuple(q.shape)}")
    q = q.detach().to(_F64, copy=True)
    if not bool(torch.isfinite(q).all()):
        n = int((~torch.isfinite(q)).nonzero()[0, 0]) + 1
        raise TransitionError(f"transitions[{n - 1}] (Q_{n}) holds a non-finite entry")
    if float(q.min()) < -1e-12:
        n, i, j = (q < -1e-12).nonzero()[0].tolist()
        raise TransitionError(f"transitions[{n}] (Q_{n + 1}) has entry [{i}, {j}] = {float(q[n, i, j]):.6g}, "
                              "expected non-negative probabilities")
    q.clamp_(min=0.0)
    sums = q.sum(-1)
    bad = (sums - 1).abs() > tol
    if bool(bad.any()):
        n, i = bad.nonzero()[0].tolist()
        raise TransitionError(f"transitions[{n}] (Q_{n + 1}) row {i} sums to {float(sums[n, i]):.6g}, expected 1 "
                              f"(within {tol}): row i must be q(x_t = . | x_{{t-1}} = i)")
    return q / sums.unsqueeze(-1)


def linear_betas(steps: int, start: float = 0.02, stop: float = 1.0) -> Tensor:
    """beta_n linear from ``start`` to ``stop`` over n = 1..T (D3PM's schedule for Gaussian matrices)."""
    return torch.linspace(start, stop, steps, dtype=_F64)


def gaussian_matrices(k: int, betas: Tensor) -> Tensor:
    """D3PM's discretised Gaussian: Q[i, j] = exp(-4 (i-j)^2 / ((K-1)^2 beta)) / Z for i != j, with
    Z = sum_{d = -(K-1)}^{K-1} exp(-4 d^2 / ((K-1)^2 beta)), and Q[i, i] = 1 - sum_{j != i} Q[i, j]."""
    d = torch.arange(k, dtype=_F64)
    diff2 = (d[:, None] - d[None, :]) ** 2
    offs = torch.arange(-(k - 1), k, dtype=_F64) ** 2
    out = []
    for b in betas.tolist():
        scale = 4.0 / ((k - 1) ** 2 * b)
        q = torch.exp(-scale * diff2) / torch.exp(-scale * offs).sum()
        q.fill_diagonal_(0.0)
        q += torch.diag(1.0 - q.sum(-1))
        out.append(q)
    return torch.stack(out)


def graph_matrices(adjacency: Tensor, log_abar: Tensor) -> Tensor:
    """Nearest-neighbour transitions Q_n = exp(tau_n-increment R) with the rate matrix R = A - diag(A 1)
    of a symmetric graph, and cumulative times tau_n = -log(alphabar_n) / lambda_2 (lambda_2: the
    spectral gap), so that the slowest mode of Qbar_n decays like alphabar_n."""
    a = adjacency.to(_F64)
    r = a - torch.diag(a.sum(-1))
    evals, evecs = torch.linalg.eigh(r)
    gap = -float(evals[-2])
    if not gap > 1e-12:
        raise TransitionError("adjacency must describe a connected graph (its rate matrix has a spectral gap), "
                              f"got gap {gap!r}")
    tau = -log_abar / gap
    tau[0] = 0.0
    out = []
    for dt in (tau[1:] - tau[:-1]).tolist():
        q = (evecs * torch.exp(dt * evals)) @ evecs.T
        q.clamp_(min=0.0)
        out.append(q / q.sum(-1, keepdim=True))
    return torch.stack(out)


def band_adjacency(k: int, bandwidth: int) -> Tensor:
    """The ordinal neighbours graph: i ~ j iff 0 < |i - j| <= bandwidth."""
    d = torch.arange(k)
    dist = (d[:, None] - d[None, :]).abs()
    return ((dist > 0) & (dist <= bandwidth)).to(_F64)


def check_adjacency(adjacency) -> Tensor:
    if not isinstance(adjacency, Tensor) or adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1] \
            or adjacency.shape[0] < 2:
        got = tuple(adjacency.shape) if isinstance(adjacency, Tensor) else type(adjacency).__name__
        raise TransitionError(f"adjacency must be a square (K, K) tensor with K >= 2, got {got}")
    a = adjacency.to(_F64)
    if not bool(torch.isfinite(a).all()) or float(a.min()) < 0 or not torch.equal(a, a.T) \
            or bool(a.diagonal().ne(0).any()):
        raise TransitionError("adjacency must be symmetric, finite, non-negative, with a zero diagonal")
    return a
