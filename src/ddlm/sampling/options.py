"""Sampler options: the one place where what ``ddlm.sample`` accepts is checked.

``check_options`` is called by ``ddlm.sample`` and by everything that builds a draw before making it
(``ddlm.evaluate.options``: the command line, frontiers, the probe, the study), so an option is
accepted or refused with the same message everywhere. What applies to a process is read from the
process and its registered kernels, never from tables of process names.
"""

from __future__ import annotations

import math

from ..processes import Process
from .correctors import GibbsCorrector
from .registry import Kernel
from .remasking import RemaskingSchedule


def check_process(process) -> Process:
    if not isinstance(process, Process):
        raise TypeError(f"process must be a ddlm process (e.g. ddlm.UniformDiffusion), got {type(process).__name__}")
    return process


def default_sampler(process, remasking=None) -> str:
    """"ancestral", or the process's remasking sampler (e.g. "remdm") when a remasking schedule is given."""
    if remasking is not None:
        takes = [k.name for k in process.kernels.values() if k.remasking]
        if len(takes) == 1:
            return takes[0]
    return "ancestral"


def check_options(process, *, sampler: str, corrector=None, temperature: float = 1.0,
                  temperature_on: str | None = None, top_p: float = 1.0, remasking=None) -> Kernel:
    """Validate sampler options for ``process``; return the sampler's ``Kernel``.

    Raises:
        ValueError / TypeError: naming the option, the value and what was expected.
    """
    check_process(process)
    if sampler not in process.kernels:
        raise ValueError(f"sampler must be one of {sorted(process.kernels)} for {process.label}, got {sampler!r}")
    kernel = process.kernels[sampler]
    if corrector is not None:
        if not (hasattr(corrector, "correct") and hasattr(corrector, "sweeps") and hasattr(corrector, "check")):
            raise TypeError(f"corrector must be a ddlm.GibbsCorrector (or a corrector step object) or None, "
                            f"got {type(corrector).__name__}")
        corrector.check(process)
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and temperature > 0
                                             and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if temperature_on is not None and temperature_on not in process.temperature_views:
        raise ValueError(f"temperature_on must be one of {process.temperature_views} for {process.label}, "
                         f"got {temperature_on!r}")
    if isinstance(top_p, bool) or not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if kernel.consumes == "score" and top_p != 1.0:
        raise ValueError(f"top_p must be 1 for sampler {sampler!r}, which consumes the concrete score (not a "
                         f"distribution to truncate), got {top_p!r}")
    if kernel.greedy and (temperature != 1.0 or top_p != 1.0):
        raise ValueError(f"sampler {sampler!r} is greedy (argmax): temperature and top_p must be 1")
    if remasking is not None:
        if not isinstance(remasking, RemaskingSchedule):
            raise TypeError(f"remasking must be a ddlm.RemaskingSchedule or None, got {type(remasking).__name__}")
        if not kernel.remasking:
            from ..processes import REGISTRY

            users = [k.name for k in process.kernels.values() if k.remasking]
            if users:
                raise ValueError(f"remasking is used by sampler {users[0]!r} only, got sampler {sampler!r}")
            others = [f"{c.name.upper()} sampler {k.name!r}" for c in REGISTRY.values() for k in c.kernels.values()
                      if k.remasking]
            raise ValueError(f"remasking applies to no {process.label} sampler (it is used by "
                             f"{', '.join(others) or 'no sampler'}), got sampler {sampler!r}")
    return kernel


__all__ = ["GibbsCorrector", "RemaskingSchedule", "check_options", "check_process", "default_sampler"]
