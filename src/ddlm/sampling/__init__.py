"""Sampling: the shared loop (``sample``), the reverse kernels, correctors and remasking schedules."""

from .correctors import GibbsCorrector
from .loop import SampleInfo, sample, split_nfe
from .remasking import RemaskingSchedule

__all__ = ["GibbsCorrector", "RemaskingSchedule", "SampleInfo", "sample", "split_nfe"]
