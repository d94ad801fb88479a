"""A convolutional diffusion backbone: dilated residual 1-D convolutions with adaLN time conditioning.

ByteNet-style: each block is an adaLN-Zero-modulated, affine-free LayerNorm, a depthwise dilated
convolution over positions (dilations 1, 2, 4, ... cycling), a position-wise MLP, and a gated
residual. No attention: cost and memory are linear in the sequence length, and absolute position is
available from the zero padding at the ends. The worked backbone example of docs/extending.md; it
has the interface of ``DiT``: ``net(xt, sigma, noise=None) -> logits (B, L, output_size)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import MLP, TimeEmbedding, count_parameters, embed_diffusion_inputs, init_weights, modulate, preset_dims


@dataclass(kw_only=True)
class ConvConfig:
    """Hyper-parameters of :class:`ConvDenoiser`.

    Attributes:
        vocab_size, output_size, max_len, cond_dim, time_conditioning, audm, dropout: as for ``DiTConfig``.
        hidden: Width of the residual stream.
        blocks: Number of convolution blocks.
        kernel_size: Odd width of each depthwise convolution.
        dilation_cycle: Dilations run 1, 2, ..., 2^(dilation_cycle - 1), then repeat.
        mlp_ratio: MLP width as a multiple of ``hidden``.
    """

    vocab_size: int
    output_size: int
    hidden: int
    blocks: int
    max_len: int
    kernel_size: int = 5
    dilation_cycle: int = 4
    mlp_ratio: int = 4
    cond_dim: int = 128
    time_conditioning: bool = True
    audm: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "output_size", "hidden", "blocks", "max_len", "kernel_size", "dilation_cycle",
                     "mlp_ratio", "cond_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred convolution); got {self.kernel_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {self.dropout!r}")

    @classmethod
    def preset(cls, name: str, vocab_size: int, output_size: int, max_len: int, **overrides: Any) -> ConvConfig:
        """Width and depth of the named trunk preset (``tiny``, ``small``, ``medium``); ``overrides``
        replace any field. ``heads`` (an attention setting) does not apply and is refused."""
        if overrides.get("heads") is not None:
            raise ValueError(f"heads={overrides['heads']!r} does not apply to the conv backbone (it has no "
                             "attention); leave model.heads unset")
        overrides.pop("heads", None)
        dims = preset_dims(name)
        fields = {"hidden": dims["hidden"], "blocks": dims["blocks"], "vocab_size": vocab_size,
                  "output_size": output_size, "max_len": max_len}
        return cls(**(fields | overrides))


class ConvBlock(nn.Module):
    """adaLN-Zero block: modulated LayerNorm -> depthwise dilated conv -> GELU, then a modulated MLP."""

    def __init__(self, cfg: ConvConfig, dilation: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(cfg.hidden, elementwise_affine=False)
        pad = dilation * (cfg.kernel_size - 1) // 2
        self.conv = nn.Conv1d(cfg.hidden, cfg.hidden, cfg.kernel_size, padding=pad, dilation=dilation,
                              groups=cfg.hidden)
        self.mlp = MLP(cfg.hidden, cfg.mlp_ratio, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.modulation = nn.Linear(cfg.cond_dim, 6 * cfg.hidden)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        h = F.gelu(self.conv(h.transpose(1, 2)).transpose(1, 2), approximate="tanh")
        x = x + gate1 * self.drop(h)
        return x + gate2 * self.drop(self.mlp(modulate(self.norm2(x), shift2, scale2)))


class ConvDenoiser(nn.Module):
    """Dilated convolutional denoiser mapping noisy tokens x_t and sigma = -log alpha_t to logits over x_0."""

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        if cfg.audm:
            self.noise_embed = nn.Embedding(cfg.output_size, cfg.hidden)
            self.active_embed = nn.Embedding(2, cfg.hidden)
        self.time_embed = TimeEmbedding(cfg.cond_dim)
        self.blocks = nn.ModuleList(ConvBlock(cfg, 2 ** (i % cfg.dilation_cycle)) for i in range(cfg.blocks))
        self.final_norm = nn.LayerNorm(cfg.hidden, elementwise_affine=False)
        self.final_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.output_size)
        self.apply(init_weights)
        for layer in [self.final_modulation, self.head] + [b.modulation for b in self.blocks]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return count_parameters(self, self.head, exclude_embeddings)

    def forward(self, xt: Tensor, sigma: Tensor, noise: Tensor | None = None) -> Tensor:
        """Float32 logits (B, L, output_size); arguments and errors as for ``DiT.forward``."""
        h, sigma = embed_diffusion_inputs(self, xt, sigma, noise)
        c = F.silu(self.time_embed(sigma))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        return self.head(modulate(self.final_norm(h), shift, scale)).float()
