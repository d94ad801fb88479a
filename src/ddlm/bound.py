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


# ---- units and the lines that report a bound -------------------------------------------------------

def chars_per_token(blocks: Tensor, tokenizer) -> float:
    """Characters of decoded text per token of ``blocks`` (BOS/EOS decode to nothing): the factor
    between a bound in nats/token and in nats/char."""
    rows = blocks.tolist()
    chars = sum(len(tokenizer.decode(row)) for row in rows)
    return chars / max(1, sum(len(row) for row in rows))


def in_units(nats_per_token: float, chars_per_token: float | None = None, se: float | None = None) -> str:
    """'2.4190 +- 0.0380 nats/token = 2.4191 nats/char = 3.4901 bits/char' (bits/token without
    ``chars_per_token``)."""
    ln2 = math.log(2.0)
    pm = f" +- {se:.4f}" if se is not None else ""
    text = f"{nats_per_token:.4f}{pm} nats/token"
    if chars_per_token:
        per_char = nats_per_token / chars_per_token
        return text + f" = {per_char:.4f} nats/char = {per_char / ln2:.4f} bits/char"
    return text + f" = {nats_per_token / ln2:.4f} bits/token"


def final_bound_line(metrics: dict, cfg) -> str:
    """The line training ends with: the validation bound next to the unigram entropy in nats per token
    and per character (and bits), what it was measured on, and that ``ddlm eval`` gives the full bound."""
    cpt = metrics.get("chars_per_token")
    minutes = metrics.get("train_minutes")
    head = f"finished at step {metrics['step']}" + (f" ({minutes:.1f} minutes of training)" if minutes else "")
    entropy = f"unigram entropy of the training split {in_units(metrics['unigram_entropy'], cpt)}"
    if "val_nll" not in metrics:
        return f"{head}; {entropy}"
    what = "exact NLL" if is_autoregressive(cfg) else "validation bound"
    blocks = metrics.get("eval_blocks")
    on = ""
    if blocks:
        n = metrics["val_blocks"]
        on = (f" on {blocks} of the {n}" if blocks < n else f" on all {n}") + \
            f" validation blocks of {cfg.data.block_size} tokens"
    caveat = "" if is_autoregressive(cfg) else "heavy-tailed: its SE understates its noise; "
    return (f"{head}: {what} {in_units(metrics['val_nll'], cpt, metrics.get('val_nll_se'))}, an estimate from "
            f"{cfg.eval_batches} batches{on} ({caveat}the bound over every validation block: "
            f"ddlm eval {cfg.run_dir} --passes 4); {entropy}")
