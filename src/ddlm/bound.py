"""The per-token ELBO of a batch and its Monte-Carlo estimate on held-out blocks: the bound that
training validates with and that evaluation reports (``ddlm eval``), computed in one place.

For a diffusion model, a batch of clean blocks x0 gets antithetic times stratified over the batch,
t = t_min + (1 - t_min) ((U + j/B) mod 1) (:func:`stratified_times`), is corrupted by the model's
process (:func:`corrupt`) and scored by the process's bound for the model's prediction
(``process.bound_objective(model.prediction)``: the process's ELBO, or the score entropy of a score
network, docs/maths.md §10; :func:`token_losses`); the training loop uses the same functions with the
run's objective. For the autoregressive baseline the
bound is its exact NLL (:func:`ar_token_losses`). Layering: this module sits below both
``ddlm.train`` and ``ddlm.evaluate`` and imports neither.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import is_autoregressive
from .models.diffusion import DiffusionModel
from .processes import State


def __getattr__(attr):  # a derived table (process name -> its ELBO), kept for scripts that read it
    if attr == "ELBO":
        from .processes import REGISTRY

        return {name: cls.objectives[0] for name, cls in REGISTRY.items()}
    raise AttributeError(attr)


def stratified_times(u0: float, indices: Tensor, global_batch: int, t_min: float) -> Tensor:
    """Antithetic times u_j = (U + j / B) mod 1 for global row indices j, mapped to [t_min, 1]."""
    u = torch.remainder(u0 + indices.double() / global_batch, 1.0)
    return t_min + (1.0 - t_min) * u


def corrupt(process, x0: Tensor, t: Tensor, generator):
    """(x_t, noise or None) for clean blocks x0 at times t."""
    return tuple(process.corrupt(x0, t, generator=generator))


def token_losses(model: DiffusionModel, objective: str, x0: Tensor, xt: Tensor, noise, t: Tensor) -> Tensor:
    """Per-token loss (B, L) of ``objective`` for clean blocks x0 corrupted to (xt, noise) at times t;
    the network's output is read from its declaration ``model.prediction``."""
    process = model.process
    alpha = process.alpha(t).unsqueeze(-1)
    dalpha = process.dalpha(t).unsqueeze(-1)
    logits = model(xt, t, noise)
    weights = torch.promote_types(logits.dtype, torch.float32)  # never round alpha to bfloat16
    return process.loss(objective, logits, model.prediction, x0, State(xt, noise), alpha.to(weights),
                        dalpha.to(weights), t=t)


def ar_token_losses(model, x0: Tensor) -> Tensor:
    """Next-token cross-entropy of the autoregressive baseline on blocks x0 (B, L): (B, L) with a
    block-start token, (B, L - 1) without (``ARTransformer.block_losses``); ``model`` may be the
    DDP view of training."""
    inner = model.ddp_net.module if hasattr(model, "ddp_net") else model
    return inner.block_losses(x0, forward=model)


@torch.no_grad()
def validation_bound(model, blocks: Tensor, batch_size: int, num_batches: int, seed: int,
                     t_min: float) -> tuple[float, float]:
    """Monte-Carlo NLL bound in nats/token on held-out blocks (antithetic t), and its standard error
    over batches. For the autoregressive baseline: its exact NLL per predicted token. The blocks and
    the random draws stay on the CPU; each batch is moved to the model's device."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    per_batch = []
    for b in range(num_batches):
        x0 = blocks[torch.arange(b * batch_size, (b + 1) * batch_size) % blocks.shape[0]]
        if is_autoregressive(model):
            per_batch.append(ar_token_losses(model, x0.to(device)).mean().item())
            continue
        t = stratified_times(float(torch.rand((), generator=g, dtype=torch.float64)), torch.arange(len(x0)),
                             len(x0), t_min)
        xt, noise = corrupt(model.process, x0, t, g)
        on = [None if v is None else v.to(device) for v in (x0, xt, noise, t)]
        objective = model.process.bound_objective(model.prediction)
        per_batch.append(token_losses(model, objective, *on).mean().item())
    mean = sum(per_batch) / len(per_batch)
    var = sum((v - mean) ** 2 for v in per_batch) / max(1, len(per_batch) - 1)
    return mean, math.sqrt(var / len(per_batch))
