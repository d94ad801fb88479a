"""The DiT of the released discrete-diffusion checkpoints (MDLM, DUO, UDLM, SEDD, the paper's
UDM/AUDM/MDM models) in their own parameter layout, on PyTorch's scaled-dot-product attention.

Those projects share one backbone (MDLM's ``models/dit.py``): ``vocab_embed.embedding``, ``sigma_map``
(sinusoidal features of the conditioning scalar -> MLP), ``rotary_emb.inv_freq``, ``blocks.N.{norm1,
attn_qkv, attn_out, norm2, mlp, adaLN_modulation}`` and ``output_layer.{norm_final, linear,
adaLN_modulation}``, with LayerNorms that have a weight and no bias. Their own code needs the CUDA-only
flash-attn package; this module computes the same function with ``F.scaled_dot_product_attention``
(CPU or GPU, float32, or bfloat16 autocast as the projects train and sample).

The AUDM models of the paper also condition on the per-position noise tokens u:
``noise_fusion="separate_linear"`` (``conditioning_input_proj(cat[E x_t, C u, 1{x_t = u}])``),
``"shared_mlp"`` (``conditioning_input_mlp`` of the same concatenation, with E for both embeddings),
or ``"additive"`` (ddlm's own DiT: ``E x_t + C u + A 1{x_t = u}``, used by ``ddlm export --format hf``).

The network maps (x_t, sigma[, u]) to logits over ``output_size`` rows; which sigma a family feeds
(and whether it is zeroed) and what the rows mean is the business of ``ddlm.pretrained.families``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import apply_rotary, check_token_batch, modulate

NOISE_FUSIONS = (None, "separate_linear", "shared_mlp", "additive")


@dataclass(kw_only=True)
class ImportedDiTConfig:
    """Dimensions and conditioning of an imported DiT.

    Attributes:
        vocab_size: rows of ``vocab_embed`` (input ids).
        output_size: rows of ``output_layer.linear`` (output logits).
        hidden, blocks, heads, mlp_ratio, cond_dim: the trunk's sizes.
        max_len: longest sequence (the family's ``model.length``; RoPE itself has no limit).
        time_conditioning: False: the family feeds sigma = 0 (MDLM's ``time_conditioning=False``).
        noise_fusion: how the AUDM noise tokens enter (module docstring), None for other processes.
        freq_dim: width of the sinusoidal features of sigma (256 in every family).
    """

    vocab_size: int
    output_size: int
    hidden: int
    blocks: int
    heads: int
    mlp_ratio: int = 4
    cond_dim: int
    max_len: int
    time_conditioning: bool = True
    noise_fusion: str | None = None
    freq_dim: int = 256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "output_size", "hidden", "blocks", "heads", "mlp_ratio", "cond_dim", "max_len",
                     "freq_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden={self.hidden} must split into heads={self.heads} heads of even width")
        if self.noise_fusion not in NOISE_FUSIONS:
            raise ValueError(f"noise_fusion must be one of {NOISE_FUSIONS}, got {self.noise_fusion!r}")


class _Table(nn.Module):
    """An embedding table stored as the parameter ``embedding`` (the families' ``EmbeddingLayer``)."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(rows, dim))

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding[ids]


class _Norm(nn.Module):
    """LayerNorm in float32 without bias, then times ``weight`` (the families' ``LayerNorm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        with _no_autocast(x):  # one fused kernel: the same numbers as layer_norm(x) * weight, one pass fewer
            return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float())


class _SigmaMap(nn.Module):
    def __init__(self, cond_dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(0, half, dtype=torch.float32, device=sigma.device) / half)
        args = sigma[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class _Rotary(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, length: int, device) -> tuple[Tensor, Tensor]:
        angles = torch.outer(torch.arange(length, device=device, dtype=self.inv_freq.dtype), self.inv_freq)
        angles = torch.cat([angles, angles], dim=-1).float()
        return angles.cos(), angles.sin()


def _no_autocast(x: Tensor):
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: int, cond_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1 = _Norm(hidden)
        self.attn_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = _Norm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * hidden, hidden))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        b, length, d = x.shape
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.attn_qkv(h).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        with _no_autocast(x):
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, d)
        x = x + gate1 * self.attn_out(a)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class _OutputLayer(nn.Module):
    def __init__(self, hidden: int, out: int, cond_dim: int):
        super().__init__()
        self.norm_final = _Norm(hidden)
        self.linear = nn.Linear(hidden, out)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ImportedDiT(nn.Module):
    """The shared DiT of the released checkpoints, with their parameter names (module docstring).

    Modules are registered in the families' order, so ``parameters()`` follows the order of their
    EMA ``shadow_params`` lists.
    """

    def __init__(self, config: ImportedDiTConfig):
        super().__init__()
        self.config = cfg = config
        self.vocab_embed = _Table(cfg.vocab_size, cfg.hidden)
        if cfg.noise_fusion in ("separate_linear", "additive"):
            self.conditioning_vocab_embed = _Table(cfg.vocab_size, cfg.hidden)
        if cfg.noise_fusion == "separate_linear":
            self.conditioning_input_proj = nn.Linear(2 * cfg.hidden + 1, cfg.hidden)
        elif cfg.noise_fusion == "shared_mlp":
            self.conditioning_input_mlp = nn.Sequential(nn.Linear(2 * cfg.hidden + 1, 4 * cfg.hidden),
                                                        nn.GELU(approximate="tanh"),
                                                        nn.Linear(4 * cfg.hidden, cfg.hidden))
        elif cfg.noise_fusion == "additive":
            self.conditioning_active_embed = _Table(2, cfg.hidden)
        self.sigma_map = _SigmaMap(cfg.cond_dim, cfg.freq_dim)
        self.rotary_emb = _Rotary(cfg.hidden // cfg.heads)
        self.blocks = nn.ModuleList(_Block(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.cond_dim)
                                    for _ in range(cfg.blocks))
        self.output_layer = _OutputLayer(cfg.hidden, cfg.output_size, cfg.cond_dim)

    def _embed(self, xt: Tensor, noise: Tensor | None) -> Tensor:
        cfg = self.config
        h = self.vocab_embed(xt)
        if cfg.noise_fusion is None:
            if noise is not None:
                raise ValueError("noise was given but this network has no noise conditioning; pass noise=None")
            return h
        if noise is None:
            raise ValueError(f"noise must be given (B, L) int64 ids: this network conditions on the noise tokens "
                             f"({cfg.noise_fusion})")
        check_token_batch("noise", noise, cfg.vocab_size)
        if noise.shape != xt.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal xt shape {tuple(xt.shape)}")
        if cfg.noise_fusion == "additive":
            return h + self.conditioning_vocab_embed(noise) + self.conditioning_active_embed((xt == noise).long())
        match = (xt == noise).to(h.dtype).unsqueeze(-1)
        if cfg.noise_fusion == "separate_linear":
            return self.conditioning_input_proj(torch.cat([h, self.conditioning_vocab_embed(noise), match], dim=-1))
        return self.conditioning_input_mlp(torch.cat([h, self.vocab_embed(noise), match], dim=-1))

    def forward(self, xt: Tensor, sigma: Tensor, noise: Tensor | None = None) -> Tensor:
        """Logits (B, L, output_size), float32.

        Args:
            xt: tokens (B, L), int64 ids in [0, vocab_size).
            sigma: the family's conditioning scalar per sequence (B,), floating; ignored (zeroed)
                when ``time_conditioning`` is False.
            noise: the AUDM noise tokens (B, L), required iff ``noise_fusion`` is set.
        """
        cfg = self.config
        batch, length = check_token_batch("xt", xt, cfg.vocab_size)
        if not isinstance(sigma, Tensor) or sigma.shape != (batch,) or not sigma.is_floating_point():
            got = f"dtype {sigma.dtype}, shape {tuple(sigma.shape)}" if isinstance(sigma, Tensor) else type(sigma)
            raise ValueError(f"sigma must be a floating tensor of shape ({batch},) matching xt; got {got}")
        if not cfg.time_conditioning:
            sigma = torch.zeros_like(sigma)
        x = self._embed(xt, noise)
        c = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb(length, xt.device)
        for block in self.blocks:
            x = block(x, cos, sin, c)
        return self.output_layer(x, c).float()
