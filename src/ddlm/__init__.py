"""ddlm: discrete diffusion language models (masked, uniform, absorbing-uniform, D3PM, SEDD).

The names below are imported on first use (``ddlm.sample``, ``ddlm.MaskedDiffusion``, ``ddlm.exact``, ...),
so that ``import ddlm`` and the command line's ``ddlm --help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "AbsorbingUniformDiffusion": "processes", "AUDMState": "processes", "MaskedDiffusion": "processes",
    "D3PM": "processes", "State": "processes",
    "UniformDiffusion": "processes", "GibbsCorrector": "sampling", "RemaskingSchedule": "sampling",
    "SampleInfo": "sampling", "sample": "sampling", "CosineSchedule": "schedules", "LinearSchedule": "schedules",
}
_SUBMODULES = ("conversions", "exact", "losses", "processes", "schedules")


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'ddlm' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
