"""The fast path of the fused UDM plug-in ELBO (``ddlm.losses._PlugInSum``): value and gradient of
a chunk of rows in a few passes over the vocabulary (docs/maths.md §4.1).

With E(y) = exp(z(y) - max z), s = sum E, r = E / s, xbar_th(y) = n r(y) + c (n = K alpha,
c = 1 - alpha), X = xbar_th(x), rho = R(y) for y outside {x, x_0} and q(y) = xbar_th(y) / (X rho) =
R_th(y) / R(y), the bulk of the sum is rho sum_y phi(q(y)) with phi(q) = q - 1 - log q. Writing
q = b (1 + gamma E) with the row scalars b = c / (X rho) and gamma = n / (s c),

    phi(q(y)) = E(y) a1 + kappa - log1p(gamma E(y)),    a1 = n / (s X rho),  kappa = phi(b)

per element: one multiply, one log1p, one multiply-add and a subtraction. log1p of a non-negative
argument is accurate at every magnitude and kappa is formed per row (by its series near b = 1), so
the result keeps the accuracy of the term-by-term log-domain form (``losses._careful_total``): at
small alpha, where every q is near 1, and at alpha near 1, where most q are far below machine
epsilon. The gradient in the logits needs E / q = E / (b (1 + gamma E)), one more division; the
softmax and the special entries x and x_0 are as in ``_PlugInSum``'s docstring.

Rows whose scalars leave the dtype's safe range (alpha = 1 exactly, where c is clamped to the
smallest normal number) are flagged (``ok`` False) for the careful path in ``ddlm.losses``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _r_phi_rows(r: Tensor, u: Tensor, log_ratio_th: Tensor) -> Tensor:
    """R (e^u - 1 - u) per row, as ``losses._r_phi``: cancellation-free for small u, finite when R
    underflows and e^u overflows."""
    return torch.where(u.abs() < 1.0, r * (torch.expm1(u) - u), log_ratio_th.exp() - r - r * u)


def _phi_scalar(d: Tensor, log_b: Tensor) -> Tensor:
    """phi(b) = d - log b for b = 1 + d, by its series when |d| < 1e-2 (no cancellation)."""
    series = d * d * (0.5 + d * (-1.0 / 3 + d * (0.25 + d * (-0.2 + d / 6))))
    return torch.where(d.abs() < 1e-2, series, d - log_b)


def workspace(rows: int, k: int, dtype, device) -> list[Tensor]:
    """Four (rows, K) buffers reused across chunks (no page faults per chunk)."""
    return [torch.empty(rows, k, dtype=dtype, device=device) for _ in range(4)]


def plugin_rows(logits: Tensor, x: Tensor, x0: Tensor, shift: Tensor, a: Tensor, work: list[Tensor],
                grad_out: Tensor | None):
    """Value (and gradient) of ``_PlugInSum`` for a chunk of rows.

    Args:
        logits: (m, K) logits of the chunk (any float dtype; read, not modified).
        x, x0: (m,) current and clean tokens.
        shift: (m,) subtracted from the logit at x (denoiser -> LOO; 0 for a LOO network), working dtype.
        a: (m,) alpha, working dtype.
        work: :func:`workspace` buffers with at least m rows, in the working dtype.
        grad_out: where to write the gradient of each row's value in its logits ((m, K)), or None.

    Returns:
        ``(total, ok)``: (m,) values and (m,) bool, False for rows that must be recomputed on the
        careful path (their outputs, values and gradient rows, are meaningless).
    """
    m, k = logits.shape
    e, b1, b2, b3 = (w[:m] for w in work)
    info = torch.finfo(e.dtype)
    rows = torch.arange(m, device=e.device)
    # E = exp(z - max z); the max of the unshifted logits is as good a stabiliser (the shift at x is a
    # few tens at most on this path: alpha = 1 goes to the careful one)
    if logits.dtype == e.dtype:
        torch.sub(logits, logits.amax(-1, keepdim=True), out=e)
    else:  # upcast first (bfloat16 logits): the subtraction happens in the working dtype
        e.copy_(logits)
        e.sub_(e.amax(-1, keepdim=True))
    e[rows, x] -= shift
    e.exp_()
    e_x, e_x0 = e[rows, x], e[rows, x0]
    e[rows, x] = 0.0
    s_off = e.sum(-1)  # sum of E off x: 1 - r(x) without cancellation
    e[rows, x] = e_x
    s = s_off + e_x
    c = (1.0 - a).clamp_min(info.tiny)
    n = k * a
    same = x == x0
    big_x = n * e_x / s + c  # X = xbar_th(x)
    big_x0 = n * e_x0 / s + c
    rho = c / torch.where(same, n + c, c)  # c / the true xbar(x)
    x_rho = big_x * rho
    a1, gamma = n / (s * x_rho), n / (s * c)
    d_b = torch.where(same, n * s_off / s, -n * e_x / s) / big_x  # b - 1 = (xbar(x) - X) / X
    log_b = torch.where(d_b > -0.5, torch.log1p(d_b), torch.log(c) - torch.log(x_rho))
    kappa = _phi_scalar(d_b, log_b)
    limit = info.max / (8.0 * k)
    ok = (torch.isfinite(a1) & torch.isfinite(gamma) & torch.isfinite(kappa) & (a1 < limit) & (gamma < limit)
          & (kappa < limit) & (rho >= info.tiny) & (x_rho >= info.tiny))
    a1, gamma, kappa = (torch.where(ok, v, 0.0).unsqueeze(-1) for v in (a1, gamma, kappa))
    torch.mul(e, gamma, out=b1)  # gamma E
    torch.log1p(b1, out=b2)
    phi = torch.addcmul(kappa, e, a1, out=b3).sub_(b2)  # phi(q) = E a1 + kappa - log1p(gamma E)
    phi[rows, x] = 0.0
    phi[rows, x0] = 0.0
    total = rho * phi.sum(-1)
    # y = x_0 != x: R = e^delta = (n + c) / c, u = log(X0 / X) - delta
    delta = torch.log1p(n / c)
    log_x0_x = torch.log(big_x0) - torch.log(big_x)
    at_x0 = _r_phi_rows(delta.exp(), log_x0_x - delta, log_x0_x)
    total = total + torch.where(same, torch.zeros_like(at_x0), at_x0)
    if grad_out is None:
        return total, ok
    # gradient: g(y) = -n R(y) / xbar_th(y) off x; g(x) = n (sum_{y != x} R(y) / X - K / X^2)
    r_x0 = torch.where(same, rho, delta.exp())
    sum_r = (k - 1) * rho + torch.where(same, torch.zeros_like(rho), r_x0 - rho)
    g_x = n * (sum_r / big_x - k / big_x**2)
    g_x0 = -n * r_x0 / big_x0
    w = torch.div(e, b1.add_(1.0), out=b1)  # E / (1 + gamma E) = b E / q
    b = (c / x_rho).unsqueeze(-1)  # not 1 + d_b: b may be far below machine epsilon
    w_x, w_x0 = w[rows, x] / b.squeeze(-1), w[rows, x0] / b.squeeze(-1)
    bulk_w = w.sum(-1) / b.squeeze(-1) - w_x - torch.where(same, torch.zeros_like(w_x0), w_x0)  # sum E / q
    # m_g = sum_y r(y) g(y); off {x, x_0}: E g = -(n / X) E / q
    m_g = (-(n / big_x) * bulk_w + e_x * g_x + torch.where(same, torch.zeros_like(g_x0), e_x0 * g_x0)) / s
    scale = (-n / (big_x * s)).unsqueeze(-1) / b
    if grad_out.dtype == w.dtype:
        torch.mul(w, scale, out=grad_out)
        grad_out.addcmul_(e, (-m_g / s).unsqueeze(-1))
    else:
        grad_out.copy_(w.mul_(scale).addcmul_(e, (-m_g / s).unsqueeze(-1)))
    grad_out[rows, x0] = (e_x0 / s * (g_x0 - m_g)).to(grad_out.dtype)  # (for x_0 = x overwritten next)
    grad_out[rows, x] = (e_x / s * (g_x - m_g)).to(grad_out.dtype)
    return total, ok
