"""Training objectives: per-token integrands of the continuous-time ELBO (docs/maths.md §4).

Each loss returns, in nats, the per-token integrand l_t^i of shape (..., L), non-negative; the NLL
bound of a sequence is the integral over t in (0, 1] of E_{x_t} sum_i l_t^i (plus prior and
reconstruction terms that vanish as eps -> 0). ``logp`` is (..., L, K) log-probabilities over the K
data tokens (unnormalised logits are normalised); ``alpha`` and ``dalpha`` are floats or tensors
broadcastable to xt's shape. lambda_t = -alpha'_t / (1 - alpha_t), beta_t = -alpha'_t / alpha_t.

Which prediction each objective is minimised by:

=====================  ===============  ==================================
objective              feed it          tight with the exact prediction?
=====================  ===============  ==================================
``udm_elbo``           LOO posterior    yes
``mdm_elbo``           denoiser         yes
``max_coupling_elbo``  denoiser         no (a valid but loose bound)
``audm_elbo``          AUDM posterior   yes, averaged over the noise tokens
``cross_entropy``      denoiser         not a bound (no time weight)
``masked_cross_entropy`` MDM denoiser   not a bound (MDM, no time weight)
``d3pm_elbo``          LOO posterior    a valid discrete-time bound, tight as T grows
``d3pm_hybrid``        (LOO view)       not a bound (L_vb + lambda CE)
``d3pm_cross_entropy`` denoiser         not a bound
``score_entropy``      concrete score   yes (UDM and MDM; SEDD's DWDSE, docs/maths.md §10)
=====================  ===============  ==================================

The D3PM objectives (``ddlm.losses_d3pm``, docs/maths.md §9) are per integer step t in 1..T and take
``(logp, x0, xt, t, process)``; ``d3pm_vb`` is D3PM's per-step term.

``compute`` trains any network output ("denoiser", "loo" or "score") with any applicable objective
by converting through ``ddlm.conversions`` (and, where the score is involved, the process's
``convert_view``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_alpha, as_rate, check_logp, check_same_shape, check_tokens
from .conversions import _denoiser_to_loo, _loo_to_denoiser, self_evidence
from .losses_d3pm import d3pm_cross_entropy, d3pm_elbo, d3pm_hybrid, d3pm_vb  # noqa: F401  (ddlm.losses.d3pm_vb)
from .score_entropy import score_entropy


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _prepare(logp, x0, xt, alpha, dalpha, xt_high_extra: int = 0, normalise: bool = True):
    check_logp(logp, xt)
    k = logp.shape[-1]
    check_same_shape("x0", x0, "xt", xt)
    check_tokens("x0", x0, k)
    check_tokens("xt", xt, k + xt_high_extra)
    # time weights in at least float32, also for bfloat16 logits (alpha = 0.99 is 0.988 in bfloat16)
    like = torch.empty(0, dtype=torch.promote_types(logp.dtype, torch.float32), device=logp.device)
    a = as_alpha("alpha", alpha, like, xt.shape)
    da = as_rate("dalpha", dalpha, like, xt.shape)
    return (torch.log_softmax(logp, dim=-1) if normalise else logp), a, da


def _gather(logp: Tensor, idx: Tensor) -> Tensor:
    return logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def udm_elbo(logp: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha) -> Tensor:
    """UDM plug-in ELBO (UDLM) with ``logp`` the LOO posterior r_theta.

    l = (beta_t / K) sum_{y != x} [R_th(y) - R(y) - R(y) log(R_th(y) / R(y))], with the true ratio
    R(y) = xbar(y) / xbar(x), xbar(y) = K alpha 1[y = x_0] + 1 - alpha, and R_th the same with r_theta
    in place of the one-hot x_0. Written as sum_y R(y) (e^u - 1 - u), u = log R_th(y) - log R(y), which
    is >= 0 term by term and free of cancellation for small u. Minimised (and tight after
    integration) by the exact LOO.

    Computed by a fused kernel (``_PlugInSum``): R(y) is the same for every y outside {x, x_0}, so
    the sum is one pass over the vocabulary in row chunks, and the gradient is analytic; the loss
    keeps no (..., L, K) intermediate for backward (only the gradient itself is allocated).

    alpha = 1 (no noise; also any alpha that rounds to 1 in the loss's dtype, e.g. 1 - 1e-12 in
    float32). Where x_t = x_0 the integrand is continuous at alpha = 1 and is returned there: its
    limit is (beta_t / K) (1 - r_theta(x)) / r_theta(x), finite (R(y) = 0 and R_theta(y) =
    r_theta(y) / r_theta(x) for y != x). Where x_t != x_0 there is no value to return: under q that
    pair has probability 0 at alpha = 1, and the integrand grows without bound as alpha -> 1 (the
    term of y = x_0 behaves like R log R with R(x_0) = (K alpha + 1 - alpha) / (1 - alpha)), so such
    an input is refused with a ValueError (it used to give NaN). Every alpha < 1 is computed
    accurately, however close to 1 (checked against the formula in 60-digit arithmetic at 1 - 1e-6
    and 1 - 1e-9).
    """
    _, a, da = _prepare(logp, x0, xt, alpha, dalpha, normalise=False)
    return _udm_elbo(logp, x0, xt, a, da)


def _udm_elbo(logits: Tensor, x0: Tensor, xt: Tensor, a: Tensor, da: Tensor, shift: Tensor | None = None) -> Tensor:
    """The plug-in ELBO of r_theta = softmax(logits - shift e_x) (shift: the denoiser -> LOO
    conversion, see ``conversions``; None for a LOO network), alpha/dalpha already checked tensors."""
    k = logits.shape[-1]
    a = torch.broadcast_to(a, xt.shape)
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    if bool(((a.to(out_dtype) >= 1.0) & (xt != x0)).any()):
        raise ValueError(f"alpha is 1 (in {out_dtype}) at a position where xt != x0: that pair has probability 0 "
                         "under q at alpha = 1 and the plug-in ELBO diverges as alpha -> 1, so it has no value; "
                         "give alpha < 1 there (a time t > 0; in float64 if it rounds to 1 in float32)")
    shift = torch.zeros_like(a) if shift is None else torch.broadcast_to(shift, xt.shape)
    flat = logits.reshape(-1, k)
    total = _PlugInSum.apply(flat, xt.reshape(-1), x0.reshape(-1), shift.reshape(-1).to(out_dtype),
                             a.reshape(-1).to(out_dtype))
    beta = -da / a.clamp_min(_tiny(a))
    return (beta * total.reshape(xt.shape).to(beta.dtype) / k).to(out_dtype)


_CHUNK_ELEMENTS = 1 << 21  # rows per chunk = this / K: bounded temporaries whatever the vocabulary


def _plugin_rows(chunk: Tensor, x: Tensor, x0: Tensor, shift: Tensor, a: Tensor):
    """Per-row pieces of the plug-in ELBO for a chunk of rows (logits (n, K), already upcast).

    Returns (logr, log_xbar, rho, log_x, log_x0, delta): log r_theta, log xbar_theta(y) =
    log(K alpha r(y) + 1 - alpha), rho = R(y) for y outside {x, x_0}, log xbar_theta at x and x_0,
    and delta = log R(x_0) when x_0 != x.
    """
    k = chunk.shape[-1]
    rows = torch.arange(chunk.shape[0], device=chunk.device)
    chunk[rows, x] -= shift
    logr = chunk - chunk.logsumexp(-1, keepdim=True)
    c = (1.0 - a).clamp_min(_tiny(a))
    log_n, log_c = torch.log(k * a), torch.log(c)
    log_xbar = torch.logaddexp(log_n.unsqueeze(-1) + logr, log_c.unsqueeze(-1))
    log_x, log_x0 = log_xbar[rows, x], log_xbar[rows, x0]
    same = x == x0
    # true xbar(x) = K alpha + 1 - alpha when x = x_0, else 1 - alpha; rho = (1 - alpha) / xbar(x)
    log_true_x = torch.where(same, torch.logaddexp(log_n, log_c), log_c)
    rho = torch.exp(log_c - log_true_x)
    delta = torch.logaddexp(log_n, log_c) - log_c  # log((K alpha + 1 - alpha) / (1 - alpha))
    return logr, log_xbar, rho, log_x, log_x0, delta


def _r_phi(r: Tensor, u: Tensor, log_ratio_th: Tensor) -> Tensor:
    """R (e^u - 1 - u) with R_th = e^{log_ratio_th}: cancellation-free for small u, and finite where
    R underflows and e^u overflows (the two branches are the same quantity)."""
    return torch.where(u.abs() < 1.0, r * (torch.expm1(u) - u), log_ratio_th.exp() - r - r * u)


def _careful_total(chunk: Tensor, x: Tensor, x0: Tensor, shift: Tensor, a: Tensor) -> Tensor:
    """The plug-in sum of rows in the log domain, term by term (the path for rows whose scalars leave
    the fast kernel's safe range, e.g. alpha = 1; ``chunk`` is an upcast copy)."""
    logr, log_xbar, rho, log_x, log_x0, delta = _plugin_rows(chunk, x, x0, shift, a)
    # y outside {x, x_0}: R = rho, u = log xbar_th(y) - log X - log rho
    log_ratio = log_xbar - log_x.unsqueeze(-1)
    u = log_ratio - torch.log(rho).unsqueeze(-1)
    bulk = _r_phi(rho.unsqueeze(-1), u, log_ratio)
    rows = torch.arange(bulk.shape[0], device=bulk.device)
    bulk[rows, x] = 0.0
    bulk[rows, x0] = 0.0
    total = bulk.sum(-1)
    # y = x_0 != x: R = exp(delta), u = log X0 - log X - delta; when x_0 = x it is the bulk's rho term
    same = x == x0
    r0 = torch.where(same, rho, delta.exp())
    u0 = log_x0 - log_x - torch.where(same, torch.log(rho), delta)
    at_x0 = _r_phi(r0, u0, log_x0 - log_x)
    return total + torch.where(same, torch.zeros_like(at_x0), at_x0)


def _careful_grad(chunk: Tensor, x: Tensor, x0: Tensor, shift: Tensor, a: Tensor) -> Tensor:
    """The gradient of :func:`_careful_total` in the logits (see ``_PlugInSum``)."""
    k = chunk.shape[-1]
    logr, log_xbar, rho, log_x, log_x0, delta = _plugin_rows(chunk, x, x0, shift, a)
    rows = torch.arange(logr.shape[0], device=logr.device)
    n = k * a
    same = x == x0
    r_x0 = torch.where(same, rho, delta.exp())  # R(x_0)
    # sum_{y != x} R(y) = (K - 1) rho, plus R(x_0) - rho when x_0 != x
    sum_r = (k - 1) * rho + torch.where(same, torch.zeros_like(rho), r_x0 - rho)
    big_x = log_x.exp()
    # g(y) = -n R(y) / xbar_th(y), stored in place of log_xbar
    g = torch.exp(-log_xbar).mul_(-(n * rho).unsqueeze(-1))
    g[rows, x0] = torch.where(same, g[rows, x0], -n * r_x0 * torch.exp(-log_x0))
    g[rows, x] = n * (sum_r / big_x - k / big_x**2)
    r = logr.exp_()
    mean_g = (r * g).sum(-1, keepdim=True)
    return r * (g - mean_g)


class _PlugInSum(torch.autograd.Function):
    """sum_{y != x} R(y) (e^{u(y)} - 1 - u(y)) per row, with its analytic gradient in the logits.

    With xbar_th(y) = K alpha r(y) + 1 - alpha, X = xbar_th(x), the sum's derivative in r is
    g(y) = -K alpha R(y) / xbar_th(y) for y != x and g(x) = K alpha (sum_{y != x} R(y) / X - K / X^2),
    up to a term K alpha / X common to every y, which the softmax removes: d/dlogit(j) =
    r(j) (g(j) - sum_y r(y) g(y)). The shift at x is a constant.

    Value and gradient are computed together in the forward pass, chunk by chunk, by
    ``ddlm._plugin_kernel.plugin_rows`` (forward + backward about 1.2x a cross-entropy's at
    K = 50,257, docs/benchmarks.md; rows outside its safe range, such as alpha = 1, go through the
    log-domain :func:`_careful_total` / :func:`_careful_grad`).
    The gradient is kept for backward, which scales it in place by the incoming gradient: the loss
    holds one (rows, K) tensor, the gradient itself, and nothing else of that size. Without a
    gradient to compute (no_grad, evaluation) only the values are made.
    """

    @staticmethod
    def forward(ctx, logits, x, x0, shift, a):
        from ._plugin_kernel import plugin_rows, workspace

        n_rows, k = logits.shape
        step = max(1, min(n_rows, _CHUNK_ELEMENTS // k))
        want = ctx.needs_input_grad[0]
        out = torch.empty(n_rows, dtype=shift.dtype, device=logits.device)
        grad = torch.empty_like(logits) if want else None
        work = workspace(step, k, shift.dtype, logits.device)
        for i in range(0, n_rows, step):
            sl = slice(i, i + step)
            total, ok = plugin_rows(logits[sl], x[sl], x0[sl], shift[sl], a[sl], work,
                                    grad[sl] if want else None)
            out[sl] = total
            if not bool(ok.all()):
                bad = i + torch.nonzero(~ok).squeeze(1)
                args = (logits[bad].to(shift.dtype), x[bad], x0[bad], shift[bad], a[bad])
                out[bad] = _careful_total(*args)
                if want:
                    grad[bad] = _careful_grad(*args).to(grad.dtype)
        if want:
            ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors  # a second backward (retain_graph) fails here: it was scaled in place
        return grad.mul_(grad_out.unsqueeze(-1).to(grad.dtype)), None, None, None, None


def mdm_elbo(logp: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha) -> Tensor:
    """MDM ELBO (MDLM) with ``logp`` the denoiser: l = lambda_t 1[x_t = m] (-log d_theta(x_0)).

    ``xt`` holds ids in [0, K], K being the mask id.
    """
    logd, a, da = _prepare(logp, x0, xt, alpha, dalpha, xt_high_extra=1)
    k = logd.shape[-1]
    lam = -da / (1.0 - a).clamp_min(_tiny(a))
    nll = -_gather(logd, x0)
    masked = xt == k
    return torch.where(masked, lam * nll, torch.zeros_like(nll))


def _one_jump(logd: Tensor, x0: Tensor, xt: Tensor, lam: Tensor) -> Tensor:
    """lambda [1 - d(x) - 1[x_0 != x] (1 + log d(x_0))]: the one-jump (maximal-coupling) integrand."""
    stay = -torch.expm1(_gather(logd, xt))  # 1 - d(x), accurate when d(x) is near 1
    jump = 1.0 + _gather(logd, x0)
    inner = torch.where(x0 != xt, stay - jump, stay).clamp_min(0.0)
    return lam * inner


def max_coupling_elbo(logp: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha) -> Tensor:
    """Maximal-coupling ELBO (UDM, one-jump reverse) with ``logp`` the denoiser.

    l = lambda_t [1 - d_theta(x) - 1[x_0 != x] (1 + log d_theta(x_0))]. Minimised by the denoiser; a
    valid bound but not tight even for the exact denoiser.
    """
    logd, a, da = _prepare(logp, x0, xt, alpha, dalpha)
    lam = -da / (1.0 - a).clamp_min(_tiny(a))
    return _one_jump(logd, x0, xt, torch.broadcast_to(lam, xt.shape))


def audm_elbo(logp: Tensor, x0: Tensor, xt: Tensor, noise: Tensor, alpha, dalpha) -> Tensor:
    """AUDM ELBO with ``logp`` the posterior p_theta(x_0^i | x_t, u).

    l = lambda_t 1[x = u] [1 - p_theta(x) - 1[x_0 != u] (1 + log p_theta(x_0))]; tight for the exact
    posterior after averaging over u.
    """
    logq, a, da = _prepare(logp, x0, xt, alpha, dalpha)
    check_same_shape("noise", noise, "xt", xt)
    check_tokens("noise", noise, logq.shape[-1])
    lam = torch.broadcast_to(-da / (1.0 - a).clamp_min(_tiny(a)), xt.shape)
    active = xt == noise
    # on active positions x = u, so 1[x_0 != u] = 1[x_0 != x]: the one-jump integrand, masked
    return torch.where(active, _one_jump(logq, x0, xt, lam), torch.zeros_like(lam))


def cross_entropy(logp: Tensor, x0: Tensor) -> Tensor:
    """Cross-entropy -log d_theta(x_0^i) on every position, no time weight; ``logp`` is the denoiser."""
    check_logp(logp, x0, name="logp")
    check_tokens("x0", x0, logp.shape[-1])
    return -_gather(torch.log_softmax(logp, dim=-1), x0)


def masked_cross_entropy(logp: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha) -> Tensor:
    """MDM cross-entropy on masked positions only, without the ELBO's time weight (MaskGIT-style):
    l = 1[x_t = m] (-log d_theta(x_0)). Minimised by the MDM denoiser, like ``mdm_elbo`` (which is
    lambda_t times this); not a bound. ``alpha``/``dalpha`` are checked but unused (docs/maths.md §4.5)."""
    logd, _, _ = _prepare(logp, x0, xt, alpha, dalpha, xt_high_extra=1)
    nll = -_gather(logd, x0)
    return torch.where(xt == logd.shape[-1], nll, torch.zeros_like(nll))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x <= 0, accurate on both sides of -log 2."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _loo_cross_entropy(logits: Tensor, x0: Tensor, xt: Tensor, a: Tensor) -> Tensor:
    """-log d(x_0) for the denoiser d implied by LOO logits: log d = log r + delta e_x - log Z with
    Z = 1 - r(x) + r(x) e^delta (``conversions``), so only r(x) and r(x_0) are needed."""
    logr = torch.log_softmax(logits, dim=-1)
    lr_x, lr_x0 = _gather(logr, xt), _gather(logr, x0)
    delta = self_evidence(a, logits.shape[-1]).to(logr.dtype)
    log_z = torch.logaddexp(_log1mexp(lr_x.clamp(max=0.0)), lr_x + delta)
    return log_z - lr_x0 - torch.where(x0 == xt, delta, torch.zeros_like(delta))


#: objective name -> (loss function, the prediction it consumes)
OBJECTIVES = {
    "udm_elbo": (udm_elbo, "loo"),
    "cross_entropy": (cross_entropy, "denoiser"),
    "max_coupling_elbo": (max_coupling_elbo, "denoiser"),
    "mdm_elbo": (mdm_elbo, "denoiser"),
    "audm_elbo": (audm_elbo, "posterior"),
    "masked_cross_entropy": (masked_cross_entropy, "denoiser"),
    # D3PM (discrete time): f(logp, x0, xt, t, process) with integer steps t; called by ``D3PM.loss``
    "d3pm_elbo": (d3pm_elbo, "loo"),
    "d3pm_hybrid": (d3pm_hybrid, "loo"),
    "d3pm_cross_entropy": (d3pm_cross_entropy, "denoiser"),
    "score_entropy": (score_entropy, "score"),
}
_UDM_OUTPUTS = ("denoiser", "loo")


def compute(
    objective: str,
    logits: Tensor,
    *,
    output: str,
    x0: Tensor,
    xt: Tensor,
    alpha,
    dalpha,
    noise: Tensor | None = None,
    process=None,
) -> Tensor:
    """Per-token loss of any (network output, objective) pair, converting the output as needed.

    Args:
        objective: one of ``OBJECTIVES``.
        logits: network output (..., L, K).
        output: what the network predicts: "denoiser", "loo" or "score" (UDM), "denoiser" or "score"
            (MDM), "posterior" (AUDM).
        x0, xt, alpha, dalpha, noise: as for the individual losses.
        process: the forward process; required for the objective "score_entropy" and for the output
            "score" (the score's graph and conversions are the process's).

    For example a LOO network trained with cross-entropy is converted to the denoiser first; a
    denoiser network trained with the plug-in ELBO is converted to the LOO; a score network trained
    with an ELBO of the denoiser or LOO is converted by ``process.convert_view``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    fn, wants = OBJECTIVES[objective]
    if objective.startswith("d3pm_"):
        raise ValueError(f"objective {objective!r} is per integer step (D3PM): call process.loss(..., t=t) or "
                         "the function with (logp, x0, xt, t, process)")
    if wants == "score" or output == "score":
        return _compute_with_score(objective, logits, output, x0, xt, alpha, dalpha, process)
    if objective == "audm_elbo" or output == "posterior":
        if not (objective == "audm_elbo" and output == "posterior"):
            raise ValueError(
                f"output {output!r} cannot be trained with objective {objective!r}: the AUDM "
                "posterior goes with 'audm_elbo' only"
            )
        if noise is None:
            raise ValueError("noise is required for objective 'audm_elbo', got None")
        return fn(logits, x0, xt, noise, alpha, dalpha)
    if objective == "mdm_elbo":
        if output != "denoiser":
            raise ValueError(f"output must be 'denoiser' for objective 'mdm_elbo', got {output!r}")
        return fn(logits, x0, xt, alpha, dalpha)
    if output not in _UDM_OUTPUTS:
        raise ValueError(f"output must be one of {_UDM_OUTPUTS} for {objective!r}, got {output!r}")
    if objective == "udm_elbo":  # fused: a denoiser output is shifted at x_t on the fly, never copied
        check_logp(logits, xt)
        _, a, da = _prepare(logits, x0, xt, alpha, dalpha, normalise=False)
        shift = None if output == "loo" else self_evidence(torch.broadcast_to(a, xt.shape), logits.shape[-1])
        return _udm_elbo(logits, x0, xt, a, da, shift)
    if objective == "cross_entropy" and output == "loo":  # fused: no converted copy of the logits
        check_logp(logits, xt)
        _, a, _ = _prepare(logits, x0, xt, alpha, dalpha, normalise=False)
        return _loo_cross_entropy(logits, x0, xt, torch.broadcast_to(a, xt.shape))
    logp = logits
    if output != wants:
        check_logp(logits, xt)
        check_tokens("xt", xt, logits.shape[-1])
        a = as_alpha("alpha", alpha, logits, xt.shape)
        logp = (_loo_to_denoiser if wants == "denoiser" else _denoiser_to_loo)(logits, xt, a)
    if objective == "cross_entropy":
        return fn(logp, x0)
    return fn(logp, x0, xt, alpha, dalpha)


def _compute_with_score(objective, logits, output, x0, xt, alpha, dalpha, process) -> Tensor:
    """``compute`` when the objective consumes the score or the network outputs it: convert with the
    process's exact view conversion, then apply the objective."""
    fn, wants = OBJECTIVES[objective]
    if process is None:
        raise ValueError(f"process is required for objective {objective!r} with output {output!r} (the score's "
                         "graph and conversions belong to the process), got None")
    have, want = process.view(output), process.view(wants) if wants in process.views else wants
    if have != want:
        logits = process.convert_view(logits, xt, alpha, have, want)
    if objective == "score_entropy":
        return fn(logits, x0, xt, alpha, dalpha, process)
    if objective == "cross_entropy":
        return fn(logits, x0)
    return fn(logits, x0, xt, alpha, dalpha)
