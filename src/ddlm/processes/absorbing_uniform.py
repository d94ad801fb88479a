"""Absorbing reformulation of uniform diffusion, AUDM (docs/maths.md §2).

A noise token u ~ Unif[K] per position is fixed for the whole trajectory; x_t = x_0 before a jump
time tau with P(tau <= t) = 1 - alpha_t, and u after it. Averaged over u this is the UDM joint law
of (x_0, x_t). The state carries u: ``State(xt, noise)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_tokens
from .base import Process, State, register_process


@register_process
class AbsorbingUniformDiffusion(Process):
    """AUDM: each token jumps once, to its noise token. The network predicts the posterior
    p(x_0^i | x_t, u) (declared "posterior"; "denoiser" names the same view)."""

    name = "audm"
    predictions = ("posterior", "denoiser")
    views = {"posterior": "denoiser", "denoiser": "denoiser"}
    network_outputs = ("posterior",)
    default_output = "posterior"
    objectives = ("audm_elbo",)
    temperature_views = ("denoiser", "posterior")
    has_noise = True

    def prior(self, shape, generator=None, device=None) -> State:
        """Noise tokens u ~ Unif[K]; at t = 1 every position has jumped, so x_1 = u."""
        u = torch.randint(self.vocab_size, tuple(shape), generator=generator, device=device)
        return State(u.clone(), u)

    def corrupt(self, x0: Tensor, t, generator=None, noise: Tensor | None = None) -> State:
        """Draw (x_t, u): u ~ Unif[K] (or the given ``noise``), x_t = u with probability 1 - alpha_t."""
        self._check_x0(x0)
        a = self._alpha_like(t, x0)
        if noise is None:
            noise = torch.randint(self.vocab_size, x0.shape, generator=generator, device=x0.device)
        else:
            check_tokens("noise", noise, self.vocab_size)
            if tuple(noise.shape) != tuple(x0.shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected x0's shape {tuple(x0.shape)}")
        keep = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64) < a
        return State(torch.where(keep, x0, noise), noise)

    def fix(self, state: State, prompt: Tensor, mask: Tensor) -> State:
        """Clamp to the prompt and mark those positions certainly clean (u != x)."""
        return State(torch.where(mask, prompt, state.xt),
                     torch.where(mask, (prompt + 1) % self.vocab_size, state.noise))

    def token_loglik(self, xt, x0, alpha, noise=None):
        """log P(x_t^i | x_0^i, u^i) = log(alpha 1[x_t = x_0] + (1 - alpha) 1[x_t = u]); the uniform law of
        u, independent of x_0, is ``exact_noise_logweight``."""
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        eq = (xt[:, None, :] == x0[None, :, :]).to(torch.float64)
        jumped = (xt == noise).to(torch.float64)[:, None, :]
        return torch.log(a * eq + (1 - a) * jumped)

    def exact_states(self, length: int) -> State:
        from ..exact import all_sequences

        seq = all_sequences(self.vocab_size, length)
        n = seq.shape[0]
        return State(seq.repeat_interleave(n, dim=0), seq.repeat(n, 1))

    def exact_noise_logweight(self, length: int) -> float:
        return -length * math.log(self.vocab_size)
