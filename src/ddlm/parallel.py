"""Multi-process training under ``torchrun``: DDP or FSDP behind one small interface.

``parallel: ddp`` (the default) replicates the model on every process and averages gradients;
``parallel: fsdp`` shards parameters, gradients, optimizer state and the EMA over the processes
(torch's ``fully_shard``, one unit per transformer block plus the root), which is what lets a model
whose weights and AdamW state do not fit on one device train at all. Both average gradients over the
global batch, so a run gives the same parameters (to float tolerance) under one process, DDP or FSDP,
and checkpoints are written in one format (full, unsharded tensors): a run saved under FSDP resumes
under DDP or on one process and the other way round.

Under FSDP every collective (gathering the EMA to evaluate, the state to checkpoint) is made by all
ranks; rank 0 alone writes files and evaluates, on an unsharded copy of the EMA.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

KINDS = ("ddp", "fsdp")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def finish_distributed() -> None:
    """End a torchrun run cleanly: wait for every rank, then tear the process group down. Without it,
    a rank can exit (closing rank 0's rendezvous store) while another is still shutting gloo down,
    which aborts that rank ("terminate called without an active exception") after a finished run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _shard_units(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a DiT or AR trunk: FSDP's units (one all-gather each)."""
    from .models._layers import Block

    return [m for m in module.modules() if isinstance(m, Block)]


class Parallel:
    """The training model as the loop sees it, wrapped for DDP or sharded for FSDP.

    Args:
        kind: "ddp" or "fsdp" (with one process both mean no wrapping at all).
        d: the process group's ranks (:func:`setup_distributed`).
        model: the trained model (a DiffusionModel or ARTransformer), already holding its weights.
        ema: its exponential moving average (same architecture), sharded like ``model`` under FSDP;
            under FSDP it may be built on the meta device, and then starts as a copy of ``model``'s
            shards (no process ever holds a full EMA).
        make_eval_copy: under FSDP, makes (on rank 0) an unsharded model of the same architecture that
            rank 0 evaluates and samples with (the EMA gathered into it); unused otherwise.
    """

    def __init__(self, kind: str, d: Dist, model: nn.Module, ema: nn.Module, make_eval_copy=None):
        if kind not in KINDS:
            raise ValueError(f"parallel must be one of {KINDS}, got {kind!r}")
        self.d, self.model, self.ema = d, model, ema
        self.kind = kind if d.world > 1 else "none"
        self.net: nn.Module = model
        if self.kind == "ddp":
            self.net = torch.nn.parallel.DistributedDataParallel(model)
        elif self.kind == "fsdp":
            if make_eval_copy is None:
                raise ValueError("parallel 'fsdp' needs make_eval_copy, to build the unsharded model rank 0 "
                                 "evaluates the EMA with")
            from torch.distributed.fsdp import fully_shard

            for m in (model, ema):
                for unit in _shard_units(m):
                    fully_shard(unit)
                fully_shard(m)
            if any(p.is_meta for p in ema.parameters()):  # an EMA built on the meta device: never unsharded
                ema.to_empty(device=_device(model))
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.to_local().copy_(pm.to_local())
            self.eval_copy = make_eval_copy() if d.main else None

    # -- the forward pass and gradient synchronisation -------------------------------------------
    def forward_module(self) -> nn.Module:
        """What the loss calls: the DDP wrapper (its forward syncs gradients) with the model's
        ``process`` and ``output`` attributes, or the (sharded) model itself."""
        return _DDPView(self.net, self.model) if self.kind == "ddp" else self.model

    def sync_gradients(self, last: bool):
        """Context for one micro-batch of gradient accumulation: only the last one communicates."""
        if self.kind == "ddp" and not last:
            return self.net.no_sync()
        if self.kind == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision on every rank (e.g. a wall-time budget, which ranks measure differently)."""
        if self.d.world == 1:
            return flag
        buf = torch.tensor([1.0 if flag else 0.0], device=_device(self.model))
        dist.broadcast(buf, 0)
        return bool(buf.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank, on every rank (a collective: e.g. a signal that
        reached some ranks first, so that all stop at the same step)."""
        if self.d.world == 1:
            return flag
        buf = torch.tensor([1.0 if flag else 0.0], device=_device(self.model))
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return bool(buf.item())

    def from_main(self, value: float) -> float:
        """Rank 0's number on every rank, exactly (float64): e.g. the training time, which drives the
        learning rate and must be the same on every replica."""
        if self.d.world == 1:
            return value
        buf = torch.tensor([value], dtype=torch.float64, device=_device(self.model))
        dist.broadcast(buf, 0)
        return buf.item()

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks."""
        if self.d.world == 1:
            return value
        buf = torch.tensor([value], device=_device(self.model))
        dist.all_reduce(buf)
        return buf.item() / self.d.world

    # -- full (unsharded) state, for checkpoints and evaluation -----------------------------------
    def model_state(self, module: nn.Module) -> dict | None:
        """``module``'s full state dict on rank 0 (a collective under FSDP: call it on every rank),
        None on the other ranks."""
        if self.kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return state if self.d.main else None
        return module.state_dict() if self.d.main else None

    def load_model_state(self, module: nn.Module, state: dict) -> None:
        """Load a full state dict (as :meth:`model_state` returns) into ``module`` (on every rank)."""
        if self.kind != "fsdp":
            module.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The optimizer's full state on rank 0 in ``optimizer.state_dict()``'s own format
        (parameters numbered in ``model.parameters()`` order), None elsewhere; collective under FSDP."""
        if self.kind != "fsdp":
            return optimizer.state_dict() if self.d.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.d.main:
            return None
        index = {name: i for i, (name, _) in enumerate(self.model.named_parameters())}
        return {"state": {index[name]: value for name, value in full["state"].items()},
                "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                                 for group in full["param_groups"]]}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a state saved by :meth:`optimizer_state` (on every rank)."""
        if self.kind != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = [name for name, _ in self.model.named_parameters()]
        if len(state["state"]) > len(names) or any(not 0 <= int(i) < len(names) for i in state["state"]):
            raise ValueError(f"optimizer state has parameters {sorted(state['state'])}, expected indices below "
                             f"{len(names)} (the model's parameters)")
        by_name = {"state": {names[int(i)]: value for i, value in state["state"].items()},
                   "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                                    for group in state["param_groups"]]}
        set_optimizer_state_dict(self.model, optimizer, optim_state_dict=by_name,
                                 options=StateDictOptions(full_state_dict=True))

    def evaluation_ema(self) -> nn.Module | None:
        """The EMA as an ordinary module on rank 0 (gathered into ``eval_copy`` under FSDP, a
        collective), None on the other ranks."""
        if self.kind != "fsdp":
            return self.ema if self.d.main else None
        state = self.model_state(self.ema)
        if not self.d.main:
            return None
        self.eval_copy.load_state_dict(state)
        return self.eval_copy


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters())
    return p.device if not hasattr(p, "to_local") else p.to_local().device


class _DDPView(nn.Module):
    """Calls the DDP wrapper (for gradient sync) while exposing the inner model's process and its
    declared prediction."""

    def __init__(self, ddp_net, inner: nn.Module):
        super().__init__()
        self.ddp_net = ddp_net
        self.process, self.output = getattr(inner, "process", None), getattr(inner, "output", None)
        self.prediction = getattr(inner, "prediction", None)

    def forward(self, *args, **kwargs):
        return self.ddp_net(*args, **kwargs)
