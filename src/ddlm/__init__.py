"""ddlm: discrete diffusion language models (masked, uniform, absorbing-uniform)."""

from . import conversions, exact, losses, processes, schedules
from .processes import AbsorbingUniformDiffusion, AUDMState, MaskedDiffusion, UniformDiffusion
from .sampling import GibbsCorrector, RemaskingSchedule, SampleInfo, sample
from .schedules import CosineSchedule, LinearSchedule

__version__ = "0.1.0"

__all__ = [
    "AUDMState", "AbsorbingUniformDiffusion", "CosineSchedule", "GibbsCorrector", "LinearSchedule",
    "MaskedDiffusion", "RemaskingSchedule", "SampleInfo", "UniformDiffusion", "conversions", "exact",
    "losses", "processes", "sample", "schedules",
]
