"""Masked (absorbing) diffusion, MDLM (docs/maths.md §2).

q_t(x_t | x_0) = alpha_t 1[x_t = x_0] + (1 - alpha_t) 1[x_t = m], with mask id m = K. It is SEDD's
absorbing graph: at a masked position the concrete score from the mask to each clean token y is
s_i(y) = p_t(x^{i<-y}) / p_t(x) = alpha/(1 - alpha) d_i(y) (docs/maths.md §10).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Process, State, register_process


@register_process
class MaskedDiffusion(Process):
    """Masked diffusion. Mask id = vocab_size. At a masked position the denoiser and the LOO
    coincide, so a network may declare either; both are the "denoiser" view."""

    name = "mdm"
    predictions = ("denoiser", "loo", "score")
    views = {"denoiser": "denoiser", "loo": "denoiser", "score": "score"}
    network_outputs = ("denoiser", "score")
    default_output = "denoiser"
    objectives = ("mdm_elbo", "cross_entropy", "masked_cross_entropy", "score_entropy")
    temperature_views = ("denoiser",)
    extra_input_ids = 1
    score_graph = "absorbing"
    bound_objectives = {"score": "score_entropy"}
    score_scalings = ("none", "noise_level")

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

    # ---- the concrete score (docs/maths.md §10) -------------------------------------------------------
    @staticmethod
    def _log_odds(alpha, xt: Tensor, like: Tensor) -> Tensor:
        """log(alpha / (1 - alpha)) broadcast to xt's shape, with a trailing axis, in like's dtype."""
        from .._checks import as_alpha

        a = torch.broadcast_to(as_alpha("alpha", alpha, like, xt.shape), xt.shape)
        return (torch.log(a) - torch.log1p(-a)).unsqueeze(-1)

    def _convert_score(self, logits, xt, alpha, source, target):
        """At a masked position s(y) = alpha/(1 - alpha) d(y): the denoiser is the normalised score and
        the score the denoiser times the odds alpha/(1 - alpha). (At a clean position neither view is
        used by any objective or kernel; the same formulas are applied.)"""
        from .._checks import check_logp, check_tokens

        check_logp(logits, xt, name="logits")
        check_tokens("xt", xt, self.input_vocab_size)
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits has {logits.shape[-1]} columns, expected vocab_size = {self.vocab_size}")
        logp = torch.log_softmax(logits, dim=-1)
        return logp + self._log_odds(alpha, xt, logits) if target == "score" else logp

    def score_log_scale(self, alpha: Tensor) -> Tensor:
        """SEDD's absorbing-graph output scaling: log s = output - log(e^sigma - 1) - log K with
        sigma = -log alpha, i.e. output + log(alpha / (1 - alpha)) - log K (float64), so that an output
        of log(K d) is the score of the denoiser d (a zero output: the uniform denoiser)."""
        a = torch.as_tensor(alpha, dtype=torch.float64)
        tiny = torch.finfo(torch.float64).tiny
        return torch.log(a.clamp_min(tiny)) - torch.log1p(-a).clamp_min(math.log(tiny)) - math.log(self.vocab_size)
