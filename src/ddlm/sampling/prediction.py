"""A lazy view of a model's prediction: what sampling kernels consume, without vocabulary-sized copies
(docs/maths.md §5.10).

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

from .._checks import NonFiniteError
from ..conversions import self_evidence

#: elements per chunk in the pass over the vocabulary (bounds the temporary memory)
_CHUNK = 1 << 20


def _vocab_pass(logits: Tensor, x: Tensor, temperature: float, with_max: bool = True):
    """One chunked pass over the vocabulary. Per position, in float64, shape (B, L):

    - rest: log sum_{y != x} exp(logits(y)/T), exact even when x holds almost all the mass;
    - own: logits(x);
    - other, other_id: max_{y != x} logits(y)/T and its token (None unless ``with_max``).

    At T = 1 the current tokens' logits are set to -inf in place and restored afterwards, so the
    logits are never copied; temporaries are bounded by the chunk size.
    """
    k = logits.shape[-1]
    flat = logits.reshape(-1, k)  # a view whenever the logits are contiguous over the K columns
    xf = x.reshape(-1, 1)
    own = flat.gather(-1, xf)
    n = flat.shape[0]
    rest = torch.empty(n, dtype=torch.float64, device=logits.device)
    other = torch.empty(n, dtype=torch.float64, device=logits.device)
    other_id = torch.empty(n, dtype=torch.long, device=logits.device)
    rows = max(1, _CHUNK // k)
    with torch.no_grad():
        for start in range(0, n, rows):
            sl = slice(start, start + rows)
            z = flat[sl] if temperature == 1.0 else flat[sl] / temperature
            z.scatter_(-1, xf[sl], float("-inf"))
            rest[sl] = torch.logsumexp(z, dim=-1)
            if with_max:
                m, j = z.max(dim=-1)
                other[sl], other_id[sl] = m.double(), j
            if temperature == 1.0:
                z.scatter_(-1, xf[sl], own[sl])  # restore the caller's logits
    shape = x.shape
    if not with_max:
        return rest.reshape(shape), own.squeeze(-1).double().reshape(shape), None, None
    return rest.reshape(shape), own.squeeze(-1).double().reshape(shape), other.reshape(shape), other_id.reshape(shape)


class Prediction:
    """log p(y) = (logits(y) + c 1[y = x]) / T - log Z at each position, evaluated lazily.

    Args:
        logits: (B, L, K) network output restricted to the K data tokens (not modified).
        x: (B, L) the current tokens; ids >= K (the MDM mask) get no offset.
    """

    def __init__(self, logits: Tensor, x: Tensor, offset: Tensor | None = None, temperature: float = 1.0,
                 _rest: tuple | None = None):
        self.logits = logits
        self.k = logits.shape[-1]
        self.x = x
        self.xi = x.clamp(max=self.k - 1)  # index used for the offset (masked positions: offset 0)
        self.c = torch.zeros(x.shape, dtype=torch.float64, device=x.device) if offset is None else offset
        self.temperature = float(temperature)
        self._rest = _rest

    @classmethod
    def from_logp(cls, logp: Tensor, x: Tensor) -> Prediction:
        """Wrap full log-probabilities (or logits) (B, L, K)."""
        return cls(logp, x)

    # -- derived views (O(B L)) --------------------------------------------------------------------
    def _with(self, offset: Tensor, temperature: float) -> Prediction:
        rest = self._rest if temperature == self.temperature else None
        return Prediction(self.logits, self.x, offset, temperature, rest)

    def convert(self, source: str, target: str, alpha: float) -> Prediction:
        """Denoiser <-> LOO at alpha: move the self-evidence delta_t at the current token."""
        if source == target:
            return self
        if {source, target} != {"denoiser", "loo"}:
            raise ValueError(f"can only convert between 'denoiser' and 'loo', got {source!r} -> {target!r}")
        delta = float(self_evidence(torch.tensor(alpha, dtype=torch.float64), self.k))
        sign = 1.0 if target == "denoiser" else -1.0
        offset = self.c + sign * self.temperature * delta
        return self._with(torch.where(self.x < self.k, offset, self.c), self.temperature)

    def temper(self, temperature: float) -> Prediction:
        """p^(1/T'), renormalised."""
        return self if temperature == 1.0 else self._with(self.c, self.temperature * temperature)

    # -- evaluation ------------------------------------------------------------------------------------
    def _base(self, with_max: bool = False):
        """The vocabulary pass (cached); the max over y != x is computed only when asked for."""
        if self._rest is None or (with_max and self._rest[2] is None):
            self._rest = _vocab_pass(self.logits, self.xi, self.temperature, with_max)
        return self._rest

    def _own(self) -> Tensor:
        """Scaled score of the current token: (logits(x) + c)/T, float64 (B, L)."""
        return (self._base()[1] + self.c) / self.temperature

    def log_z(self) -> Tensor:
        rest = self._base()[0]
        return torch.logaddexp(rest, self._own())

    def log_prob_at(self, tokens: Tensor) -> Tensor:
        """log p(tokens) per position, float64 (B, L)."""
        ti = tokens.clamp(max=self.k - 1)
        own = self.logits.gather(-1, ti.unsqueeze(-1)).squeeze(-1).double()
        s = (own + torch.where(ti == self.xi, self.c, torch.zeros_like(self.c))) / self.temperature
        return s - self.log_z()

    def top2(self):
        """Best token, its log-prob, and the best log-prob among the tokens other than x (B, L)."""
        _, _, other, other_id = self._base(with_max=True)
        own = self._own()
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


class Score:
    """The concrete score a kernel consumes (SEDD's kernels, docs/maths.md §10), evaluated lazily.

    ``log_score`` (B, L, K) holds log s_i(y) = log p_t(x^{i<-y}) - log p_t(x) for the K data tokens (never
    copied). At a position holding a data token the value at y = x^i is ignored: log s_i(x^i) = 0 by
    definition. At a position holding another id (the MDM mask, id K) every column is a ratio from that
    state to a clean token and all K count. One chunked pass over the vocabulary (in the score's dtype,
    results in float64) gives the masses below; only positions that draw materialise their row, in float64.
    """

    def __init__(self, log_score: Tensor, x: Tensor):
        self.log_score, self.x, self.k = log_score, x, log_score.shape[-1]
        self.data = x < self.k  # positions holding a data token (their own column is ignored)
        own = log_score.gather(-1, x.clamp(max=self.k - 1).unsqueeze(-1)).squeeze(-1).double()
        self._p = Prediction(log_score, x, torch.where(self.data, -own, torch.zeros_like(own)))

    def log_total(self) -> Tensor:
        """log sum_y s_i(y) over the K data tokens (including s_i(x^i) = 1 at a data token), float64 (B, L)."""
        return self._p.log_z()

    def log_jump(self) -> Tensor:
        """log sum_{y != x^i} s_i(y): the total mass of the moves away from the current state (B, L)."""
        return torch.where(self.data, self._p._base()[0], self.log_total())

    def log_at(self, tokens: Tensor) -> Tensor:
        """log s_i(tokens) per position, float64 (B, L) (0 where ``tokens`` is the current token)."""
        return self._p.log_prob_at(tokens) + self.log_total()

    def rows(self, idx) -> Tensor:
        """Float64 log-scores of the positions ``idx`` (a tuple from ``nonzero``): (M, K), 0 at x^i."""
        return self._p.rows(idx)

    def draw(self, where: Tensor, generator) -> Tensor:
        """Exact draws proportional to s_i(y) over y != x^i at the positions ``where`` (B, L); 0 elsewhere."""
        out = self._p.draw(where & self.data, generator, exclude_current=True)
        if bool((where & ~self.data).any()):
            out = torch.where(self.data, out, self._p.draw(where & ~self.data, generator))
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
    if not bool(torch.isfinite(cdf[:, -1]).all()):  # NaN or infinite logits: never a silent draw of the last id
        raise NonFiniteError("the model's predicted probabilities are NaN or infinite, so no token can be drawn: "
                             "its weights have diverged (or overflow); use an earlier checkpoint of the run")
    u = torch.rand((s.shape[0], 1), generator=generator, device=s.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=s.shape[-1] - 1)
