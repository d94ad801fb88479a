"""Masked (absorbing) diffusion, MDLM (docs/maths.md §2).

q_t(x_t | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t) 1[x_t = m], with mask id m = K.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Process, State, register_process


@register_process
class MaskedDiffusion(Process):
    """Masked diffusion. Mask id = vocab_size. At a masked position the denoiser and the LOO
    coincide, so a network may declare either; both are the "denoiser" view."""

    name = "mdm"
    predictions = ("denoiser", "loo")
    views = {"denoiser": "denoiser", "loo": "denoiser"}
    network_outputs = ("denoiser",)
    default_output = "denoiser"
    objectives = ("mdm_elbo", "cross_entropy", "masked_cross_entropy")
    temperature_views = ("denoiser",)
    extra_input_ids = 1

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def prior(self, shape, generator=None, device=None) -> State:
        """All masks."""
        return State(torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device))

    def corrupt(self, x0: Tensor, t, generator=None, noise: Tensor | None = None) -> State:
        """Draw x_t ~ q_t(. | x_0): each token masked independently with probability 1 - alpha_t."""
        if noise is not None:
            raise ValueError(f"noise must be None for {self.label} (it has no noise tokens)")
        self._check_x0(x0)
        keep = self._keep(x0, t, generator)
        return State(torch.where(keep, x0, torch.full_like(x0, self.mask_id)))

    def token_loglik(self, xt, x0, alpha, noise=None):
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        eq = (xt[:, None, :] == x0[None, :, :]).to(torch.float64)
        masked = (xt == self.mask_id).to(torch.float64)[:, None, :]
        return torch.log(a * eq + (1 - a) * masked)

    def exact_states(self, length: int) -> State:
        from ..exact import all_sequences

        return State(all_sequences(self.vocab_size + 1, length))
