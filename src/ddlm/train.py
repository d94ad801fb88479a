"""Training: one plain PyTorch loop for every process and objective (MATH.md sections 1 and 4).

Read top to bottom: set up (distributed, data, model, optimiser), resume if a checkpoint exists,
then for each step draw antithetic times stratified over the global batch, corrupt, predict, take
the per-token loss through ``ddlm.losses.compute``, step, update the EMA; periodically validate,
sample, checkpoint. Runs on a CPU as is and under ``torchrun --nproc-per-node N`` (gloo on CPU,
nccl on GPU), with DDP or FSDP (``ddlm.parallel``). Every random draw of a step comes from a
generator seeded by (seed, step, rank), so a resumed run continues exactly as an uninterrupted one.

What the loop uses lives below it: the run's data (``ddlm.data.prepare``), its model
(``ddlm.models.factory``), the per-token losses and the validation bound (``ddlm.bound``, shared with
``ddlm eval``), the run folder and its checkpoints (``ddlm.runs``, ``ddlm.checkpoint``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from ._io import atomic_write_json
from .bound import ELBO, ar_token_losses, corrupt, stratified_times, token_losses, validation_bound
from .checkpoint import capture_rng, load_checkpoint, save_checkpoint
from .config import TrainConfig, is_autoregressive
from .data.conventions import BlockSet
from .data.prepare import blocks_entropy, check_data_state, data_state, describe_data, prepare_data
from .data.tokenizers import tokenizer_from_dict
from .models.diffusion import DiffusionModel
from .models.factory import build_model
from .parallel import Parallel, setup_distributed
from .runs import checkpoint_name, export, latest_checkpoint, load, prune_checkpoints, set_latest
from .sampling import sample

#: the public names; ``build_model``, ``load``, ``export``, ``prepare_data``, ``stratified_times`` and the
#: bound's ``ELBO``, ``corrupt``, ``token_losses`` and ``validation_bound`` live in their own modules now
#: and are importable from here for code written before the split
__all__ = ["ELBO", "build_model", "corrupt", "export", "load", "lr_lambda", "prepare_data", "stratified_times",
           "token_losses", "train", "validation_bound"]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of a training step's draws (the same on every rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009)  # as the recorded runs


def lr_lambda(cfg: TrainConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.decay == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.max_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


#: config keys a resumed run must share with its checkpoint (the rest, e.g. max_steps, may change)
FIXED_ON_RESUME = ("process", "objective", "schedule", "eps", "t_min", "model", "data", "batch_size", "seed")


def check_resumable(cfg: TrainConfig, saved: dict, path) -> None:
    """Refuse to resume a checkpoint made with a different model, data, process or batch."""
    current = cfg.to_dict()
    for key in FIXED_ON_RESUME:
        if current.get(key) != saved.get(key):
            raise ValueError(
                f"cannot resume from checkpoint {str(path)!r}: config key {key!r} is {current.get(key)!r} now but "
                f"{saved.get(key)!r} in the checkpoint; use a new run_dir for a different run"
            )


def _batch_indices(num_blocks: int, step: int, global_batch: int, seed: int) -> Tensor:
    """Global batch of block indices for a step: consecutive slices of per-epoch permutations."""
    start = step * global_batch
    out = []
    while len(out) < global_batch:
        epoch, pos = divmod(start + len(out), num_blocks)
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.extend(perm[pos : pos + global_batch - len(out)].tolist())
    return torch.tensor(out)


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True, log=print, stop_at: int | None = None) -> dict:
    """Train (or resume) the run described by ``cfg``; returns the final metrics.

    ``stop_at`` ends this invocation (with a checkpoint) after that step, as an interruption would;
    the run's schedule still follows ``cfg.max_steps``.
    """
    if cfg.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = cfg.device
    ddp = setup_distributed(device)
    if device == "cuda":
        torch.cuda.set_device(ddp.local_rank)
    run = Path(cfg.run_dir)
    ckpt_path = latest_checkpoint(run)
    if not resume and ckpt_path is not None:
        raise ValueError(f"run_dir {str(run)!r} already has checkpoints (latest {ckpt_path.name}); not resuming "
                         "would overwrite them: choose a new run_dir or remove the old run yourself")
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        check_resumable(cfg, ckpt.config, ckpt_path)
        check_data_state(cfg, ckpt.data, ckpt_path)  # a prepared corpus must be the one the checkpoint saw
    tokenizer = tokenizer_from_dict(ckpt.tokenizer) if ckpt else None
    tokenizer, train_blocks, val_blocks = prepare_data(cfg, tokenizer)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id).to(device)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        start = ckpt.step
    if cfg.parallel == "fsdp" and ddp.world > 1:  # sharded as soon as it exists: no process holds it whole
        with torch.device("meta"):
            ema = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id)
    else:
        ema = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id).to(device)
        ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    # FSDP shards the weights in place, so the optimizer is made after wrapping
    par = Parallel(cfg.parallel, ddp, model, ema, make_eval_copy=lambda: build_model(
        cfg, tokenizer.vocab_size, tokenizer.bos_id).to(device).requires_grad_(False))
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if ckpt is not None:
        par.load_model_state(ema, ckpt.ema)
        par.load_optimizer_state(optimizer, ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)

    def save(step: int, metrics: dict) -> None:  # every rank calls it (FSDP gathers the state)
        states = par.model_state(model), par.model_state(ema), par.optimizer_state(optimizer)
        if ddp.main:
            _save(run, cfg, tokenizer, *states, scheduler, step, metrics)

    def evaluate(step: int, metrics: dict, averaged) -> None:  # averaged: par.evaluation_ema(), None off rank 0
        if averaged is None:
            return
        nll, se = validation_bound(averaged, val_blocks, micro, cfg.eval_batches, cfg.seed, cfg.t_min)
        metrics.update(step=step, val_nll=nll, val_nll_se=se)
        _append(metrics_file, {"step": step, "val_nll": nll, "val_nll_se": se, "unigram_entropy": entropy})
        log(f"step {step}: validation bound {nll:.4f} +- {se:.4f} nats/token (unigram entropy {entropy:.4f})")

    entropy = blocks_entropy(train_blocks, tokenizer.vocab_size)
    if ddp.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", cfg.to_dict(), indent=2)
        atomic_write_json(run / "data.json", describe_data(cfg, val_blocks), indent=2)  # what val_nll is measured on
        n_params = sum(p.numel() for p in model.parameters())  # (global sizes under FSDP too)
        mode = f"; {ddp.world} processes ({par.kind.upper()})" if ddp.world > 1 else ""
        log(f"{cfg.process.upper()} run {run}: {n_params / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}, "
            f"{train_blocks.shape[0]} train / {val_blocks.shape[0]} val blocks of {cfg.data.block_size}; "
            f"unigram entropy {entropy:.4f} nats/token" + mode + (f"; resuming at step {start}" if start else ""))
    per_rank = cfg.batch_size // ddp.world
    micro = per_rank // cfg.grad_accum
    if micro < 1 or cfg.batch_size % (ddp.world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of processes x grad_accum = "
                         f"{ddp.world} x {cfg.grad_accum}")
    objective = cfg.resolved_objective
    metrics_file = run / "metrics.jsonl"
    bar = None
    if progress and ddp.main:
        import sys

        from tqdm.auto import tqdm

        # redraw at most every 30 s when the output is a log file rather than a terminal
        bar = tqdm(total=cfg.max_steps, initial=start, desc="training", unit="step",
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
    t0, tokens_seen, metrics = time.time(), 0, {"unigram_entropy": entropy}
    prior_minutes = float((ckpt.metrics or {}).get("train_minutes", 0.0)) if ckpt is not None else 0.0
    step, evaluated = start, False
    try:
        while step < min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps):
            # the whole global batch is drawn identically on every rank (blocks, times, corruption), so
            # the run does not depend on the number of processes or accumulation steps
            g = step_generator(cfg.seed, step)
            torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + ddp.rank)  # dropout, if any
            u0 = float(torch.rand((), generator=g, dtype=torch.float64))
            if isinstance(train_blocks, BlockSet):  # a prepared corpus: read from its shards, Feistel-shuffled order
                x0_all = train_blocks.batch(step, cfg.batch_size, cfg.seed)
            else:
                x0_all = train_blocks[_batch_indices(train_blocks.shape[0], step, cfg.batch_size, cfg.seed)]
            t_all = stratified_times(u0, torch.arange(cfg.batch_size), cfg.batch_size, cfg.t_min)
            ar = is_autoregressive(cfg)
            xt_all, noise_all = (x0_all, None) if ar else corrupt(model.process, x0_all, t_all, g)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            net = par.forward_module()
            for m in range(cfg.grad_accum):
                rows = ddp.rank * per_rank + m * micro + torch.arange(micro)
                x0, xt, t = x0_all[rows].to(device), xt_all[rows].to(device), t_all[rows].to(device)
                noise = None if noise_all is None else noise_all[rows].to(device)
                with par.sync_gradients(last=m == cfg.grad_accum - 1):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                        if ar:
                            loss = ar_token_losses(net, x0).mean()
                        else:
                            loss = token_losses(net, objective, x0, xt, noise, t).mean()
                    (loss / cfg.grad_accum).backward()
                total += loss.item() / cfg.grad_accum
            total = par.mean(total)  # the global mean loss
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # EMA with warm-up: early averages do not remember the initialisation
                decay = min(cfg.ema, (1.0 + step) / (10.0 + step))
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=False):
                    pe.lerp_(pm, 1.0 - decay)
            step += 1
            tokens_seen += cfg.batch_size * cfg.data.block_size
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if ddp.main:
                rate = tokens_seen / max(1e-9, time.time() - t0)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{rate:.0f}")
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    _append(metrics_file, {"step": step, "loss": total, "lr": scheduler.get_last_lr()[0],
                                           "grad_norm": grad_norm, "tokens_per_s": rate})
            evaluated = step % cfg.eval_every == 0 or step == cfg.max_steps
            sampled = (cfg.sample_every and step % cfg.sample_every == 0) or step == cfg.max_steps
            # the EMA as a plain module on rank 0: under FSDP one gather serves both
            averaged = par.evaluation_ema() if evaluated or sampled else None
            if evaluated:
                evaluate(step, metrics, averaged)
            if sampled and averaged is not None:
                texts = decoded_samples(averaged, tokenizer, cfg, step)
                _append(run / "samples.jsonl", {"step": step, "nfe": cfg.sample_nfe, "samples": texts})
                for text in texts:
                    log(f"sample at step {step}: {text[:200]!r}")
            metrics["train_minutes"] = prior_minutes + (time.time() - t0) / 60
            if step % cfg.save_every == 0:
                save(step, metrics)
            if cfg.max_minutes is not None and par.agree((time.time() - t0) / 60 > cfg.max_minutes):
                if ddp.main:
                    log(f"stopping at step {step}: max_minutes = {cfg.max_minutes} reached")
                break
    except KeyboardInterrupt:
        if par.kind == "fsdp":  # gathering the shards needs every rank, which may be anywhere now
            if ddp.main:
                log(f"interrupted at step {step}: under FSDP no checkpoint is written now; the last periodic "
                    "checkpoint stands")
        elif ddp.main:
            log(f"interrupted at step {step}: saving a checkpoint")
            _save(run, cfg, tokenizer, model.state_dict(), ema.state_dict(), optimizer.state_dict(), scheduler,
                  step, metrics)
        raise
    finally:
        if bar is not None:
            bar.close()
    if not evaluated:  # stopped between evaluations (max_minutes, stop_at) or nothing left to do
        evaluate(step, metrics, par.evaluation_ema())
    save(step, metrics)
    metrics["step"] = step
    return metrics


@torch.no_grad()
def decoded_samples(model: DiffusionModel, tokenizer, cfg: TrainConfig, step: int) -> list[str]:
    """A few samples from the (EMA) model with the process's ancestral sampler, decoded."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(cfg.seed + step)
    if is_autoregressive(model):
        prefix = torch.full((cfg.num_samples, 1), tokenizer.bos_id, dtype=torch.long, device=device)
        x = model.eval().generate(prefix, model.config.max_len, generator=g)  # BOS + a block
        return [tokenizer.decode(row.tolist()) for row in x.cpu()]
    x = sample(model.eval(), model.process, cfg.num_samples, cfg.data.block_size, cfg.sample_nfe,
               prediction=model.prediction, generator=g, device=device)
    return [tokenizer.decode(row.tolist()) for row in x.cpu()]


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _save(run: Path, cfg, tokenizer, model: dict, ema: dict, optimizer: dict, scheduler, step, metrics) -> None:
    """Write the checkpoint of ``step`` from full state dicts (of the model, EMA and optimizer)."""
    path = run / "checkpoints" / checkpoint_name(step)
    save_checkpoint(path, step=step, config=cfg.to_dict(), tokenizer=tokenizer.to_dict(),
                    model=model, ema=ema, optimizer=optimizer,
                    scheduler=scheduler.state_dict(), rng=capture_rng(),
                    data={"step": step, "seed": cfg.seed, **data_state(cfg)},
                    metrics=metrics)
    set_latest(run, path)
    prune_checkpoints(run, cfg.keep_checkpoints)

