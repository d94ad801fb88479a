"""D3PM's reverse kernel (docs/maths.md §9): the x0-parameterised step from step n_t to any n_s < n_t,
skipping through Qbar_{n_s -> n_t} = Q_{n_s+1} ... Q_{n_t}.

    p(x_s = j | x_t)  propto  Qbar_{s->t}[j, x_t] sum_x~ p~(x~) Qbar_s[x~, j]

with p~ the LOO view (exact per-position reverse marginal for the exact LOO). The loop's grid times
map to steps through the process (``D3PM.step_of_alpha`` of the step's alphas, which are the
process's step codes; the last alpha is 1 = alpha_0). For uniform Q this is exactly the UDM plug-in
bridge at alpha = alphabar, for absorbing Q the MDLM unmasking step; dense Q draws from the formula.
"""

from __future__ import annotations

import torch

from ..processes import D3PM, State
from ..processes.d3pm_transitions import categorical
from .kernels import as_prediction, mdm_ancestral, udm_bridge
from .registry import Step, register_kernel


def d3pm_step(process: D3PM, x, pred, n_t: int, n_s: int, generator):
    """One reverse step n_t -> n_s (<= n_t) of the x0-parameterised kernel; ``pred`` is p~ (LOO view)."""
    if n_s == n_t:
        return x
    fam = process.family
    a = fam.log_abar.exp() if fam.kind != "dense" else None
    if fam.kind == "uniform":
        return udm_bridge(x, pred, float(a[n_t]), float(a[n_s]), generator)
    if fam.kind == "absorbing":
        return mdm_ancestral(x, pred, float(a[n_t]), float(a[n_s]), generator, fam.mask_id)
    pred = as_prediction(pred, x)
    flat = x.reshape(-1)
    logp = pred.log_probs().reshape(-1, pred.k).double()
    s = torch.full_like(flat, n_s)
    logw = fam.log_column(flat, s, torch.full_like(flat, n_t)) + fam.log_predicted(logp, s)
    return categorical(logw, generator).reshape(x.shape)


@register_kernel(D3PM, "ancestral", consumes="loo")
def _d3pm_ancestral(state: State, pred, step: Step, generator) -> State:
    """D3PM x0-parameterisation fed the LOO, from step n(t) to the next grid step (products of Q)."""
    process = step.process
    n_t = int(process.step_of_alpha(step.alpha_t))
    n_s = int(process.step_of_alpha(step.alpha_s))
    return State(d3pm_step(process, state.xt, pred, n_t, n_s, generator))
