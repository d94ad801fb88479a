"""Transition families of D3PM (docs/maths.md §9): the per-step matrices Q_n (n = 1..T) and everything
the process needs from them, in log space, per position.

Row i of Q_n is q(x_n = . | x_{n-1} = i); Qbar_n = Q_1 ... Q_n and Qbar_{s->t} = Q_{s+1} ... Q_t. Three
families share one interface:

- ``Uniform``: Q_n = (1 - beta_n) I + beta_n 11^T / K, closed forms through alphabar_n = prod (1 - beta);
- ``Absorbing``: Q_n = (1 - beta_n) I + beta_n 1 e_m^T on the K data rows, mask m = K absorbing; closed forms;
- ``Dense``: any stack of (K', K') matrices (discretised Gaussian, nearest-neighbour, user matrices),
  kept as float64 tables (small K' only: ``DENSE_LIMIT``).

No family builds a (K, K) matrix unless it is dense. Per-position methods take token ids (N,) and
steps (N,) int64 and return (N, K') log-probabilities in the dtype of their float input (float64 when
there is none). ``dense()`` gives the (T, K', K') matrices of any family for the exact oracle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_F64 = torch.float64
#: the largest T * K'^2 a dense family may hold (two float64 tables of this size)
DENSE_LIMIT = 1 << 25


class TransitionError(ValueError):
    """A transition matrix, schedule or prior that does not define a D3PM process."""


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x <= 0, accurate on both sides of -log 2 (-inf at x = 0)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _onehot_log(idx: Tensor, width: int, value: Tensor, dtype) -> Tensor:
    """(N, width) filled with -inf, ``value`` (N,) at column ``idx``."""
    out = torch.full((idx.shape[0], width), float("-inf"), dtype=dtype, device=idx.device)
    return out.scatter(1, idx.unsqueeze(1), value.to(dtype).unsqueeze(1))


def on_device(obj, name: str, device) -> Tensor:
    """The tensor attribute ``name`` of ``obj`` on ``device``, copied once per device (a table of a
    transition family or of a process; these never change after construction)."""
    cache = obj.__dict__.setdefault("_device_tables", {})
    key = (name, str(device))
    if key not in cache:
        cache[key] = getattr(obj, name).to(device)
    return cache[key]


def _uniforms(like: Tensor, generator) -> Tensor:
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=_F64)


def categorical(logw: Tensor, generator) -> Tensor:
    """One exact float64 inverse-CDF draw per row of unnormalised log-weights (N, M)."""
    if logw.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logw.device)
    w = (logw.double() - logw.double().max(dim=-1, keepdim=True).values).exp()
    cdf = w.cumsum(-1)
    u = torch.rand((w.shape[0], 1), generator=generator, device=w.device, dtype=_F64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=w.shape[-1] - 1)


# ---- schedules -----------------------------------------------------------------------------------

def cosine_log_alphabar(steps: int) -> Tensor:
    """D3PM's cosine schedule (uniform Q): f(n) = cos((n/T + 0.008)/1.008 pi/2),
    beta_n = min(1 - f(n)/f(n-1), 0.999), log alphabar_n = sum_{s<=n} log(1 - beta_s); (T + 1,)."""
    n = torch.arange(steps + 1, dtype=_F64) / steps
    f = torch.cos((n + 0.008) / 1.008 * math.pi / 2)
    beta = torch.clamp(1.0 - f[1:] / f[:-1], max=0.999)
    return torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(torch.log1p(-beta), 0)])


def jsd_log_alphabar(steps: int) -> Tensor:
    """D3PM's absorbing schedule beta_n = 1/(T - n + 1): alphabar_n = (T - n)/T exactly; (T + 1,)."""
    n = torch.arange(steps + 1, dtype=_F64)
    return torch.log((steps - n) / steps)


def matched_log_alphabar(schedule, steps: int) -> Tensor:
    """alphabar_n = alpha(n/T) of a continuous ddlm schedule (``ddlm.schedules``), alphabar_0 = 1."""
    a = torch.as_tensor(schedule.alpha(torch.arange(steps + 1, dtype=_F64) / steps), dtype=_F64).clone()
    if abs(float(a[0]) - 1.0) > 1e-12:
        raise TransitionError(f"schedule must have alpha(0) = 1, got {float(a[0])!r}")
    a[0] = 1.0
    return torch.log(a)


def check_log_alphabar(log_abar: Tensor, name: str = "schedule") -> Tensor:
    """Require alphabar_0 = 1 > alphabar_1 > ... > alphabar_T >= 0 (strictly decreasing)."""
    a = log_abar.exp()
    if log_abar.dim() != 1 or log_abar.shape[0] < 2 or bool(torch.isnan(a).any()) or float(log_abar[0]) != 0.0:
        raise TransitionError(f"{name} must give alphabar_0 = 1 and T >= 1 steps, got {a.tolist()[:4]}...")
    if not bool((a[1:] < a[:-1]).all()) or float(a[-1]) < 0:
        bad = int((a[1:] >= a[:-1]).nonzero()[0, 0]) + 1
        raise TransitionError(f"{name} must make alphabar_n strictly decreasing in n (D3PM maps steps to "
                              f"alphabar and back), got alphabar_{bad - 1} = {float(a[bad - 1])!r} <= "
                              f"alphabar_{bad} = {float(a[bad])!r}")
    return log_abar


# ---- the families --------------------------------------------------------------------------------

class Family:
    """Interface of a transition family (see the module docstring)."""

    kind = ""
    k: int  # data tokens
    states: int  # K' (K, or K + 1 with a mask)
    mask_id: int | None
    steps: int

    def _on(self, name: str, device) -> Tensor:
        return on_device(self, name, device)


class _Closed(Family):
    """Uniform and absorbing: everything is a function of alphabar_n (``log_abar``, (T + 1,) float64)."""

    def __init__(self, k: int, log_abar: Tensor):
        self.k = k
        self.log_abar = check_log_alphabar(log_abar.to(_F64))
        self.log_1m_abar = _log1mexp(self.log_abar)
        self.steps = log_abar.shape[0] - 1

    def _ab(self, n: Tensor, dtype):
        la = self._on("log_abar", n.device)[n]
        return la.to(dtype), _log1mexp(la).to(dtype)

    def _rho(self, s: Tensor, t: Tensor, dtype):
        """log rho and log(1 - rho), rho = alphabar_t / alphabar_s (1 when s = t)."""
        la = self._on("log_abar", s.device)
        lr = torch.where(s == t, torch.zeros_like(la[t]), la[t] - la[s])
        return lr.to(dtype), _log1mexp(lr).to(dtype)

    def betas(self) -> Tensor:
        """beta_n = 1 - alphabar_n / alphabar_{n-1}, (T,) float64."""
        return -torch.expm1(self.log_abar[1:] - self.log_abar[:-1])


class Uniform(_Closed):
    kind = "uniform"
    mask_id = None

    @property
    def states(self) -> int:
        return self.k

    def _two(self, x, la, l1, dtype):
        """log(a 1[j = x] + (1 - a)/K) over j, with log a = la, log(1 - a) = l1 per row."""
        bulk = l1 - math.log(self.k)
        out = bulk.unsqueeze(1).expand(-1, self.k).clone()
        return out.scatter(1, x.unsqueeze(1), torch.logaddexp(la, bulk).unsqueeze(1))

    def log_forward(self, x0, n, dtype=_F64):
        return self._two(x0, *self._ab(n, dtype), dtype)

    def default_log_prior(self) -> Tensor:
        """mean_x0 Qbar_T[x0, :]: uniform."""
        return torch.full((self.k,), -math.log(self.k), dtype=_F64)

    def log_forward_column(self, x, n, dtype=_F64):
        return self._two(x, *self._ab(n, dtype), dtype)  # symmetric

    def log_column(self, x, s, t, dtype=_F64):
        return self._two(x, *self._rho(s, t, dtype), dtype)

    def log_predicted(self, logp, n):
        la, l1 = self._ab(n, logp.dtype)
        return torch.logaddexp(la.unsqueeze(1) + logp, (l1 - math.log(self.k)).unsqueeze(1))

    def sample_forward(self, x0, n, generator):
        keep = _uniforms(x0, generator) < self._on("log_abar", x0.device)[n].exp()
        u = torch.randint(self.k, x0.shape, generator=generator, device=x0.device)
        return torch.where(keep, x0, u)

    def dense(self) -> Tensor:
        b = self.betas()[:, None, None]
        return (1 - b) * torch.eye(self.k, dtype=_F64) + b / self.k

    def prior_kl(self, log_prior: Tensor) -> Tensor:
        """KL(q(x_T | x_0) || prior) for each x_0: the row is b + a 1[j = x_0], b = (1 - a)/K."""
        a, lb = float(self.log_abar[-1].exp()), float(self.log_1m_abar[-1]) - math.log(self.k)
        b = math.exp(lb)
        neg_ent = (a + b) * math.log(a + b) + ((self.k - 1) * b * lb if b > 0 else 0.0)
        cross = a * log_prior[: self.k] + (b * log_prior.sum() if b > 0 else 0.0)
        return neg_ent - cross


class Absorbing(_Closed):
    kind = "absorbing"

    @property
    def states(self) -> int:
        return self.k + 1

    @property
    def mask_id(self) -> int:
        return self.k

    def _data_or_mask(self, x, l_data, l_mask, dtype):
        """(N, K + 1): -inf but ``l_data`` at column x and ``l_mask`` at the mask column."""
        out = _onehot_log(x, self.k + 1, l_data, dtype)
        return out.scatter(1, torch.full_like(x, self.k).unsqueeze(1), l_mask.unsqueeze(1))

    def log_forward(self, x0, n, dtype=_F64):
        la, l1 = self._ab(n, dtype)
        return self._data_or_mask(x0, la, l1, dtype)

    def default_log_prior(self) -> Tensor:
        """mean_x0 Qbar_T[x0, :]: alphabar_T / K on each data token, 1 - alphabar_T on the mask."""
        data = torch.full((self.k,), float(self.log_abar[-1]) - math.log(self.k), dtype=_F64)
        return torch.cat([data, self.log_1m_abar[-1:]])

    def log_forward_column(self, x, n, dtype=_F64):
        la, l1 = self._ab(n, dtype)
        data = _onehot_log(x.clamp(max=self.k - 1), self.k, la, dtype)
        return torch.where((x == self.k).unsqueeze(1), l1.unsqueeze(1).expand(-1, self.k), data)

    def log_column(self, x, s, t, dtype=_F64):
        lr, l1 = self._rho(s, t, dtype)
        data = _onehot_log(x.clamp(max=self.k - 1), self.k + 1, lr, dtype)
        mask = torch.cat([l1.unsqueeze(1).expand(-1, self.k), torch.zeros_like(l1).unsqueeze(1)], 1)
        return torch.where((x == self.k).unsqueeze(1), mask, data)

    def log_predicted(self, logp, n):
        la, l1 = self._ab(n, logp.dtype)
        return torch.cat([la.unsqueeze(1) + logp, l1.unsqueeze(1)], 1)

    def sample_forward(self, x0, n, generator):
        keep = _uniforms(x0, generator) < self._on("log_abar", x0.device)[n].exp()
        return torch.where(keep, x0, torch.full_like(x0, self.k))

    def dense(self) -> Tensor:
        b = self.betas()[:, None, None]
        q = (1 - b) * torch.eye(self.k + 1, dtype=_F64)
        q[:, :, self.k] += b[:, :, 0]
        q[:, self.k, self.k] = 1.0
        return q

    def prior_kl(self, log_prior: Tensor) -> Tensor:
        la, l1 = self.log_abar[-1], self.log_1m_abar[-1]
        data = torch.where(la > float("-inf"), la.exp() * (la - log_prior[: self.k]), torch.zeros(self.k, dtype=_F64))
        mask = l1.exp() * (l1 - log_prior[self.k]) if float(l1) > float("-inf") else torch.zeros((), dtype=_F64)
        return data + mask


class Dense(Family):
    """Any stack of row-stochastic (K', K') matrices, float64; cumulative products by matrix products."""

    kind = "dense"

    def __init__(self, q: Tensor, mask: bool):
        t, kp, _ = q.shape
        if t * kp * kp > DENSE_LIMIT:
            raise TransitionError(f"transitions has T * K'^2 = {t * kp * kp} entries, above the dense limit "
                                  f"{DENSE_LIMIT}; use D3PM.uniform or D3PM.absorbing (closed forms) for large "
                                  "vocabularies, or fewer steps")
        self.q = q.to(_F64)
        self.steps, self.states = t, kp
        self.mask_id = kp - 1 if mask else None
        self.k = kp - 1 if mask else kp
        qbar = [torch.eye(kp, dtype=_F64)]
        for n in range(t):
            qbar.append((qbar[-1] @ self.q[n]).clamp_(0.0, 1.0))
        self.log_qbar = torch.log(torch.stack(qbar))  # (T + 1, K', K')
        self._skip: dict = {}

    def skip(self, s: int, t: int) -> Tensor:
        """Qbar_{s->t} = Q_{s+1} ... Q_t (identity when s = t), cached."""
        if (s, t) not in self._skip:
            m = torch.eye(self.states, dtype=_F64)
            for n in range(s, t):
                m = m @ self.q[n]
            self._skip[(s, t)] = torch.log(m.clamp_(0.0, 1.0))
        return self._skip[(s, t)]

    def log_forward(self, x0, n, dtype=_F64):
        return self._on("log_qbar", x0.device)[n, x0].to(dtype)

    def default_log_prior(self) -> Tensor:
        """mean_x0 Qbar_T[x0, :] over the K data rows."""
        return torch.logsumexp(self.log_qbar[-1, : self.k], 0) - math.log(self.k)

    def log_forward_column(self, x, n, dtype=_F64):
        cols = self._on("log_qbar", x.device)[n, : self.k, :]  # (N, K, K')
        return cols.gather(2, x.view(-1, 1, 1).expand(-1, self.k, 1))[..., 0].to(dtype)

    def log_column(self, x, s, t, dtype=_F64):
        key = s * (self.steps + 1) + t
        pairs = [int(key[0])] if bool((key == key[0]).all()) else torch.unique(key).tolist()
        if len(pairs) == 1:  # (sampling: one step for every position)
            return self.skip(*divmod(pairs[0], self.steps + 1)).to(x.device)[:, x].T.to(dtype)
        out = torch.empty((x.shape[0], self.states), dtype=dtype, device=x.device)
        for pair in pairs:
            rows = (key == pair).nonzero().squeeze(1)
            out[rows] = self.skip(*divmod(pair, self.steps + 1)).to(x.device)[:, x[rows]].T.to(dtype)
        return out

    def log_predicted(self, logp, n):
        """log sum_x~ p~(x~) Qbar_n[x~, .]: a product of exponentials shifted by the row maximum of
        log p~ and the column maximum of log Qbar_n (every factor <= 1, no cancellation), one step
        value at a time."""
        out = logp.new_empty((logp.shape[0], self.states))
        values = [int(n[0])] if bool((n == n[0]).all()) else torch.unique(n).tolist()
        for m in values:
            idx = None if len(values) == 1 else (n == m).nonzero().squeeze(1)
            lq = self._on("log_qbar", logp.device)[m, : self.k].to(logp.dtype)
            d = lq.max(0).values
            d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
            rows = logp if idx is None else logp[idx]
            c = rows.max(-1, keepdim=True).values.detach()
            val = torch.log(torch.exp(rows - c) @ torch.exp(lq - d)) + c + d
            if idx is None:
                return val
            out[idx] = val
        return out

    def sample_forward(self, x0, n, generator):
        flat = x0.reshape(-1)
        return categorical(self.log_forward(flat, n.reshape(-1)), generator).reshape(x0.shape)

    def dense(self) -> Tensor:
        return self.q

    def prior_kl(self, log_prior: Tensor) -> Tensor:
        lq = self.log_qbar[-1, : self.k]
        terms = torch.where(lq > float("-inf"), lq.exp() * (lq - log_prior), torch.zeros_like(lq))
        return terms.sum(-1)
