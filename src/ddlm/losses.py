"""Training objectives: per-token integrands of the continuous-time ELBO (MATH.md section 4).

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
=====================  ===============  ==================================

``compute`` trains any network output ("denoiser" or "loo") with any applicable objective by
converting through ``ddlm.conversions``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_alpha, as_rate, check_logp, check_same_shape, check_tokens
from .conversions import _denoiser_to_loo, _loo_to_denoiser, self_evidence


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _prepare(logp, x0, xt, alpha, dalpha, xt_high_extra: int = 0):
    check_logp(logp, xt)
    k = logp.shape[-1]
    check_same_shape("x0", x0, "xt", xt)
    check_tokens("x0", x0, k)
    check_tokens("xt", xt, k + xt_high_extra)
    a = as_alpha("alpha", alpha, logp, xt.shape)
    da = as_rate("dalpha", dalpha, logp, xt.shape)
    return torch.log_softmax(logp, dim=-1), a, da


def _gather(logp: Tensor, idx: Tensor) -> Tensor:
    return logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def udm_elbo(logp: Tensor, x0: Tensor, xt: Tensor, alpha, dalpha) -> Tensor:
    """UDM plug-in ELBO (UDLM) with ``logp`` the LOO posterior r_theta.

    l = (beta_t / K) sum_{y != x} [R_th(y) - R(y) - R(y) log(R_th(y) / R(y))], with the true ratio
    R(y) = xbar(y) / xbar(x), xbar(y) = K alpha 1[y = x_0] + 1 - alpha, and R_th the same with r_theta
    in place of the one-hot x_0. Written as R (e^u - 1 - u), u = log R_th - log R, which is >= 0 and
    free of cancellation for small u. Minimised (and tight after integration) by the exact LOO.
    """
    logr, a, da = _prepare(logp, x0, xt, alpha, dalpha)
    k = logr.shape[-1]
    a = torch.broadcast_to(a, xt.shape)
    # log R_th(y) = log xbar_th(y) - log xbar_th(x)
    log_xbar = torch.logaddexp(torch.log(k * a).unsqueeze(-1) + logr, torch.log1p(-a).unsqueeze(-1))
    log_r_th = log_xbar - log_xbar.gather(-1, xt.unsqueeze(-1))
    # log R(y) = delta (1[y = x0] - 1[x = x0]), delta = log(1 + K alpha / (1 - alpha))
    delta = self_evidence(a, k)
    onehot_x0 = torch.nn.functional.one_hot(x0, k).to(logr.dtype)
    log_r = delta.unsqueeze(-1) * (onehot_x0 - (xt == x0).to(logr.dtype).unsqueeze(-1))
    u = log_r_th - log_r
    r = log_r.exp()
    # R (e^u - 1 - u) is cancellation-free for small u; R_th - R - R u stays finite where R
    # underflows to 0 (alpha -> 1) and e^u overflows.
    small = u.abs() < 1.0
    term = torch.where(small, r * (torch.expm1(u) - u), log_r_th.exp() - r - r * u)
    term = term.sum(-1).clamp_min(0.0)
    beta = -da / a.clamp_min(_tiny(a))
    return beta * term / k


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


#: objective name -> (loss function, the prediction it consumes)
OBJECTIVES = {
    "udm_elbo": (udm_elbo, "loo"),
    "cross_entropy": (cross_entropy, "denoiser"),
    "max_coupling_elbo": (max_coupling_elbo, "denoiser"),
    "mdm_elbo": (mdm_elbo, "denoiser"),
    "audm_elbo": (audm_elbo, "posterior"),
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
) -> Tensor:
    """Per-token loss of any (network output, objective) pair, converting the output as needed.

    Args:
        objective: one of ``OBJECTIVES``.
        logits: network output (..., L, K).
        output: what the network predicts: "denoiser" or "loo" (UDM), "denoiser" (MDM),
            "posterior" (AUDM).
        x0, xt, alpha, dalpha, noise: as for the individual losses.

    For example a LOO network trained with cross-entropy is converted to the denoiser first; a
    denoiser network trained with the plug-in ELBO is converted to the LOO.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    fn, wants = OBJECTIVES[objective]
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
    logp = logits
    if output != wants:
        check_logp(logits, xt)
        check_tokens("xt", xt, logits.shape[-1])
        a = as_alpha("alpha", alpha, logits, xt.shape)
        logp = (_loo_to_denoiser if wants == "denoiser" else _denoiser_to_loo)(logits, xt, a)
    if objective == "cross_entropy":
        return fn(logp, x0)
    return fn(logp, x0, xt, alpha, dalpha)
