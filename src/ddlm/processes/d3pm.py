"""D3PM: discrete-time diffusion with transition matrices Q_1..Q_T (Austin et al. 2021; docs/maths.md §9).

Row i of Q_n is q(x_n = . | x_{n-1} = i), the tokens are corrupted independently, and
q(x_n | x_0) = x_0 Qbar_n with Qbar_n = Q_1 ... Q_n. The network is the x0-parameterisation p~(x~ | x_n)
over the K data tokens; the reverse kernel is

    p(x_{n-1} | x_n)  propto  sum_x~ q(x_{n-1}, x_n | x~) p~(x~ | x_n),

which equals the exact per-position reverse marginal when p~ is the leave-one-out posterior (the
"loo" view; L_vb alone is minimised by it) and is biased when p~ is the denoiser.

**Time.** ddlm's training loop, sampler and network use t in [0, 1]. Step n(t) is the smallest n with
CDF(n) >= t, CDF the cumulative law of the training steps (``step_probs``, uniform by default:
n = ceil(t T)), so t uniform in [0, 1] gives steps drawn from ``step_probs`` and the sampler's
uniform grid visits evenly spaced steps. The network is conditioned on alpha(t) = alpha_{n(t)}, a
strictly decreasing code of the step: alphabar_n (the probability that a token was never corrupted)
for uniform and absorbing Q, and by default 1 - (1 - 1e-3) n/T for dense Q (``alphas`` overrides it).
Training needs t_min = 0 (``ddlm.config``), and the loss receives t (``Process.loss(..., t=t)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_logp, check_same_shape, check_tokens
from ..schedules import _check_t
from .base import Process, State, register_process
from .d3pm_matrices import (
    band_adjacency,
    check_adjacency,
    check_transitions,
    gaussian_matrices,
    graph_matrices,
    linear_betas,
)
from .d3pm_transitions import (
    Absorbing,
    Dense,
    Family,
    TransitionError,
    Uniform,
    check_log_alphabar,
    cosine_log_alphabar,
    jsd_log_alphabar,
    matched_log_alphabar,
    on_device,
)

_F64 = torch.float64
_TOL = 1e-12  # t within this (or 8 ulps) above a step boundary belongs to the lower step: grid points land exactly


class _StepTime:
    """The schedule of a D3PM process: alpha(t) = alpha_{n(t)} (see the module docstring)."""

    def __init__(self, process: D3PM):
        self.process = process

    def alpha(self, t) -> Tensor:
        p = self.process
        return p._on("alphas", torch.as_tensor(t).device)[p.step_of(t)]

    def dalpha(self, t) -> Tensor:
        """The slope of the step code over the step's interval (<= 0); unused by D3PM's losses."""
        p = self.process
        n = p.step_of(t).clamp(min=1)
        a, c = p._on("alphas", n.device), p._on("cdf", n.device)
        return -(a[n - 1] - a[n]) / (c[n] - c[n - 1])

    def t_of_alpha(self, alpha) -> Tensor:
        return self.process.cdf[self.process.step_of_alpha(alpha)]

    def __repr__(self) -> str:
        return f"D3PM steps (T={self.process.steps})"


def _vector(name: str, value, size: int, positive: bool = False) -> Tensor:
    """A probability vector of ``size`` entries (non-negative, or positive, summing to 1 within 1e-6)."""
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=_F64)
    v = value.detach().to(_F64).reshape(-1) if value.dim() <= 1 else value
    if v.dim() != 1 or v.shape[0] != size or not bool(torch.isfinite(v).all()):
        raise TransitionError(f"{name} must be a finite vector of {size} probabilities, got shape {tuple(value.shape)}")
    if float(v.min()) < 0 or (positive and float(v.min()) <= 0) or abs(float(v.sum()) - 1) > 1e-6:
        need = "positive" if positive else "non-negative"
        raise TransitionError(f"{name} must be {need} and sum to 1, got min {float(v.min())!r}, sum {float(v.sum())!r}")
    return v / v.sum()


@register_process
class D3PM(Process):
    """D3PM with any transition matrices. ``D3PM(transitions)`` takes a float tensor (T, K', K');
    ``D3PM.uniform``, ``D3PM.absorbing``, ``D3PM.gaussian``, ``D3PM.band`` and
    ``D3PM.nearest_neighbour`` build the standard ones (uniform and absorbing in closed form, for any K).

    Args:
        transitions: (T, K', K') row-stochastic matrices (validated; ``TransitionError`` names the
            step, row and problem). Dense matrices are limited to T K'^2 <= ``DENSE_LIMIT``.
        mask: whether state K' - 1 is an absorbing mask outside the K = K' - 1 data tokens; None
            infers it (true when the last state is absorbing at every step).
        prior: the prior p(x_T) per position, (K',); default: the T-step marginal of a uniform x_0,
            mean_x0 Qbar_T[x0, :] (uniform for uniform Q, all masks when alphabar_T = 0).
        alphas: dense Q only: the step code alpha_0 = 1 > ... > alpha_T >= 0 the network is
            conditioned on; default 1 - (1 - 1e-3) n/T.
        step_probs: (T,) positive probabilities of the training steps (importance sampling); the
            objectives weight step n by 1/step_probs[n], so they stay unbiased. Default uniform.
        hybrid_lambda: lambda of the hybrid objective L_vb + lambda CE (D3PM's default 0.01).
    """

    name = "d3pm"
    predictions = ("loo", "denoiser")
    views = {"loo": "loo", "denoiser": "denoiser"}
    network_outputs = ("loo", "denoiser")
    default_output = "loo"
    objectives = ("d3pm_elbo", "d3pm_hybrid", "d3pm_cross_entropy")
    temperature_views = ("loo", "denoiser")
    #: what ``kind`` may name in ``from_options`` (the config's ``d3pm.kind``)
    KINDS = ("uniform", "absorbing", "gaussian", "band")

    def __init__(self, transitions, *, mask: bool | None = None, prior=None, alphas=None, step_probs=None,
                 hybrid_lambda: float = 0.01):
        if isinstance(transitions, Family):
            family = transitions
        else:
            q = check_transitions(transitions)
            last = torch.zeros(q.shape[1], dtype=_F64)
            last[-1] = 1.0
            if mask is None:
                mask = bool((q[:, -1, :] == last).all())
            if mask and q.shape[1] < 3:
                raise TransitionError(f"transitions with a mask state need K' >= 3 (two data tokens), "
                                      f"got K' = {q.shape[1]}")
            family = Dense(q, bool(mask))
        self.family = family
        self.steps = family.steps
        self.extra_input_ids = 0 if family.mask_id is None else 1
        super().__init__(family.k, _StepTime(self))
        if isinstance(family, Dense):
            code = 1.0 - (1.0 - 1e-3) * torch.arange(self.steps + 1, dtype=_F64) / self.steps if alphas is None \
                else torch.as_tensor(alphas, dtype=_F64).reshape(-1)
            if code.shape[0] != self.steps + 1:
                raise TransitionError(f"alphas must have T + 1 = {self.steps + 1} entries, got {code.shape[0]}")
            check_log_alphabar(torch.log(code), "alphas")
            self.alphas = code
        elif alphas is not None:
            raise TransitionError(f"alphas applies to dense transitions only; {family.kind} Q conditions on alphabar_n")
        else:
            self.alphas = family.log_abar.exp()
        probs = torch.full((self.steps,), 1.0 / self.steps, dtype=_F64) if step_probs is None \
            else _vector("step_probs", step_probs, self.steps, positive=True)
        self.step_probs = probs
        self.cdf = torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(probs, 0)])
        if step_probs is None:
            self.cdf = torch.arange(self.steps + 1, dtype=_F64) / self.steps
        self.cdf[-1] = 1.0
        #: weight of step n (index 1..T) in the objectives: 1 / step_probs[n]
        self.step_weights = torch.cat([torch.zeros(1, dtype=_F64), 1.0 / probs])
        if prior is None:
            self.log_prior = family.default_log_prior()
        else:
            self.log_prior = torch.log(_vector("prior", prior, family.states))
        self._prior_kl = self.family.prior_kl(self.log_prior).clamp_min(0.0)  # (rounding: >= 0)
        if isinstance(hybrid_lambda, bool) or not isinstance(hybrid_lambda, (int, float)) \
                or not (0 <= hybrid_lambda < math.inf):
            raise ValueError(f"hybrid_lambda must be a finite number >= 0, got {hybrid_lambda!r}")
        self.hybrid_lambda = float(hybrid_lambda)

    # ---- constructors ------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, vocab_size: int, steps: int = 1000, schedule=None, **options) -> D3PM:
        """Uniform Q_n = (1 - beta_n) I + beta_n 11^T/K: D3PM's cosine schedule, or alphabar_n =
        schedule.alpha(n/T) for a ddlm ``schedule`` (the matched schedule of ``UniformDiffusion``)."""
        _check_sizes(vocab_size, steps)
        la = cosine_log_alphabar(steps) if schedule is None else matched_log_alphabar(schedule, steps)
        return cls(Uniform(vocab_size, la), **options)

    @classmethod
    def absorbing(cls, vocab_size: int, steps: int = 1000, schedule=None, **options) -> D3PM:
        """Absorbing Q_n (mask id K): D3PM's beta_n = 1/(T - n + 1), i.e. alphabar_n = 1 - n/T, or
        alphabar_n = schedule.alpha(n/T) (the matched schedule of ``MaskedDiffusion``)."""
        _check_sizes(vocab_size, steps)
        la = jsd_log_alphabar(steps) if schedule is None else matched_log_alphabar(schedule, steps)
        return cls(Absorbing(vocab_size, la), **options)

    @classmethod
    def gaussian(cls, vocab_size: int, steps: int = 1000, betas=None, **options) -> D3PM:
        """Discretised Gaussian on ordinal tokens (dense): D3PM's matrices with beta_n linear from 0.02
        to 1 unless ``betas`` (T,) is given."""
        _check_sizes(vocab_size, steps)
        b = linear_betas(steps) if betas is None else torch.as_tensor(betas, dtype=_F64).reshape(-1)
        if b.shape[0] != steps or not bool(((b > 0) & torch.isfinite(b)).all()):
            raise TransitionError(f"betas must be {steps} positive finite numbers, got shape {tuple(b.shape)}")
        return cls(gaussian_matrices(vocab_size, b), mask=False, **options)

    @classmethod
    def band(cls, vocab_size: int, steps: int = 1000, bandwidth: int = 1, **options) -> D3PM:
        """Nearest-neighbour moves between ordinal tokens at most ``bandwidth`` apart (dense, banded
        rates): Q_n = exp(dtau_n R), the slowest mode decaying like D3PM's cosine alphabar_n."""
        _check_sizes(vocab_size, steps)
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or not 1 <= bandwidth < vocab_size:
            raise ValueError(f"bandwidth must be an integer in [1, {vocab_size - 1}], got {bandwidth!r}")
        return cls(graph_matrices(band_adjacency(vocab_size, bandwidth), cosine_log_alphabar(steps)), mask=False,
                   **options)

    @classmethod
    def nearest_neighbour(cls, adjacency: Tensor, steps: int = 1000, **options) -> D3PM:
        """D3PM's nearest-neighbour transitions on any symmetric graph (e.g. k-NN in an embedding space):
        Q_n = exp(dtau_n (A - diag(A 1))), the slowest mode decaying like the cosine alphabar_n."""
        a = check_adjacency(adjacency)
        _check_sizes(a.shape[0], steps)
        return cls(graph_matrices(a, cosine_log_alphabar(steps)), mask=False, **options)

    @classmethod
    def from_options(cls, vocab_size: int, schedule=None, *, kind: str = "uniform", steps: int = 1000,
                     noise_schedule: str = "d3pm", hybrid_lambda: float = 0.01, bandwidth: int = 1) -> D3PM:
        """The process of a run config (``d3pm`` section): ``noise_schedule`` "d3pm" (the kind's own
        default) or "matched" (alphabar_n = schedule.alpha(n/T), uniform and absorbing only)."""
        if kind not in cls.KINDS:
            raise ValueError(f"kind must be one of {cls.KINDS}, got {kind!r}")
        if noise_schedule not in ("d3pm", "matched"):
            raise ValueError(f"noise_schedule must be 'd3pm' or 'matched', got {noise_schedule!r}")
        if noise_schedule == "matched" and kind not in ("uniform", "absorbing"):
            raise ValueError(f"noise_schedule 'matched' applies to kinds 'uniform' and 'absorbing', got kind {kind!r}")
        extra = {"bandwidth": bandwidth} if kind == "band" else {}
        if kind in ("uniform", "absorbing"):
            extra = {"schedule": schedule if noise_schedule == "matched" else None}
        return getattr(cls, kind)(vocab_size, steps, hybrid_lambda=hybrid_lambda, **extra)

    def _on(self, name: str, device) -> Tensor:
        """The table ``name`` (alphas, cdf, step_weights, ...) on ``device``, copied once per device."""
        return on_device(self, name, device)

    # ---- time ----------------------------------------------------------------------------------------
    @property
    def mask_id(self) -> int | None:
        return self.family.mask_id

    @property
    def kind(self) -> str:
        return self.family.kind

    def step_of(self, t) -> Tensor:
        """Integer step n(t) in 0..T of times t in [0, 1] (int64, t's shape): the smallest n with
        CDF(n) >= t; n = ceil(t T) for uniform ``step_probs``."""
        t = _check_t(torch.as_tensor(t))
        tol = max(_TOL, 8 * torch.finfo(t.dtype).eps)  # a float32 t = k/T must land on step k too
        t = t.to(_F64)
        return torch.searchsorted(self._on("cdf", t.device), (t - tol).contiguous()).clamp_(0, self.steps)

    def step_of_alpha(self, alpha) -> Tensor:
        """The step whose code alpha_n equals ``alpha`` exactly (float64 values from ``alpha(t)``)."""
        a = torch.as_tensor(alpha, dtype=_F64)
        table = self.alphas.to(a.device)
        n = torch.searchsorted(-table, (-a).contiguous()).clamp_(0, self.steps)
        if not bool((table[n] == a).all()):
            bad = a[table[n] != a].flatten()[0].item()
            raise ValueError(f"alpha {bad!r} is not one of {self.label}'s step codes alpha_n; pass "
                             "alpha = process.alpha(t) (float64)")
        return n

    def _steps_like(self, t, x0: Tensor) -> Tensor:
        """n(t) broadcast to x0's shape (t: a float, one time per sequence, or broadcastable)."""
        n = self.step_of(t).to(x0.device)
        if n.dim() >= 1 and n.dim() == x0.dim() - 1 and tuple(n.shape) == tuple(x0.shape[:-1]):
            n = n.unsqueeze(-1)
        try:
            return torch.broadcast_to(n, x0.shape)
        except RuntimeError:
            raise ValueError(f"t has shape {tuple(n.shape)}, expected a float, shape {tuple(x0.shape[:-1])} "
                             f"(one time per sequence) or a shape broadcastable to x0's {tuple(x0.shape)}") from None

    # ---- the forward process ---------------------------------------------------------------------------
    def prior(self, shape, generator=None, device=None) -> State:
        """IID draws from the prior p(x_T) (``log_prior``)."""
        cdf = torch.cumsum(self.log_prior.exp(), 0).to(device)
        u = torch.rand(tuple(shape), generator=generator, device=device, dtype=_F64) * cdf[-1]
        return State(torch.searchsorted(cdf, u.reshape(-1), right=True).clamp_(max=cdf.shape[0] - 1).reshape(shape))

    def corrupt(self, x0: Tensor, t, generator=None, noise: Tensor | None = None) -> State:
        """Draw x_n ~ q(x_n | x_0) = x_0 Qbar_n per position, n = n(t) (x_0 itself at n = 0)."""
        if noise is not None:
            raise ValueError(f"noise must be None for {self.label} (it has no noise tokens)")
        self._check_x0(x0)
        n = self._steps_like(t, x0)
        return State(self.family.sample_forward(x0, n, generator))

    def forward(self, x0: Tensor, t) -> Tensor:
        """log q(x_t = . | x_0) = log Qbar_t[x_0, :] for integer steps t in 0..T: (..., L, K')."""
        self._check_x0(x0)
        n = self._int_steps(t, x0, low=0)
        return self.family.log_forward(x0.reshape(-1), n.reshape(-1)).reshape(*x0.shape, -1)

    def posterior(self, x0: Tensor, xt: Tensor, t) -> Tensor:
        """log q(x_{t-1} = . | x_t, x_0) for integer steps t in 1..T: (..., L, K')."""
        self._check_x0(x0)
        check_same_shape("xt", xt, "x0", x0)
        check_tokens("xt", xt, self.input_vocab_size)
        n = self._int_steps(t, x0).reshape(-1)
        col = self.family.log_column(xt.reshape(-1), n - 1, n)
        lq = col + self.family.log_forward(x0.reshape(-1), n - 1)
        return (lq - torch.logsumexp(lq, -1, keepdim=True)).reshape(*x0.shape, -1)

    def reverse(self, logp: Tensor, xt: Tensor, t, s=None) -> Tensor:
        """The x0-parameterised reverse kernel log p(x_s = . | x_t) propto
        log sum_x~ Qbar_s[x~, .] Qbar_{s->t}[., x_t] p~(x~), for integer steps s < t (s = t - 1 by
        default); ``logp`` (..., L, K) is p~. Shape (..., L, K')."""
        check_logp(logp, xt)
        check_tokens("xt", xt, self.input_vocab_size)
        if logp.shape[-1] != self.vocab_size:
            raise ValueError(f"logp has {logp.shape[-1]} columns, expected K = {self.vocab_size}")
        n = self._int_steps(t, xt).reshape(-1)
        m = n - 1 if s is None else torch.broadcast_to(torch.as_tensor(s, device=n.device), xt.shape).reshape(-1)
        if bool((m < 0).any()) or bool((m >= n).any()):
            raise ValueError(f"s must satisfy 0 <= s < t, got s in [{int(m.min())}, {int(m.max())}]")
        lp = torch.log_softmax(logp.reshape(-1, logp.shape[-1]).to(torch.promote_types(logp.dtype, torch.float32)), -1)
        out = self.family.log_column(xt.reshape(-1), m, n, lp.dtype) + self.family.log_predicted(lp, m)
        return (out - torch.logsumexp(out, -1, keepdim=True)).reshape(*xt.shape, -1)

    def cumulative(self, t: int, s: int = 0) -> Tensor:
        """Qbar_{s->t} = Q_{s+1} ... Q_t as a dense (K', K') float64 matrix (small K' only)."""
        if self.family.states > 4096:
            raise ValueError(f"cumulative builds a dense (K', K') matrix; K' = {self.family.states} > 4096")
        if not (0 <= s <= t <= self.steps):
            raise ValueError(f"steps must satisfy 0 <= s <= t <= T = {self.steps}, got s={s!r}, t={t!r}")
        if isinstance(self.family, Dense):
            return self.family.skip(s, t).exp()
        eye = torch.arange(self.family.states)
        return self.family.log_column(eye, torch.full_like(eye, s), torch.full_like(eye, t)).exp().T

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x_0) || p(x_T)) per position, shape x0.shape, float64 nats."""
        self._check_x0(x0)
        return self._on("_prior_kl", x0.device)[x0]

    def _int_steps(self, t, x0: Tensor, low: int = 1) -> Tensor:
        """Integer steps ``t`` (int or integer tensor) broadcast to x0's shape, checked in [low, T]."""
        n = torch.as_tensor(t, device=x0.device)
        if n.is_floating_point() or n.dtype == torch.bool:
            raise TypeError(f"t must hold integer steps (int64), got dtype {n.dtype}")
        if n.numel() and (int(n.min()) < low or int(n.max()) > self.steps):
            bad = int(n.min()) if int(n.min()) < low else int(n.max())
            raise ValueError(f"t holds step {bad}, expected integer steps in [{low}, {self.steps}] (T = {self.steps})")
        try:
            return torch.broadcast_to(n.long(), x0.shape)
        except RuntimeError:
            raise ValueError(f"t has shape {tuple(n.shape)}, expected a shape broadcastable to x0's "
                             f"{tuple(x0.shape)}") from None

    # ---- views ---------------------------------------------------------------------------------------
    def convert(self, logp: Tensor, xt: Tensor, t, source: str, target: str) -> Tensor:
        """Denoiser <-> LOO at integer steps t: d(x~) propto r(x~) Qbar_t[x~, x_t] (docs/maths.md §9)."""
        if source == target:
            return logp
        if {source, target} != {"denoiser", "loo"}:
            raise ValueError(f"can only convert between 'denoiser' and 'loo', got {source!r} -> {target!r}")
        n = self._int_steps(t, xt, low=0).reshape(-1)
        flat = torch.log_softmax(logp.reshape(-1, logp.shape[-1]), -1)
        lik = self.family.log_forward_column(xt.reshape(-1), n, flat.dtype)
        if target == "denoiser":
            out = torch.log_softmax(flat + lik, -1)
        else:  # where x_t rules x~ out, the LOO is not identified: no mass there
            none = torch.full_like(flat, float("-inf"))
            out = torch.log_softmax(torch.where(lik > float("-inf"), flat - lik, none), -1)
        return out.reshape(logp.shape)

    def convert_prediction(self, pred, source: str, target: str, alpha: float):
        """Sampling's view conversion: the uniform family's is the UDM one at alpha = alphabar; at the
        masked positions of the absorbing family the two views coincide (the kernel reads no other
        position); dense Q converts exactly, materialising the prediction."""
        if source == target or self.kind == "absorbing":
            return pred
        if self.kind == "uniform":
            return pred.convert(source, target, alpha)
        from ..sampling.prediction import Prediction

        n = int(self.step_of_alpha(alpha))
        return Prediction.from_logp(self.convert(pred.log_probs().double(), pred.x, n, source, target), pred.x)

    # ---- training ------------------------------------------------------------------------------------
    def loss(self, objective, logits, prediction, x0, state, alpha, dalpha, t=None):
        """Per-token loss of a D3PM objective (``ddlm.losses``: ``d3pm_elbo``, ``d3pm_hybrid``,
        ``d3pm_cross_entropy``) at the steps n(t); a network output other than the objective's view is
        converted exactly first (``convert``). ``alpha``/``dalpha`` are not used: D3PM needs ``t``."""
        from .. import losses

        if objective not in self.objectives:
            raise ValueError(f"objective must be one of {self.objectives} for {self.label}, got {objective!r}")
        if t is None:
            raise ValueError(f"t is required for {self.label} (its objectives are per integer step n(t)), got None")
        fn, wants = losses.OBJECTIVES[objective]
        n = self._steps_like(t, x0)
        self.view(prediction)
        logp = self.convert(logits, state.xt, n, prediction, wants) if prediction != wants else logits
        return fn(logp, x0, state.xt, n, self)

    # ---- what ddlm.exact needs -----------------------------------------------------------------------
    def token_loglik(self, xt, x0, alpha, noise=None):
        """log Qbar_n[x_0^i, x_t^i] for every pair, n the step of ``alpha`` (one per x_t row): (B, N, L)."""
        n = self.step_of_alpha(torch.as_tensor(alpha, dtype=_F64).reshape(-1)).to(xt.device)
        b, length = xt.shape
        col = self.family.log_forward_column(xt.reshape(-1), n.repeat_interleave(length)).reshape(b, length, -1)
        return col[:, torch.arange(length, device=xt.device)[None, :], x0]

    def exact_states(self, length: int) -> State:
        from ..exact import all_sequences

        return State(all_sequences(self.input_vocab_size, length))

    def __repr__(self) -> str:
        return (f"D3PM(kind={self.kind!r}, vocab_size={self.vocab_size}, states={self.family.states}, "
                f"steps={self.steps})")


def _check_sizes(vocab_size, steps) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
