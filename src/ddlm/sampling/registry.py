"""The kernel registry: every sampler is a function registered on the process it samples.

A registered kernel has one signature for every process and sampler::

    fn(state: State, pred: Prediction, step: Step, generator) -> State

``pred`` is the network's prediction in the view the kernel declares it consumes (``consumes``:
"denoiser" or "loo", a lazy ``Prediction``; or "score", a ``Score``, the concrete score of SEDD's
kernels; the loop converts, tempers and filters it first), ``step`` carries the times, alphas, the
positions free to change (not fixed by a prompt), the remasking probability of the step and the
process being sampled. ``ddlm.sample``, the command line, frontiers and the probe list samplers from
this registry, so registering a kernel is all it takes to make it available everywhere
(docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

#: the views a kernel may consume
CONSUMES = ("denoiser", "loo", "score")


@dataclass(frozen=True)
class Step:
    """One reverse step t -> s < t of the sampling loop."""

    t: float  # grid time of the step's start
    alpha_t: float
    alpha_s: float
    free: Tensor  # (B, L) bool: positions the kernel may change (False where a prompt fixes the token)
    sigma: float = 0.0  # remasking probability of the step (kernels that take a remasking schedule)
    process: object = None  # the process being sampled (kernels that need its tables, e.g. D3PM's)


@dataclass(frozen=True)
class Kernel:
    """A registered reverse kernel."""

    name: str
    fn: Callable
    consumes: str  # "denoiser", "loo" or "score"
    greedy: bool = False  # deterministic argmax: temperature and top-p do not apply
    remasking: bool = False  # takes a ``RemaskingSchedule`` (a default one when none is given)
    summary: str = ""


def register_kernel(process_cls, name: str, *, consumes: str, greedy: bool = False, remasking: bool = False):
    """Decorator: register ``fn`` as sampler ``name`` of ``process_cls`` (a ``Process`` subclass)."""
    if consumes not in CONSUMES:
        raise ValueError(f"consumes must be one of {CONSUMES}, got {consumes!r}")

    def deco(fn):
        if name in process_cls.kernels:
            raise ValueError(f"sampler {name!r} is already registered for {process_cls.__name__}")
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        process_cls.kernels[name] = Kernel(name, fn, consumes, greedy, remasking, summary)
        return fn

    return deco


def samplers(process) -> tuple[str, ...]:
    """Sampler names of a process (instance or class), sorted."""
    return tuple(sorted(process.kernels))


def all_samplers() -> tuple[str, ...]:
    """Every sampler name of every registered process, sorted."""
    from ..processes import REGISTRY

    return tuple(sorted({name for cls in REGISTRY.values() for name in cls.kernels}))
