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

Reliability (docs/reliability.md): the run folder is locked for the whole call (``ddlm.runlock``); a
checkpoint is written only at a step boundary, where the model, optimizer, scheduler and EMA all
hold the same step; SIGINT and SIGTERM stop the run at the next boundary with a checkpoint
(``ddlm.stopping``); a NaN or infinite loss, gradient norm or validation bound stops it before the
step is applied and before anything is saved, so no checkpoint ever holds non-finite weights.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch
from torch import Tensor

from . import runlock
from ._io import atomic_write_json
from .bound import (
    ELBO,
    ar_token_losses,
    chars_per_token,
    corrupt,
    in_units,
    stratified_times,
    token_losses,
    validation_bound,
)
from .checkpoint import capture_rng, save_checkpoint, tidy
from .config import TrainConfig, is_autoregressive, saved_config
from .data.conventions import BlockSet
from .data.prepare import blocks_entropy, check_data_state, data_state, describe_data, prepare_data
from .data.tokenizers import tokenizer_from_dict
from .models.diffusion import DiffusionModel
from .models.factory import build_model
from .parallel import Dist, Parallel, finish_distributed, setup_distributed
from .runs import (
    CHECKPOINTS,
    check_finite_weights,
    check_weights,
    checkpoint_name,
    export,
    load,
    prune_checkpoints,
    resume_checkpoint,
    set_latest,
)
from .sampling import sample
from .stopping import Interrupted, NonFiniteError, StopRequests, require_finite, signal_name

#: the public names; ``build_model``, ``load``, ``export``, ``prepare_data``, ``stratified_times`` and the
#: bound's ``ELBO``, ``corrupt``, ``token_losses`` and ``validation_bound`` live in their own modules now
#: and are importable from here for code written before the split
__all__ = ["ELBO", "build_model", "corrupt", "export", "load", "lr_lambda", "prepare_data", "stratified_times",
           "token_losses", "train", "validation_bound"]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of a training step's draws (the same on every rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009)  # as the recorded runs


def lr_lambda(cfg: TrainConfig, minutes_used=None):
    """The learning-rate factor of each step: linear warm-up over ``optim.warmup_steps``, then a cosine
    from 1 to ``optim.min_lr_ratio`` (or constant) whose progress is the fraction of the steps after
    warm-up done, or, with ``max_minutes`` set and ``optim.time_decay``, the larger of that and the
    fraction of the time budget used, so that the decay ends with whichever budget ends the run.

    ``minutes_used``: a callable returning the training minutes recorded after the previous step
    (the run's ``train_minutes``, stored in every checkpoint): the factor of step n is a function of n
    and that recorded number only, so a resumed run computes the very learning rates it would have.
    """
    o = cfg.optim
    timed = minutes_used is not None and o.time_decay and cfg.max_minutes is not None

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.decay == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.max_steps - o.warmup_steps))
        if timed:
            progress = max(progress, min(1.0, minutes_used() / cfg.max_minutes))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


#: config keys a resumed run must share with its checkpoint (the rest, e.g. max_steps, may change)
FIXED_ON_RESUME = ("process", "objective", "schedule", "eps", "t_min", "model", "data", "d3pm", "batch_size", "seed")


def check_resumable(cfg: TrainConfig, saved: dict, path) -> None:
    """Refuse to resume a checkpoint made with a different model, data, process or batch (the first
    differing key is named down to its section's entry, e.g. ``data.corpus``). Keys added since the
    checkpoint was written (e.g. the ``d3pm`` section) take the value ``saved_config`` gives them, so
    older runs stay resumable."""
    current, saved = cfg.to_dict(), saved_config(saved).to_dict()
    for key in FIXED_ON_RESUME:
        now, then = current.get(key), saved.get(key)
        if now != then:
            if isinstance(now, dict) and isinstance(then, dict):
                sub = next(k for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k))
                key, now, then = f"{key}.{sub}", now.get(sub), then.get(sub)
            raise ValueError(
                f"cannot resume from checkpoint {str(path)!r}: config key {key!r} is {now!r} now but "
                f"{then!r} in the checkpoint; use a new run_dir for a different run"
            )


def _apply_optim_config(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig) -> None:
    """Give a resumed optimizer the config's learning rate, betas and weight decay: its saved state
    would otherwise silently bring back the values of the run's first invocation. Unchanged values
    give the very same numbers (the learning rate is recomputed as the scheduler computes it)."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for group, lam in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group.update(lr=o.lr * lam(scheduler.last_epoch), initial_lr=o.lr, betas=(o.beta1, o.beta2),
                     weight_decay=o.weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _batch_indices(num_blocks: int, step: int, global_batch: int, seed: int) -> Tensor:
    """Global batch of block indices for a step: consecutive slices of per-epoch permutations."""
    start = step * global_batch
    out = []
    while len(out) < global_batch:
        epoch, pos = divmod(start + len(out), num_blocks)
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.extend(perm[pos : pos + global_batch - len(out)].tolist())
    return torch.tensor(out)


def train(cfg: TrainConfig, resume: bool | str = True, progress: bool = True, log=print,
          stop_at: int | None = None, clock=time.monotonic) -> dict:
    """Train (or resume) the run described by ``cfg``; returns the final metrics.

    ``resume``: True resumes from the run's latest checkpoint, if any; False refuses a run_dir that
    has checkpoints; "previous" is True, except that a damaged latest checkpoint is moved aside and
    the newest older one that verifies is used (without it, a damaged latest is an error).
    ``stop_at`` ends this invocation (with a checkpoint) after that step, as an interruption would;
    the run's schedule still follows ``cfg.max_steps``.

    Time budget: ``max_minutes`` counts the training minutes of the whole run, across resumptions.
    ``clock`` (seconds) is read once when the loop starts and once per step, right after the
    optimizer's step; rank 0's reading, added to the minutes recorded in the checkpoint resumed from,
    becomes ``train_minutes`` (saved with every checkpoint), which stops the run and drives the
    learning rate of the next step (:func:`lr_lambda`).

    Raises:
        ddlm.runlock.RunInUseError: another training holds ``run_dir``.
        ddlm.stopping.Interrupted: SIGINT or SIGTERM (a KeyboardInterrupt): the run stopped at a step
            boundary with a checkpoint, or at once (a second signal) without one.
        ddlm.stopping.NonFiniteError: the loss, gradient norm or validation bound became NaN or
            infinite; nothing was saved after the last good checkpoint.
        ddlm.checkpoint.CheckpointError: the latest checkpoint is damaged (and ``resume`` is not
            "previous"), or does not fit the config's architecture.
    """
    if resume not in (True, False, "previous"):
        raise ValueError(f"resume must be True, False or 'previous', got {resume!r}")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = auto if cfg.device == "auto" else cfg.device
    ddp = setup_distributed(device)
    if device == "cuda":
        torch.cuda.set_device(ddp.local_rank)
    ckpts = Path(cfg.run_dir) / CHECKPOINTS  # tidied under the lock: a save cut short by a crash is ours to repair
    lock = runlock.acquire_on_rank0(cfg.run_dir, ddp, log, then=lambda: ckpts.is_dir() and tidy(ckpts))
    try:
        with StopRequests() as stop:
            result = _train(cfg, resume, progress, log, stop_at, device, ddp, stop, clock)
        finish_distributed()  # a finished run only: after an error the other ranks may never arrive
        return result
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, resume, progress: bool, log, stop_at, device: str, ddp: Dist, stop: StopRequests,
           clock) -> dict:
    """The body of :func:`train`, run while the folder is locked and signals are requests."""
    run = Path(cfg.run_dir)
    if not resume and any((run / CHECKPOINTS).glob("step_*")):
        raise ValueError(f"run_dir {str(run)!r} already has checkpoints; not resuming would overwrite them: choose "
                         "a new run_dir or remove the old run yourself")
    ckpt = resume_checkpoint(run, previous=resume == "previous", log=log if ddp.main else lambda *_: None)
    if ckpt is not None:
        check_resumable(cfg, ckpt.config, ckpt.path)
        check_data_state(cfg, ckpt.data, ckpt.path)  # a prepared corpus must be the one the checkpoint saw
    tokenizer = tokenizer_from_dict(ckpt.tokenizer) if ckpt else None
    tokenizer, train_blocks, val_blocks = prepare_data(cfg, tokenizer)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id).to(device)
    start = 0
    if ckpt is not None:
        for name, state in (("model", ckpt.model), ("ema", ckpt.ema)):
            if state is not None:
                check_weights(model, state, str(ckpt.path / f"{name}.safetensors"))
                check_finite_weights(state, str(ckpt.path / f"{name}.safetensors"))
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
    # fused AdamW on GPUs (one kernel for every parameter); the reference loop on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                                  fused=device == "cuda")
    if cfg.compile:  # the forward only: parameter names, state dicts and checkpoints stay as they are
        model.forward = torch.compile(model.forward)
    prior_minutes = float((ckpt.metrics or {}).get("train_minutes", 0.0)) if ckpt is not None else 0.0
    metrics = {"train_minutes": prior_minutes}  # the time used so far, as recorded
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, lambda: metrics["train_minutes"]))
    if ckpt is not None:
        par.load_model_state(ema, ckpt.ema)
        par.load_optimizer_state(optimizer, ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        _apply_optim_config(optimizer, scheduler, cfg)
    saved_step = start if ckpt is not None else None  # the step of the run's newest checkpoint

    def last_saved() -> str:
        if saved_step is None:
            return "no checkpoint has been saved yet"
        return f"the last checkpoint, {run / CHECKPOINTS / checkpoint_name(saved_step)}, stands"

    def save(step: int, metrics: dict) -> None:  # every rank calls it (FSDP gathers the state)
        nonlocal saved_step
        bad = not all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
                      for module in (model, ema) for p in module.parameters())
        if par.any(bad):  # never reached while the loss checks hold; never save such weights
            raise NonFiniteError(f"step {step}: the weights hold NaN or infinite values; not saved, "
                                 f"{last_saved()}")
        states = par.model_state(model), par.model_state(ema), par.optimizer_state(optimizer)
        if ddp.main:
            _save(run, cfg, tokenizer, *states, scheduler, step, metrics)
        saved_step = step

    def evaluate(step: int, metrics: dict, averaged) -> None:  # averaged: par.evaluation_ema(), None off rank 0
        if averaged is None:
            return
        nll, se = validation_bound(averaged, val_blocks, micro, cfg.eval_batches, cfg.seed, cfg.t_min)
        require_finite(f"step {step}: the validation bound of the EMA model is not finite",
                       {"validation bound": nll}, f"training diverged; {last_saved()}")
        metrics.update(step=step, val_nll=nll, val_nll_se=se)
        _append(metrics_file, {"step": step, "val_nll": nll, "val_nll_se": se, "unigram_entropy": entropy})
        log(f"step {step}: validation bound {in_units(nll, cpt, se)} (unigram entropy {in_units(entropy, cpt)})")

    entropy = blocks_entropy(train_blocks, tokenizer.vocab_size)
    n_scored = cfg.eval_batches * (cfg.batch_size // ddp.world // cfg.grad_accum)  # what validation scores
    scored = val_blocks[torch.arange(n_scored) % val_blocks.shape[0]]
    cpt = chars_per_token(scored, tokenizer)  # characters per token of those blocks
    metrics.update(unigram_entropy=entropy, chars_per_token=cpt, val_blocks=int(val_blocks.shape[0]),
                   eval_blocks=int(min(len(scored), val_blocks.shape[0])))
    if ddp.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", cfg.to_dict(), indent=2)
        tokenizer.save(run / "tokenizer.json")  # also in every checkpoint; here for a trained BPE's readers
        atomic_write_json(run / "data.json", describe_data(cfg, val_blocks), indent=2)  # what val_nll is measured on
        n_params = sum(p.numel() for p in model.parameters())  # (global sizes under FSDP too)
        mode = f"; {ddp.world} processes ({par.kind.upper()})" if ddp.world > 1 else ""
        log(f"{cfg.process.upper()} run {run}: {n_params / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}, "
            f"{train_blocks.shape[0]} train / {val_blocks.shape[0]} val blocks of {cfg.data.block_size}; "
            f"unigram entropy {in_units(entropy, cpt)}" + mode + (f"; resuming at step {start}" if start else ""))
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
    t0, tokens_seen, wall0 = clock(), 0, time.time()
    told, first = False, 0.0
    step, evaluated, end = start, False, min(cfg.max_steps, stop_at if stop_at is not None else cfg.max_steps)
    diverged = (f"training diverged (optim.lr = {o.lr:g}); stopped before applying this step, nothing after the "
                "last checkpoint was saved; lower optim.lr (or raise optim.warmup_steps) and run again (a resumed run "
                "takes the new values)")

    def stop_requested() -> None:  # at a step boundary: model, optimizer, scheduler and EMA all hold `step`
        if not par.any(stop.signum is not None):
            return
        if saved_step != step and step != start:  # nothing to save before this invocation's first step
            save(step, metrics)
        name = signal_name(stop.signum or signal.SIGTERM)
        raise Interrupted(f"stopped by {name} at step {step}: {last_saved()}; run the same command to resume",
                          stop.signum or signal.SIGTERM, step,
                          None if saved_step is None else run / CHECKPOINTS / checkpoint_name(saved_step))

    if cfg.max_minutes is not None and prior_minutes >= cfg.max_minutes and step < end:
        end = step
        if ddp.main:
            log(f"the time budget max_minutes = {cfg.max_minutes} is spent ({prior_minutes:.2f} minutes of training "
                f"recorded at step {step}); raise max_minutes to train on")
    try:
        stop_requested()
        while step < end:
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
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if not (math.isfinite(total) and math.isfinite(grad_norm)):  # the same on every rank (reduced)
                if ddp.main:
                    _append(metrics_file, {"step": step + 1, "loss": total, "grad_norm": grad_norm,
                                           "stopped": "non-finite loss or gradient norm"})
                require_finite(f"step {step + 1}: the training loss or gradient norm is not finite",
                               {"loss": total, "gradient norm": grad_norm}, f"{diverged}; {last_saved()}")
            # from here to `step += 1` the state is mid-update: signals wait for the boundary
            optimizer.step()
            metrics["train_minutes"] = par.from_main(prior_minutes + (clock() - t0) / 60)  # drives the next LR
            scheduler.step()
            with torch.no_grad():  # EMA with warm-up: early averages do not remember the initialisation
                decay = min(cfg.ema, (1.0 + step) / (10.0 + step))
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1.0 - decay)
            step += 1
            tokens_seen += cfg.batch_size * cfg.data.block_size
            if ddp.main:
                rate = tokens_seen / max(1e-9, time.time() - wall0)
                if step == start + 1:  # the throughput is measured from the end of the first step
                    first = metrics["train_minutes"]
                elif not told and (step == start + 21 or metrics["train_minutes"] - first > 0.25):
                    told = _expect(cfg, step, step - start - 1, metrics["train_minutes"] - first,
                                   metrics["train_minutes"], bar, log)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{rate:.0f}")
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    _append(metrics_file, {"step": step, "loss": total, "lr": scheduler.get_last_lr()[0],
                                           "grad_norm": grad_norm, "tokens_per_s": rate,
                                           "train_minutes": metrics["train_minutes"]})
            stop_requested()
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
            if step % cfg.save_every == 0:
                save(step, metrics)
            if cfg.max_minutes is not None and metrics["train_minutes"] > cfg.max_minutes:  # rank 0's reading
                if ddp.main:
                    log(f"stopping at step {step}: the time budget max_minutes = {cfg.max_minutes} is spent "
                        f"({metrics['train_minutes']:.2f} minutes of training in all)")
                break
    except Interrupted:
        raise
    except KeyboardInterrupt as e:  # raised where the code was (a second signal): the state may be mid-step
        raise Interrupted(f"interrupted at once near step {step} (a second signal, or a KeyboardInterrupt inside "
                          f"a step): nothing more was saved, {last_saved()}; run the same command to resume from it",
                          signal.SIGINT, step) from e
    finally:
        if bar is not None:
            bar.close()
    if not evaluated:  # stopped between evaluations (max_minutes, stop_at) or nothing left to do
        evaluate(step, metrics, par.evaluation_ema())
    if saved_step != step:
        save(step, metrics)
    metrics["step"] = step
    return metrics


def _expect(cfg: TrainConfig, step: int, steps: int, minutes: float, used: float, bar, log) -> bool:
    """Log the throughput measured over the last ``steps`` steps (``minutes``) and what it buys: the
    steps the rest of the time budget allows (``used``: the run's training minutes so far), or when
    max_steps will be reached; the progress bar's total becomes the expected last step."""
    per_minute = steps / max(minutes, 1e-9)
    text = f"throughput {per_minute / 60:.2f} steps/s over the last {steps} steps"
    reach = cfg.max_steps
    if cfg.max_minutes is not None:
        reach = min(cfg.max_steps, step + int(max(0.0, cfg.max_minutes - used) * per_minute))
    if reach < cfg.max_steps:
        decay = cfg.optim.decay == "cosine" and cfg.optim.time_decay
        text += (f": the time budget max_minutes = {cfg.max_minutes:g} allows about {reach} of max_steps = "
                 f"{cfg.max_steps} steps, so it will end the run" + (" (the learning rate decays over it)" if decay
                                                                      else ""))
        if bar is not None:
            bar.total = reach
            bar.refresh()
    else:
        text += f": max_steps = {cfg.max_steps} in about {(cfg.max_steps - step) / per_minute:.1f} more minutes"
    log(text)
    return True


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
    """Append one JSON line; NaN and infinities are written as the strings "nan", "inf", "-inf" (bare
    NaN/Infinity are not JSON)."""
    safe = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(safe, allow_nan=False) + "\n")


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

