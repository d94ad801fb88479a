"""Transformer trunk pieces shared by the diffusion (DiT) and autoregressive backbones."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_tokens

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 256, "blocks": 4, "heads": 4},
    "small": {"hidden": 768, "blocks": 12, "heads": 12},
    "medium": {"hidden": 1024, "blocks": 24, "heads": 16},
}


def preset_dims(name: str) -> dict[str, int]:
    """Return the ``hidden``/``blocks``/``heads`` of a named preset (ValueError if unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return dict(PRESETS[name])


def check_trunk_config(hidden: int, blocks: int, heads: int, mlp_ratio: int, max_len: int, dropout: float) -> None:
    """Validate the trunk hyper-parameters common to both configs (ValueError on failure)."""
    for name, value in (("hidden", hidden), ("blocks", blocks), ("heads", heads),
                        ("mlp_ratio", mlp_ratio), ("max_len", max_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden={hidden} must split into heads={heads} heads of even width (needed by RoPE)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1); got {dropout!r}")


def check_token_batch(name: str, x: Tensor, high: int, max_len: int | None = None) -> tuple[int, int]:
    """Check that ``x`` is a non-empty (B, L) int64 tensor of ids in [0, high) with L <= max_len.

    Returns:
        The pair (B, L).
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or x.dtype != torch.int64 or x.numel() == 0:
        got = f"dtype {x.dtype}, shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty 2-D int64 tensor (batch, length); got {got}")
    batch, length = x.shape
    if max_len is not None and length > max_len:
        raise ValueError(f"{name} has length L={length} but the model's max_len={max_len}")
    check_tokens(name, x, high)
    return batch, length


def rotary(length: int, head_dim: int, device: torch.device, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Cosines and sines (each (L, head_dim), float32) of the RoPE angles pos * base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate feature pairs (i, i + D/2) of ``x`` (..., L, D) by the RoPE angles of each position."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def embed_diffusion_inputs(net: nn.Module, xt: Tensor, sigma: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """Check a diffusion backbone's inputs and embed them: (h (B, L, hidden), sigma to condition on).

    ``net`` has ``config`` (``vocab_size``, ``output_size``, ``max_len``, ``audm``, ``time_conditioning``),
    ``embed`` and, when ``config.audm``, ``noise_embed`` and ``active_embed``. The AUDM state adds the
    noise tokens' embedding and whether each position is active (x_t == u); sigma is zeroed when the
    backbone is not time-conditioned. ValueError naming the argument on malformed inputs.
    """
    cfg = net.config
    batch, _ = check_token_batch("xt", xt, cfg.vocab_size, cfg.max_len)
    if not isinstance(sigma, Tensor) or sigma.shape != (batch,) or not sigma.is_floating_point():
        got = f"dtype {sigma.dtype}, shape {tuple(sigma.shape)}" if isinstance(sigma, Tensor) else type(sigma)
        raise ValueError(f"sigma must be a floating tensor of shape ({batch},) matching xt; got {got}")
    h = net.embed(xt)
    if cfg.audm:
        if noise is None:
            raise ValueError("noise must be given (B, L) int64 ids when config.audm=True; got None")
        check_token_batch("noise", noise, cfg.output_size)
        if noise.shape != xt.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal xt shape {tuple(xt.shape)}")
        h = h + net.noise_embed(noise) + net.active_embed((xt == noise).long())
    elif noise is not None:
        raise ValueError("noise was given but config.audm=False; pass noise=None")
    if not cfg.time_conditioning:
        sigma = torch.zeros_like(sigma)
    elif not torch.isfinite(sigma).all():
        raise ValueError(f"sigma must be finite when time_conditioning=True; got {sigma.tolist()}")
    return h, sigma


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` (shift/scale broadcast over positions)."""
    return x * (1 + scale) + shift


class TimeEmbedding(nn.Module):
    """Embeds a per-example scalar ``sigma`` (B,) as sinusoidal features followed by a 2-layer MLP."""

    def __init__(self, cond_dim: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: Tensor) -> Tensor:
        """Map sigma (B,) to a conditioning vector (B, cond_dim)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) / half * torch.arange(half, device=sigma.device))
        args = sigma.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class MLP(nn.Module):
    """Position-wise feed-forward layer ``Linear -> GELU(tanh) -> Linear``."""

    def __init__(self, hidden: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, mlp_ratio * hidden), nn.Linear(mlp_ratio * hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to every position of ``x`` (..., hidden)."""
        return self.fc2(self.drop(F.gelu(self.fc1(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm transformer block: RoPE multi-head self-attention then MLP, each in a residual branch.

    With ``cond_dim`` set, the block is adaLN-Zero conditioned: a zero-initialised linear map of the
    conditioning vector gives shift/scale (applied after an affine-free LayerNorm) and a gate
    (multiplying the branch) for both sub-layers, so at initialisation the block is the identity.
    Without ``cond_dim`` the LayerNorms are affine and the branches ungated.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: int, dropout: float, causal: bool,
                 cond_dim: int | None = None) -> None:
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=affine)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=affine)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.mlp = MLP(hidden, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)
        self.modulation = None if cond_dim is None else nn.Linear(cond_dim, 6 * hidden)

    def attend(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Multi-head scaled-dot-product self-attention of ``h`` (B, L, D) with RoPE on q and k."""
        b, length, d = h.shape
        q, k, v = self.qkv(h).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v,
            dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, length, d))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, c: Tensor | None = None) -> Tensor:
        """Update the residual stream ``x`` (B, L, D); ``c`` (B, cond_dim) is required iff conditioned."""
        if self.modulation is None:
            x = x + self.drop(self.attend(self.norm1(x), cos, sin))
            return x + self.drop(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.drop(self.attend(modulate(self.norm1(x), shift1, scale1), cos, sin))
        return x + gate2 * self.drop(self.mlp(modulate(self.norm2(x), shift2, scale2)))


def init_weights(module: nn.Module) -> None:
    """GPT-style initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module, head: nn.Linear, exclude_embeddings: bool) -> int:
    """Number of parameters of ``model``; optionally without embedding tables and ``head.weight``."""
    skip: set[int] = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | {id(head.weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
