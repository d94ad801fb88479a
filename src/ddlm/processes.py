"""Forward processes: masked (MDM), uniform (UDM) and absorbing-uniform (AUDM) diffusion.

Tokens are corrupted independently given x_0 (MATH.md section 2):

- MDM:  q_t(x_t | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t) 1[x_t = m], mask id m = K.
- UDM:  q_t(x_t | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t) / K.
- AUDM: a noise token u ~ Unif[K] per position, fixed for the whole trajectory; x_t = x_0 before
  a jump time tau with P(tau <= t) = 1 - alpha_t, and u after it. Averaged over u this is the UDM
  joint law of (x_0, x_t). The state is an explicit ``AUDMState(xt, noise)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_tokens, check_vocab_size
from .schedules import LinearSchedule


class AUDMState(NamedTuple):
    """State of the absorbing-uniform process: the tokens and the per-position noise tokens."""

    xt: Tensor
    noise: Tensor

    @property
    def active(self) -> Tensor:
        """Positions with x_t == u: clean-and-equal or jumped. Others are certainly clean."""
        return self.xt == self.noise


class _Process:
    name = ""
    #: what a network for this process predicts by default ("denoiser", "loo" or "posterior")
    default_prediction = "denoiser"

    def __init__(self, vocab_size: int, schedule=None):
        self.vocab_size = check_vocab_size("vocab_size", vocab_size)
        self.schedule = LinearSchedule() if schedule is None else schedule
        if not (hasattr(self.schedule, "alpha") and hasattr(self.schedule, "dalpha")):
            raise TypeError(
                f"schedule must provide alpha(t) and dalpha(t), got {type(self.schedule).__name__}"
            )

    @property
    def input_vocab_size(self) -> int:
        """Number of distinct input token ids a network for this process sees."""
        return self.vocab_size

    def alpha(self, t) -> Tensor:
        return self.schedule.alpha(t)

    def dalpha(self, t) -> Tensor:
        return self.schedule.dalpha(t)

    def _alpha_like(self, t, x0: Tensor) -> Tensor:
        """alpha_t in float64 on x0's device, shaped to broadcast against x0 (..., L)."""
        t = torch.as_tensor(t, device=x0.device)
        a = self.schedule.alpha(t.to(torch.float64) if t.is_floating_point() else t.double())
        if a.dim() >= 1 and a.dim() == x0.dim() - 1 and tuple(a.shape) == tuple(x0.shape[:-1]):
            a = a.unsqueeze(-1)
        try:
            torch.broadcast_shapes(a.shape, x0.shape)
        except RuntimeError:
            raise ValueError(
                f"t has shape {tuple(t.shape)}, expected a float, shape {tuple(x0.shape[:-1])} "
                f"(one time per sequence) or a shape broadcastable to x0's {tuple(x0.shape)}"
            ) from None
        return a

    def _check_x0(self, x0: Tensor) -> None:
        check_tokens("x0", x0, self.vocab_size)
        if x0.dim() < 1:
            raise ValueError("x0 must have shape (..., L), got a scalar")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, schedule={self.schedule!r})"


def _uniform(shape, generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


class MaskedDiffusion(_Process):
    """Masked (absorbing) diffusion, MDLM. Mask id = vocab_size."""

    name = "mdm"

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def input_vocab_size(self) -> int:
        return self.vocab_size + 1

    def prior(self, shape, generator=None, device=None) -> Tensor:
        """All masks."""
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)

    def corrupt(self, x0: Tensor, t, generator=None) -> Tensor:
        """Draw x_t ~ q_t(. | x_0): each token masked independently with probability 1 - alpha_t."""
        self._check_x0(x0)
        a = self._alpha_like(t, x0)
        keep = _uniform(x0.shape, generator, x0.device) < a
        return torch.where(keep, x0, torch.full_like(x0, self.mask_id))


class UniformDiffusion(_Process):
    """Uniform diffusion, UDLM: a token is replaced by a uniform draw with probability 1 - alpha_t."""

    name = "udm"
    default_prediction = "loo"

    def prior(self, shape, generator=None, device=None) -> Tensor:
        """IID uniform tokens."""
        return torch.randint(self.vocab_size, tuple(shape), generator=generator, device=device)

    def corrupt(self, x0: Tensor, t, generator=None) -> Tensor:
        """Draw x_t ~ q_t(. | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t)/K."""
        self._check_x0(x0)
        a = self._alpha_like(t, x0)
        keep = _uniform(x0.shape, generator, x0.device) < a
        u = torch.randint(self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return torch.where(keep, x0, u)


class AbsorbingUniformDiffusion(_Process):
    """Absorbing reformulation of uniform diffusion (AUDM): each token jumps once, to its noise token."""

    name = "audm"
    default_prediction = "posterior"

    def prior(self, shape, generator=None, device=None) -> AUDMState:
        """Noise tokens u ~ Unif[K]; at t = 1 every position has jumped, so x_1 = u."""
        u = torch.randint(self.vocab_size, tuple(shape), generator=generator, device=device)
        return AUDMState(u.clone(), u)

    def corrupt(self, x0: Tensor, t, generator=None, noise: Tensor | None = None) -> AUDMState:
        """Draw (x_t, u): u ~ Unif[K] (or the given ``noise``), x_t = u with probability 1 - alpha_t."""
        self._check_x0(x0)
        a = self._alpha_like(t, x0)
        if noise is None:
            noise = torch.randint(self.vocab_size, x0.shape, generator=generator, device=x0.device)
        else:
            check_tokens("noise", noise, self.vocab_size)
            if tuple(noise.shape) != tuple(x0.shape):
                raise ValueError(
                    f"noise has shape {tuple(noise.shape)}, expected x0's shape {tuple(x0.shape)}"
                )
        keep = _uniform(x0.shape, generator, x0.device) < a
        return AUDMState(torch.where(keep, x0, noise), noise)


PROCESSES = {"mdm": MaskedDiffusion, "udm": UniformDiffusion, "audm": AbsorbingUniformDiffusion}


def get_process(name: str, vocab_size: int, schedule=None):
    """Build a process by short name: "mdm", "udm" or "audm"."""
    if name not in PROCESSES:
        raise ValueError(f"process must be one of {sorted(PROCESSES)}, got {name!r}")
    return PROCESSES[name](vocab_size, schedule)
