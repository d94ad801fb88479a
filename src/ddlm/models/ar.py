"""Autoregressive (causal) transformer on the same RoPE trunk as the DiT, for likelihood baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import Block, check_token_batch, check_trunk_config, count_parameters, init_weights, preset_dims, rotary


@dataclass(kw_only=True)
class ARConfig:
    """Hyper-parameters of :class:`ARTransformer`.

    Attributes:
        vocab_size: Number of token ids (inputs and output logit columns).
        hidden: Width of the residual stream.
        blocks: Number of transformer blocks.
        heads: Number of attention heads (``hidden / heads`` must be even).
        mlp_ratio: MLP width as a multiple of ``hidden``.
        max_len: Longest sequence accepted.
        dropout: Dropout probability (attention, MLP and residual branches).
        start_id: Token put before every block as its start context (the tokenizer's BOS), so that
            :meth:`ARTransformer.block_losses` scores all L tokens of a block and generation from it
            draws whole blocks; None: a block's first token is context only (runs made before
            2026-11-24).
    """

    vocab_size: int
    hidden: int
    blocks: int
    heads: int
    mlp_ratio: int = 4
    max_len: int
    dropout: float = 0.0
    start_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int; got {self.vocab_size!r}")
        if self.start_id is not None and not (isinstance(self.start_id, int) and 0 <= self.start_id < self.vocab_size):
            raise ValueError(f"start_id must be None or a token id in [0, {self.vocab_size}); got {self.start_id!r}")
        check_trunk_config(self.hidden, self.blocks, self.heads, self.mlp_ratio, self.max_len, self.dropout)

    @classmethod
    def preset(cls, name: str, vocab_size: int, max_len: int, **overrides: Any) -> ARConfig:
        """Config for a named size (``tiny``/``small``/``medium``, as for the DiT); ``overrides`` replace fields."""
        return cls(**(preset_dims(name) | {"vocab_size": vocab_size, "max_len": max_len} | overrides))


class ARTransformer(nn.Module):
    """Causal transformer: token embedding, pre-norm RoPE blocks, final LayerNorm and linear head."""

    #: the autoregressive baseline has no diffusion process (``ddlm.config.is_autoregressive``)
    process = None

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.blocks = nn.ModuleList(
            Block(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.dropout, causal=True) for _ in range(cfg.blocks))
        self.final_norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.apply(init_weights)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; ``exclude_embeddings`` drops the embedding table and the output matrix."""
        return count_parameters(self, self.head, exclude_embeddings)

    def hidden(self, x: Tensor) -> Tensor:
        """Final hidden states: the residual stream after the last block and the final LayerNorm.

        Args:
            x: Tokens (B, L), int64 ids in [0, vocab_size), L <= max_len.

        Returns:
            Hidden states (B, L, hidden); position j depends on x[:, : j + 1] only. :meth:`forward`
            applies the linear head to them.
        """
        cfg = self.config
        _, length = check_token_batch("x", x, cfg.vocab_size, cfg.max_len)
        cos, sin = rotary(length, cfg.hidden // cfg.heads, x.device)
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, cos, sin)
        return self.final_norm(h)

    def forward(self, x: Tensor) -> Tensor:
        """Next-token logits.

        Args:
            x: Tokens (B, L), int64 ids in [0, vocab_size), L <= max_len.

        Returns:
            Float32 logits (B, L, vocab_size); position j scores token j + 1 given x[:, : j + 1].
        """
        return self.head(self.hidden(x)).float()

    def block_losses(self, blocks: Tensor, forward=None) -> Tensor:
        """Next-token cross-entropy (nats) of every scored token of data blocks (B, L): all L tokens
        given ``start_id`` before each block, shape (B, L); without a start token, tokens 1..L-1
        given their prefix, shape (B, L - 1). ``forward`` replaces ``self`` as the logits function
        (a DDP wrapper of this model, whose forward synchronises gradients)."""
        cfg = self.config
        forward = self if forward is None else forward
        if cfg.start_id is None:
            x, targets = blocks, blocks[:, 1:]
        else:
            start = torch.full_like(blocks[:, :1], cfg.start_id)
            x, targets = torch.cat([start, blocks], dim=1), blocks
        logits = forward(x)[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")

    def nll(self, x: Tensor) -> Tensor:
        """Summed negative log-likelihood (nats) of x[:, 1:] given its prefix, per sequence: shape (B,)."""
        logits = self(x)[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").sum(dim=-1)

    @torch.no_grad()
    def generate(self, prefix: Tensor, length: int, temperature: float = 1.0, generator=None) -> Tensor:
        """Sample continuations of ``prefix`` (B, P) up to ``length`` tokens (exact float64 draws)."""
        from ..sampling.prediction import categorical

        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 1 <= prefix.shape[1] <= length <= self.config.max_len:
            raise ValueError(f"need 1 <= prefix length ({prefix.shape[1]}) <= length ({length}) <= max_len "
                             f"({self.config.max_len})")
        x = prefix
        while x.shape[1] < length:
            logits = self(x)[:, -1].double() / temperature
            x = torch.cat([x, categorical(logits, generator).unsqueeze(-1)], dim=1)
        return x
