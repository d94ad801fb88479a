"""ddlm: discrete diffusion language models (masked, uniform, absorbing-uniform, D3PM)."""

from . import conversions, exact, losses, processes, schedules
from .processes import D3PM, AbsorbingUniformDiffusion, AUDMState, MaskedDiffusion, UniformDiffusion
from .sampling import GibbsCorrector, RemaskingSchedule, SampleInfo, sample
from .schedules import CosineSchedule, LinearSchedule

__version__ = "0.1.0"


def load(path, weights=None, *, ema=None, tokenizer=None, dtype="float32"):
    """Load a training run, one checkpoint folder, or a released checkpoint (a Hugging Face style
    folder, a Lightning ``.ckpt``, a SEDD ``checkpoint.pth``): returns (model, process, tokenizer).

    ``weights`` is "ema" (the default when neither it nor ``ema`` is given) or "raw"; ``ema=True``/
    ``False`` is the older spelling of the same choice. See ``ddlm.runs.load`` and
    ``ddlm.pretrained.load_pretrained`` (docs/pretrained.md)."""
    from .runs import load as _load

    return _load(path, weights, ema=ema, tokenizer=tokenizer, dtype=dtype)


__all__ = [
    "D3PM", "AUDMState", "AbsorbingUniformDiffusion", "CosineSchedule", "GibbsCorrector", "LinearSchedule",
    "MaskedDiffusion", "RemaskingSchedule", "SampleInfo", "UniformDiffusion", "conversions", "exact",
    "load", "losses", "processes", "sample", "schedules",
]
