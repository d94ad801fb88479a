"""Argument validation shared by the public functions.

Every error names the argument, the value received and what was expected.
"""

from __future__ import annotations

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A NaN or infinite loss, gradient norm, bound, weight or predicted probability: a run (or a
    model) that has diverged."""


def check_int_tensor(name: str, x: Tensor) -> None:
    """Require an integer tensor (token ids)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids (int64), got dtype {x.dtype}")


def check_tokens(name: str, x: Tensor, high: int) -> None:
    """Require integer ids in [0, high)."""
    check_int_tensor(name, x)
    if x.numel() == 0:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= high:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}, expected ids in [0, {high - 1}]")


def check_vocab_size(name: str, k: int) -> int:
    """Require an integer vocabulary size of at least 2."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {k!r}")
    return k


def check_logp(logp: Tensor, xt: Tensor, name: str = "logp") -> None:
    """Require logp of shape (..., L, K) matching xt of shape (..., L), floating point."""
    if not isinstance(logp, Tensor) or not logp.is_floating_point():
        got = logp.dtype if isinstance(logp, Tensor) else type(logp).__name__
        raise TypeError(f"{name} must be a floating-point tensor of shape (..., L, K), got {got}")
    if logp.dim() < 2:
        raise ValueError(f"{name} must have shape (..., L, K), got shape {tuple(logp.shape)}")
    if logp.shape[-1] < 2:
        raise ValueError(f"{name} must have K >= 2 columns (data tokens), got shape {tuple(logp.shape)}")
    if tuple(logp.shape[:-1]) != tuple(xt.shape):
        raise ValueError(
            f"{name} has shape {tuple(logp.shape)} but xt has shape {tuple(xt.shape)}; "
            f"expected {name}.shape[:-1] == xt.shape"
        )


def check_same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, expected the shape of {ref_name} {tuple(ref.shape)}"
        )


def as_alpha(name: str, alpha, like: Tensor, shape: torch.Size) -> Tensor:
    """Return alpha as a tensor of like's dtype/device, broadcastable to ``shape``, in [0, 1]."""
    a = torch.as_tensor(alpha, dtype=like.dtype, device=like.device)
    if not a.is_floating_point():
        a = a.to(like.dtype)
    try:
        torch.broadcast_shapes(a.shape, shape)
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}, expected a float or a tensor broadcastable to "
            f"xt's shape {tuple(shape)} (for example (B, 1))"
        ) from None
    if a.numel() and (bool(torch.isnan(a).any()) or float(a.min()) < 0.0 or float(a.max()) > 1.0):
        bad = a[(a < 0) | (a > 1) | torch.isnan(a)].flatten()[0].item()
        raise ValueError(f"{name} must lie in [0, 1], got {bad}")
    return a


def as_rate(name: str, value, like: Tensor, shape: torch.Size) -> Tensor:
    """Return a time derivative (e.g. dalpha) as a tensor broadcastable to ``shape``."""
    a = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        torch.broadcast_shapes(a.shape, shape)
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}, expected a float or a tensor broadcastable to "
            f"xt's shape {tuple(shape)}"
        ) from None
    if a.numel() and (bool(torch.isnan(a).any()) or float(a.max()) > 0.0):
        raise ValueError(f"{name} must be <= 0 (alpha decreases in t), got max {float(a.max())}")
    return a
