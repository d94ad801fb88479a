"""Uniform diffusion, UDLM (docs/maths.md §2, §3).

q_t(x_t | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t)/K. A network may predict the denoiser
p(x_0^i | x_t), the leave-one-out posterior p(x_0^i | x_t^{-i}) or the concrete score
p_t(x^{i<-y}) / p_t(x) (SEDD's uniform graph, docs/maths.md §10): the three views, converted exactly
by ``ddlm.conversions``; ddlm's own networks predict the LOO by default.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Process, State, register_process


@register_process
class UniformDiffusion(Process):
    """Uniform diffusion: a token is replaced by a uniform draw with probability 1 - alpha_t."""

    name = "udm"
    predictions = ("loo", "denoiser", "score")
    views = {"loo": "loo", "denoiser": "denoiser", "score": "score"}
    network_outputs = ("loo", "denoiser", "score")
    default_output = "loo"
    objectives = ("udm_elbo", "cross_entropy", "max_coupling_elbo", "score_entropy")
    temperature_views = ("loo", "denoiser")
    score_graph = "uniform"
    bound_objectives = {"score": "score_entropy"}

    def prior(self, shape, generator=None, device=None) -> State:
        """IID uniform tokens."""
        return State(torch.randint(self.vocab_size, tuple(shape), generator=generator, device=device))

    def corrupt(self, x0: Tensor, t, generator=None, noise: Tensor | None = None) -> State:
        """Draw x_t ~ q_t(. | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t)/K."""
        if noise is not None:
            raise ValueError(f"noise must be None for {self.label} (it has no noise tokens)")
        self._check_x0(x0)
        keep = self._keep(x0, t, generator)
        u = torch.randint(self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return State(torch.where(keep, x0, u))

    def token_loglik(self, xt, x0, alpha, noise=None):
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        eq = (xt[:, None, :] == x0[None, :, :]).to(torch.float64)
        return torch.log(a * eq + (1 - a) / self.vocab_size)

    def exact_states(self, length: int) -> State:
        from ..exact import all_sequences

        return State(all_sequences(self.vocab_size, length))

    def _convert_score(self, logits, xt, alpha, source, target):
        """Score <-> LOO/denoiser by ``ddlm.conversions`` (docs/maths.md §3)."""
        from .. import conversions

        return conversions.convert(logits, xt, alpha, source, target)
