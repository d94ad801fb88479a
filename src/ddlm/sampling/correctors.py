"""Correctors run after a predictor step (docs/maths.md §5, informed predictor-corrector).

A corrector is a step object the sampling loop calls after a predictor step: it declares how many
forward passes it makes per corrected step (``sweeps``) and the view it consumes (``consumes``),
checks that it applies to a process (``check``), and maps a state to a state (``correct``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..processes import State, UniformDiffusion
from .kernels import _mixture, as_prediction, uniform

SELECTIONS = ("random", "lowest_maxprob", "lowest_current_prob", "lowest_log_margin")


@dataclass(frozen=True)
class GibbsCorrector:
    """Informed Gibbs corrector for uniform diffusion.

    Each of ``sweeps`` sweeps makes one forward pass at (x_s, s), forms the single-site noisy
    conditional c_i(y) = alpha_s r_i(y) + (1 - alpha_s)/K from the LOO r, picks ``k`` positions per
    sequence by Gumbel-top-k on score/tau, and resamples them from c_i. Scores (higher = picked
    first): "random" (0: uniform choice), "lowest_maxprob" (-max_y c_i(y)), "lowest_current_prob"
    (-c_i(x^i)), "lowest_log_margin" (-(log c_i(x^i) - max_{y != x^i} log c_i(y))). Only "random"
    with k = 1 leaves p_s exactly invariant; the informed rules are heuristics. The temperature,
    top-p and generator given to ``ddlm.sample`` apply here too.
    """

    sweeps: int = 2
    k: int = 12
    selection: str = "lowest_log_margin"
    tau: float = 1.0

    #: the view each sweep consumes
    consumes = "loo"

    def __post_init__(self):
        if isinstance(self.sweeps, bool) or not isinstance(self.sweeps, int) or self.sweeps < 1:
            raise ValueError(f"sweeps must be an integer >= 1, got {self.sweeps!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a positive finite number, got {self.tau!r}")

    def check(self, process) -> None:
        """Raise ValueError unless the process is uniform diffusion (c_i is UDM's single-site marginal)."""
        if not isinstance(process, UniformDiffusion):
            raise ValueError(f"corrector GibbsCorrector supports uniform diffusion only, got process {process.label}")

    def correct(self, state: State, pred, step, generator) -> State:
        """One sweep at time s of the loop's step (``ddlm.sampling.registry.Step``)."""
        return State(self.step(state.xt, pred, step.alpha_s, step.free, generator), state.noise)

    def scores(self, x: Tensor, logr, alpha_s: float) -> Tensor:
        """Selection scores (B, L) from the LOO (a ``Prediction`` or (B, L, K) log-probabilities);
        higher means resampled first."""
        if self.selection == "random":
            return torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        pred = as_prediction(logr, x)
        floor = (1.0 - alpha_s) / pred.k

        def log_c(log_r):  # log(alpha_s r + (1 - alpha_s)/K), on (B, L) values
            return torch.log(alpha_s * log_r.exp() + floor)

        if self.selection == "lowest_current_prob":
            return -log_c(pred.log_prob_at(x))
        _, best, best_other = pred.top2()  # first, so that one vocabulary pass serves both
        if self.selection == "lowest_maxprob":
            return -log_c(best)
        return -(log_c(pred.log_prob_at(x)) - log_c(best_other))

    def select(self, scores: Tensor, allowed: Tensor, generator) -> Tensor:
        """Gumbel-top-k on scores/tau among allowed positions: a (B, L) bool mask."""
        gumbel = -torch.log(-torch.log(uniform(scores.shape, generator, scores.device).clamp_min(1e-300)))
        keys = torch.where(allowed, scores / self.tau + gumbel, torch.full_like(scores, float("-inf")))
        k = min(self.k, scores.shape[-1])
        idx = keys.topk(k, dim=-1).indices
        chosen = torch.zeros_like(allowed).scatter_(-1, idx, True)
        return chosen & allowed

    def step(self, x: Tensor, logr, alpha_s: float, allowed: Tensor, generator) -> Tensor:
        """One sweep given the LOO at (x, s): resample the selected positions from c_i."""
        logr = as_prediction(logr, x)
        chosen = self.select(self.scores(x, logr, alpha_s), allowed, generator)
        # c_i is a mixture: w.p. alpha_s draw from r, else a uniform token
        p_draw = torch.where(chosen, alpha_s, 0.0)
        p_unif = torch.where(chosen, 1.0 - alpha_s, 0.0)
        return _mixture(x, p_draw, p_unif, logr, generator)
