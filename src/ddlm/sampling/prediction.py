"""A lazy view of a model's prediction: what sampling kernels consume, without vocabulary-sized copies.

Every view a sampler needs (denoiser or LOO, tempered or not) of one network output differs from
the raw logits only at each position's current token x^i (the self-evidence delta_t of
``ddlm.conversions``) and by a temperature:

    log p(y) = (logits(y) + c 1[y = x^i]) / T - log Z,

so a view is the logits (never copied) plus a (B, L) offset ``c`` and a scalar ``T``. One chunked
pass over the vocabulary gives the log-mass of the tokens other than x^i; after that, the
probability of any token, conversions and temperature cost O(B L). Only the positions that draw a
token materialise their row, in float64 (exact inverse-CDF draws).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..conversions import self_evidence

#: elements per chunk in the pass over the vocabulary (bounds the temporary memory)
_CHUNK = 1 << 21


def _rest_logsumexp(logits: Tensor, x: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per position: log sum_{y != x} exp(logits(y)/T) and logits(x), both float64, shape (B, L).

    Computed exactly (no cancellation when x holds almost all the mass) in chunks of rows. At T = 1
    the current tokens' logits are set to -inf in place and restored afterwards, so no copy of the
    logits is made.
    """
    k = logits.shape[-1]
    flat = logits.reshape(-1, k)  # a view whenever the logits are contiguous over the K columns
    xf = x.reshape(-1, 1)
    lx = flat.gather(-1, xf)
    rest = torch.empty(flat.shape[0], dtype=torch.float64, device=logits.device)
    rows = max(1, _CHUNK // k)
    with torch.no_grad():
        for start in range(0, flat.shape[0], rows):
            stop = start + rows
            if temperature == 1.0:
                z = flat[start:stop]
                z.scatter_(-1, xf[start:stop], float("-inf"))
                rest[start:stop] = torch.logsumexp(z, dim=-1)
                z.scatter_(-1, xf[start:stop], lx[start:stop])  # restore
            else:
                z = flat[start:stop] / temperature
                z.scatter_(-1, xf[start:stop], float("-inf"))
                rest[start:stop] = torch.logsumexp(z, dim=-1)
    return rest.reshape(x.shape), lx.squeeze(-1).double().reshape(x.shape)


class Prediction:
    """log p(y) = (logits(y) + c 1[y = x]) / T - log Z at each position, evaluated lazily.

    Args:
        logits: (B, L, K) network output restricted to the K data tokens (not modified).
        x: (B, L) the current tokens; ids >= K (the MDM mask) get no offset.
    """

    def __init__(self, logits: Tensor, x: Tensor, offset: Tensor | None = None, temperature: float = 1.0,
                 _rest: tuple[Tensor, Tensor] | None = None):
        self.logits = logits
        self.k = logits.shape[-1]
        self.x = x
        self.xi = x.clamp(max=self.k - 1)  # index used for the offset (masked positions: offset 0)
        self.c = torch.zeros(x.shape, dtype=torch.float64, device=x.device) if offset is None else offset
        self.temperature = float(temperature)
        self._rest = _rest

    @classmethod
    def from_logp(cls, logp: Tensor, x: Tensor) -> "Prediction":
        """Wrap full log-probabilities (or logits) (B, L, K)."""
        return cls(logp, x)

    # -- derived views (O(B L)) --------------------------------------------------------------------
    def _with(self, offset: Tensor, temperature: float) -> "Prediction":
        rest = self._rest if temperature == self.temperature else None
        return Prediction(self.logits, self.x, offset, temperature, rest)

    def convert(self, source: str, target: str, alpha: float) -> "Prediction":
        """Denoiser <-> LOO at alpha: move the self-evidence delta_t at the current token."""
        if source == target:
            return self
        if {source, target} != {"denoiser", "loo"}:
            raise ValueError(f"can only convert between 'denoiser' and 'loo', got {source!r} -> {target!r}")
        delta = float(self_evidence(torch.tensor(alpha, dtype=torch.float64), self.k))
        sign = 1.0 if target == "denoiser" else -1.0
        offset = self.c + sign * self.temperature * delta
        return self._with(torch.where(self.x < self.k, offset, self.c), self.temperature)

    def temper(self, temperature: float) -> "Prediction":
        """p^(1/T'), renormalised."""
        return self if temperature == 1.0 else self._with(self.c, self.temperature * temperature)

    # -- evaluation ------------------------------------------------------------------------------------
    def _base(self):
        if self._rest is None:
            self._rest = _rest_logsumexp(self.logits, self.xi, self.temperature)
        return self._rest

    def _own(self) -> Tensor:
        """Scaled score of the current token: (logits(x) + c)/T, float64 (B, L)."""
        return (self._base()[1] + self.c) / self.temperature

    def log_z(self) -> Tensor:
        rest, _ = self._base()
        return torch.logaddexp(rest, self._own())

    def log_prob_at(self, tokens: Tensor) -> Tensor:
        """log p(tokens) per position, float64 (B, L)."""
        ti = tokens.clamp(max=self.k - 1)
        l = self.logits.gather(-1, ti.unsqueeze(-1)).squeeze(-1).double()
        s = (l + torch.where(ti == self.xi, self.c, torch.zeros_like(self.c))) / self.temperature
        return s - self.log_z()

    def top2(self):
        """Best token, its log-prob, and the best log-prob among the tokens other than x (B, L).

        Two max reductions over the vocabulary (much faster than ``topk`` on CPU): the best token's
        logit is set to -inf in place for the second one and restored.
        """
        v1, i1 = self.logits.max(dim=-1)
        with torch.no_grad():
            self.logits.scatter_(-1, i1.unsqueeze(-1), float("-inf"))
            v2, i2 = self.logits.max(dim=-1)
            self.logits.scatter_(-1, i1.unsqueeze(-1), v1.unsqueeze(-1))
        v1, v2 = v1.double() / self.temperature, v2.double() / self.temperature
        own = self._own()
        other = torch.where(i1 == self.xi, v2, v1)  # best y != x
        other_id = torch.where(i1 == self.xi, i2, i1)
        log_z = self.log_z()
        best = torch.where(own >= other, self.xi, other_id)
        return best, torch.maximum(own, other) - log_z, other - log_z

    def rows(self, idx, exclude_current: bool = False) -> Tensor:
        """Unnormalised float64 log-probabilities of the positions ``idx`` (a tuple from
        ``nonzero``): (M, K); with ``exclude_current`` the current token gets probability 0."""
        s = self.logits[idx].double()
        s.scatter_add_(-1, self.xi[idx].unsqueeze(-1), self.c[idx].unsqueeze(-1))
        if self.temperature != 1.0:
            s.div_(self.temperature)
        if exclude_current:
            s.scatter_(-1, self.xi[idx].unsqueeze(-1), float("-inf"))
        return s

    def log_probs(self) -> Tensor:
        """All log-probabilities (B, L, K), in the logits' dtype (materialises the full tensor)."""
        s = self.logits.scatter_add(-1, self.xi.unsqueeze(-1), self.c.to(self.logits.dtype).unsqueeze(-1))
        return torch.log_softmax(s / self.temperature, dim=-1)

    def draw(self, where: Tensor, generator, exclude_current: bool = False) -> Tensor:
        """Exact draws at the positions ``where`` (B, L); 0 elsewhere. With ``exclude_current`` the
        draw is conditioned on differing from the current token."""
        out = torch.zeros(where.shape, dtype=torch.long, device=where.device)
        idx = where.nonzero(as_tuple=True)
        n = idx[0].numel()
        rows = max(1, _CHUNK // self.k)
        for start in range(0, n, rows):  # bounded float64 memory however many positions draw
            part = tuple(i[start : start + rows] for i in idx)
            out[part] = _categorical_(self.rows(part, exclude_current), generator)
        return out


def categorical(logp: Tensor, generator) -> Tensor:
    """One exact draw per row of unnormalised log-probabilities ``logp`` (M, K), by float64 inverse
    CDF; returns (M,) int64."""
    return _categorical_(logp.double().clone() if logp.dtype == torch.float64 else logp.double(), generator)


def _categorical_(s: Tensor, generator) -> Tensor:
    """``categorical`` on a float64 tensor the caller owns (overwritten)."""
    if s.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=s.device)
    cdf = s.sub_(s.max(dim=-1, keepdim=True).values).exp_().cumsum_(-1)
    u = torch.rand((s.shape[0], 1), generator=generator, device=s.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=s.shape[-1] - 1)
