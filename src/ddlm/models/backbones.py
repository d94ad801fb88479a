"""The backbone registry: name -> (network class, config class) for ``model.backbone`` in run configs.

A backbone is called ``net(xt, sigma, noise=None) -> logits (B, L, output_size)``; its config class
has a ``preset(name, vocab_size, output_size, max_len, **overrides)`` constructor and the fields
``vocab_size``, ``output_size``, ``max_len``, ``time_conditioning`` and ``audm``
(docs/extending.md, "A backbone").
"""

from __future__ import annotations

from .conv import ConvConfig, ConvDenoiser
from .dit import DiT, DiTConfig

BACKBONES: dict[str, tuple[type, type]] = {
    "dit": (DiT, DiTConfig),
    "conv": (ConvDenoiser, ConvConfig),
}


def get_backbone(name: str) -> tuple[type, type]:
    """(network class, config class) of a registered backbone; ValueError naming the choices."""
    if name not in BACKBONES:
        raise ValueError(f"model.backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name]
