"""Noise schedules: the clean-signal fraction alpha_t, decreasing from alpha_0 = 1 on t in [0, 1].

Every formula in ddlm takes alpha and alpha' as inputs; a schedule only maps times to them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_t(t) -> Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.numel() and (bool(torch.isnan(t).any()) or float(t.min()) < 0.0 or float(t.max()) > 1.0):
        raise ValueError(f"t must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}]")
    return t


def _check_eps(eps: float) -> float:
    if not (0.0 <= eps < 1.0):
        raise ValueError(f"eps must lie in [0, 1), got {eps!r}")
    return float(eps)


class LinearSchedule:
    """alpha_t = 1 - (1 - eps) t  ("log-linear" in MDLM's naming); alpha_1 = eps."""

    def __init__(self, eps: float = 1e-3):
        self.eps = _check_eps(eps)

    def alpha(self, t) -> Tensor:
        t = _check_t(t)
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t) -> Tensor:
        t = _check_t(t)
        return torch.full_like(t, -(1.0 - self.eps))

    def t_of_alpha(self, alpha) -> Tensor:
        """Inverse: the time at which alpha_t = alpha."""
        return (1.0 - torch.as_tensor(alpha)) / (1.0 - self.eps)

    def __repr__(self) -> str:
        return f"LinearSchedule(eps={self.eps})"


class CosineSchedule:
    """alpha_t = eps + (1 - eps) cos(pi t / 2); alpha_0 = 1, alpha_1 = eps."""

    def __init__(self, eps: float = 1e-3):
        self.eps = _check_eps(eps)

    def alpha(self, t) -> Tensor:
        t = _check_t(t)
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * t)

    def dalpha(self, t) -> Tensor:
        t = _check_t(t)
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def t_of_alpha(self, alpha) -> Tensor:
        """Inverse: the time at which alpha_t = alpha."""
        c = ((torch.as_tensor(alpha) - self.eps) / (1.0 - self.eps)).clamp(-1.0, 1.0)
        return torch.acos(c) * (2.0 / math.pi)

    def __repr__(self) -> str:
        return f"CosineSchedule(eps={self.eps})"


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule}


def get_schedule(name: str, **kwargs):
    """Build a schedule by name ("linear" or "cosine")."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](**kwargs)
