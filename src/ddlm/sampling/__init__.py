"""Sampling: the shared loop (``sample``), the reverse kernels, correctors and remasking schedules."""

# registers SEDD's "sedd_euler" and "sedd_tweedie" samplers of MDM and UDM, and "tau_leaping" of UDM
from . import sedd, tau_leaping  # noqa: F401
from .correctors import GibbsCorrector
from .loop import SampleInfo, sample, split_nfe
from .remasking import RemaskingSchedule

__all__ = ["GibbsCorrector", "RemaskingSchedule", "SampleInfo", "sample", "split_nfe"]
