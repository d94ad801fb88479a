"""Neural backbones: the diffusion transformer (DiT) and an autoregressive baseline on the same trunk."""

from .ar import ARConfig, ARTransformer
from .dit import DiT, DiTConfig

__all__ = ["ARConfig", "ARTransformer", "DiT", "DiTConfig"]
