"""ddlm: discrete diffusion language models (masked, uniform, absorbing-uniform, D3PM)."""

from . import conversions, exact, losses, processes, schedules
from .processes import D3PM, AbsorbingUniformDiffusion, AUDMState, MaskedDiffusion, UniformDiffusion
from .sampling import GibbsCorrector, RemaskingSchedule, SampleInfo, sample
from .schedules import CosineSchedule, LinearSchedule

__version__ = "0.1.0"


def load(path, ema: bool = True):
    """Load a training run (or one checkpoint folder): returns (model, process, tokenizer)."""
    from .runs import load as _load

    return _load(path, ema=ema)

__all__ = [
    "D3PM", "AUDMState", "AbsorbingUniformDiffusion", "CosineSchedule", "GibbsCorrector", "LinearSchedule",
    "MaskedDiffusion", "RemaskingSchedule", "SampleInfo", "UniformDiffusion", "conversions", "exact",
    "load", "losses", "processes", "sample", "schedules",
]
