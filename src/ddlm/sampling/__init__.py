"""Sampling: the shared loop (``sample``), the reverse kernels, correctors and remasking schedules."""

# register D3PM's "ancestral", SEDD's "sedd_euler" and "sedd_tweedie" (MDM and UDM), and UDM's "tau_leaping"
from . import d3pm, sedd, tau_leaping  # noqa: F401
from .correctors import GibbsCorrector
from .loop import SampleInfo, sample, split_nfe
from .remasking import RemaskingSchedule

__all__ = ["GibbsCorrector", "RemaskingSchedule", "SampleInfo", "sample", "split_nfe"]
