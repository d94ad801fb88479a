"""Sampling: the shared loop (``sample``), the reverse kernels, correctors and remasking schedules."""

from . import (
    d3pm,  # noqa: F401  (registers D3PM's "ancestral" sampler)
    tau_leaping,  # noqa: F401  (registers the "tau_leaping" sampler of uniform diffusion)
)
from .correctors import GibbsCorrector
from .loop import SampleInfo, sample, split_nfe
from .remasking import RemaskingSchedule

__all__ = ["GibbsCorrector", "RemaskingSchedule", "SampleInfo", "sample", "split_nfe"]
