"""Diffusion transformer (DiT) backbone: bidirectional RoPE attention with adaLN time conditioning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import (
    Block,
    TimeEmbedding,
    check_trunk_config,
    count_parameters,
    embed_diffusion_inputs,
    init_weights,
    modulate,
    preset_dims,
    rotary,
)


@dataclass(kw_only=True)
class DiTConfig:
    """Hyper-parameters of :class:`DiT`.

    Attributes:
        vocab_size: Number of input token ids (e.g. K + 1 for masked diffusion with mask id K).
        output_size: Number of output logit columns (normally the K data tokens).
        hidden: Width of the residual stream.
        blocks: Number of transformer blocks.
        heads: Number of attention heads (``hidden / heads`` must be even).
        mlp_ratio: MLP width as a multiple of ``hidden``.
        max_len: Longest sequence accepted.
        cond_dim: Width of the time-conditioning vector.
        time_conditioning: If False the conditioning vector is a constant and sigma is ignored.
        audm: If True the forward pass also takes the AUDM noise tokens.
        dropout: Dropout probability (attention, MLP and residual branches).
    """

    vocab_size: int
    output_size: int
    hidden: int
    blocks: int
    heads: int
    mlp_ratio: int = 4
    max_len: int
    cond_dim: int = 128
    time_conditioning: bool = True
    audm: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "output_size", "cond_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        check_trunk_config(self.hidden, self.blocks, self.heads, self.mlp_ratio, self.max_len, self.dropout)

    @classmethod
    def preset(cls, name: str, vocab_size: int, output_size: int, max_len: int, **overrides: Any) -> DiTConfig:
        """Config for a named size: ``tiny`` (256 x 4 blocks, 4 heads), ``small`` (768 x 12, 12 heads,
        as in MDLM/UDLM) or ``medium`` (1024 x 24, 16 heads); ``overrides`` replace any field."""
        fields = preset_dims(name) | {"vocab_size": vocab_size, "output_size": output_size, "max_len": max_len}
        return cls(**(fields | overrides))


class DiT(nn.Module):
    """Bidirectional transformer mapping noisy tokens x_t and noise level sigma to logits over x_0.

    Tokens are embedded (plus, for AUDM, an embedding of the noise tokens and of ``xt == noise``),
    passed through adaLN-Zero blocks conditioned on an MLP embedding of sigma = -log(alpha_t), and
    projected to ``output_size`` logits by an adaLN-modulated, zero-initialised final layer.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        if cfg.audm:
            self.noise_embed = nn.Embedding(cfg.output_size, cfg.hidden)
            self.active_embed = nn.Embedding(2, cfg.hidden)
        self.time_embed = TimeEmbedding(cfg.cond_dim)
        self.blocks = nn.ModuleList(
            Block(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.dropout, causal=False, cond_dim=cfg.cond_dim)
            for _ in range(cfg.blocks))
        self.final_norm = nn.LayerNorm(cfg.hidden, elementwise_affine=False)
        self.final_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.output_size)
        self.apply(init_weights)
        zero = [self.final_modulation, self.head] + [block.modulation for block in self.blocks]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; ``exclude_embeddings`` drops the embedding tables and the output matrix."""
        return count_parameters(self, self.head, exclude_embeddings)

    def forward(self, xt: Tensor, sigma: Tensor, noise: Tensor | None = None) -> Tensor:
        """Compute logits over clean tokens.

        Args:
            xt: Noisy tokens (B, L), int64 ids in [0, vocab_size), L <= max_len.
            sigma: Noise level -log(alpha_t) per example (B,), floating (finite if time-conditioned).
            noise: AUDM noise tokens (B, L), int64 ids in [0, output_size); required iff ``audm``.

        Returns:
            Float32 logits (B, L, output_size).

        Raises:
            ValueError: On malformed inputs; the message names the argument.
        """
        cfg = self.config
        h, sigma = embed_diffusion_inputs(self, xt, sigma, noise)
        length = xt.shape[1]
        c = F.silu(self.time_embed(sigma))
        cos, sin = rotary(length, cfg.hidden // cfg.heads, xt.device)
        for block in self.blocks:
            h = block(h, cos, sin, c)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        return self.head(modulate(self.final_norm(h), shift, scale)).float()
