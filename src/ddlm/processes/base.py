"""The process protocol: what every forward process owns (docs/maths.md §2).

A process is one class. It owns

- its prior and its corruption, both returning a ``State`` (one state type for every process);
- the predictions a network for it may declare (``predictions``), the default one, and the view
  ("denoiser", "loo" or "score") each of them is for the sampling kernels (``view``), with the exact
  conversions between views that involve the concrete score (``convert_view``);
- the SEDD graph its corruption is (``score_graph``: "uniform", "absorbing" or None), which the
  score-entropy objective and the score kernels read (docs/maths.md §10);
- the training objectives that apply to it (``objectives``, names of ``ddlm.losses.OBJECTIVES``);
- its reverse kernels (``kernels``, filled by ``ddlm.sampling.registry.register_kernel``);
- what ``ddlm.exact`` needs to enumerate it: the per-token likelihood, the set of noisy states and
  the exact prediction of each view.

Every table that lists processes, samplers, predictions or objectives is derived from these
classes; process names are used only by ``REGISTRY``/``get_process`` and by config parsing.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .._checks import check_tokens, check_vocab_size
from ..schedules import LinearSchedule


class State(NamedTuple):
    """A noisy state: the tokens x_t (..., L) and, for processes that carry one, the per-position
    noise tokens u (AUDM); ``noise`` is None otherwise. Unpacks as ``xt, noise = state``."""

    xt: Tensor
    noise: Tensor | None = None

    @property
    def active(self) -> Tensor:
        """AUDM: positions with x_t == u (clean-and-equal or jumped); the others are certainly clean."""
        if self.noise is None:
            raise ValueError("state has no noise tokens: 'active' is defined for absorbing-uniform states only")
        return self.xt == self.noise

    def where(self, mask: Tensor, other: State) -> State:
        """This state where ``mask`` is False and ``other`` where it is True (both fields)."""
        xt = torch.where(mask, other.xt, self.xt)
        noise = None if self.noise is None else torch.where(mask, other.noise, self.noise)
        return State(xt, noise)

    def rows(self, idx) -> State:
        """The rows ``idx`` of the batch."""
        return State(self.xt[idx], None if self.noise is None else self.noise[idx])


#: name -> process class, filled by ``register_process``
REGISTRY: dict[str, type] = {}


def register_process(cls):
    """Class decorator: make a process available by its ``name`` (configs, checkpoints, the CLI)."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"process name must be new and non-empty, got {cls.name!r}")
    REGISTRY[cls.name] = cls
    cls.kernels = {}  # each process class has its own kernel table
    return cls


def get_process(name: str, vocab_size: int, schedule=None, **options):
    """Build a registered process by short name (see ``REGISTRY``); ``options`` are the process's own
    (``Process.from_options``, e.g. D3PM's ``kind`` and ``steps``)."""
    if name not in REGISTRY:
        raise ValueError(f"process must be one of {sorted(REGISTRY)}, got {name!r}")
    return REGISTRY[name].from_options(vocab_size, schedule, **options)


def _uniform(shape, generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


class Process:
    """Base class of the forward processes. Subclasses set the class attributes below and implement
    ``prior``, ``corrupt``, ``token_loglik`` and ``exact_states``."""

    #: short name used in configs and checkpoints
    name: ClassVar[str] = ""
    #: predictions a network may declare (``model.prediction``), the first being the default
    predictions: ClassVar[tuple[str, ...]] = ()
    #: the kernels' view of each prediction: "denoiser", "loo" or "score"
    views: ClassVar[dict[str, str]] = {}
    #: what ddlm's own networks for this process may be trained to output (``model.output``)
    network_outputs: ClassVar[tuple[str, ...]] = ()
    #: the output of a network built without an explicit ``model.output``
    default_output: ClassVar[str] = ""
    #: objective names (``ddlm.losses.OBJECTIVES``) that apply, the first being the ELBO used for bounds
    objectives: ClassVar[tuple[str, ...]] = ()
    #: views ``temperature_on`` may name, the first being the default
    temperature_views: ClassVar[tuple[str, ...]] = ("denoiser",)
    #: whether the network also conditions on per-position noise tokens (``State.noise``)
    has_noise: ClassVar[bool] = False
    #: extra input ids beyond the K data tokens (the mask for MDM)
    extra_input_ids: ClassVar[int] = 0
    #: sampler name -> ``Kernel``; filled by ``ddlm.sampling.registry.register_kernel``
    kernels: ClassVar[dict] = {}
    #: number of discrete time steps T (D3PM), None for a continuous-time process
    steps: int | None = None
    #: the graph of the concrete score (SEDD, docs/maths.md §10): "uniform", "absorbing", or None when
    #: the process has no score view
    score_graph: ClassVar[str | None] = None
    #: the objective whose integral is the NLL bound of a network that outputs a given prediction,
    #: where it is not the process's ELBO (``objectives[0]``): e.g. {"score": "score_entropy"}
    bound_objectives: ClassVar[dict[str, str]] = {}
    #: network-side scalings of a score output (``model.score_scaling``), the first being "none"
    score_scalings: ClassVar[tuple[str, ...]] = ("none",)

    def __init__(self, vocab_size: int, schedule=None):
        self.vocab_size = check_vocab_size("vocab_size", vocab_size)
        self.schedule = LinearSchedule() if schedule is None else schedule
        if not (hasattr(self.schedule, "alpha") and hasattr(self.schedule, "dalpha")):
            raise TypeError(
                f"schedule must provide alpha(t) and dalpha(t), got {type(self.schedule).__name__}"
            )

    @classmethod
    def from_options(cls, vocab_size: int, schedule=None, **options):
        """The process of a run config (``get_process``); a process without options of its own takes none."""
        if options:
            raise ValueError(f"process {cls.name!r} takes no options, got {sorted(options)}")
        return cls(vocab_size, schedule)

    # ---- predictions -----------------------------------------------------------------------------
    @property
    def default_prediction(self) -> str:
        """What a network for this process predicts when it declares nothing (docs/maths.md §3)."""
        return self.predictions[0]

    @property
    def elbo(self) -> str:
        """The objective whose integral is this process's NLL bound."""
        return self.objectives[0]

    def bound_objective(self, prediction: str) -> str:
        """The objective whose integral is the NLL bound of a network that outputs ``prediction``: the
        process's ELBO, or for a score network the score entropy (``bound_objectives``)."""
        self.view(prediction)
        return self.bound_objectives.get(prediction, self.elbo)

    def view(self, prediction: str) -> str:
        """The kernels' view ("denoiser", "loo" or "score") of a declared prediction; ValueError if unknown."""
        if prediction not in self.views:
            raise ValueError(f"prediction must be one of {self.predictions} for {self.label}, got {prediction!r}")
        return self.views[prediction]

    def resolve_prediction(self, model, prediction: str | None = None) -> str:
        """The prediction to use for ``model``: its declaration (``model.prediction``), checked against
        an explicit ``prediction``; a model that declares nothing takes ``prediction`` or, if that is
        None too, ``default_prediction``.

        Raises:
            ValueError: an explicit ``prediction`` contradicts the model's declaration (a different
                view), or either names a prediction the process does not have.
        """
        declared = getattr(model, "prediction", None)
        if declared is not None:
            self.view(declared)
            if prediction is not None and self.view(prediction) != self.view(declared):
                raise ValueError(
                    f"prediction={prediction!r} contradicts the model, which declares model.prediction = "
                    f"{declared!r}; drop the argument or pass prediction={declared!r}"
                )
            return declared
        chosen = self.default_prediction if prediction is None else prediction
        self.view(chosen)
        return chosen

    @property
    def input_vocab_size(self) -> int:
        """Number of distinct input token ids a network for this process sees."""
        return self.vocab_size + self.extra_input_ids

    @property
    def label(self) -> str:
        return self.name.upper() or type(self).__name__

    # ---- schedule --------------------------------------------------------------------------------
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

    def _keep(self, x0: Tensor, t, generator) -> Tensor:
        """Per position, True with probability alpha_t (the token is still clean)."""
        return _uniform(x0.shape, generator, x0.device) < self._alpha_like(t, x0)

    # ---- the forward process (subclasses) ----------------------------------------------------------
    def prior(self, shape, generator=None, device=None) -> State:
        raise NotImplementedError

    def corrupt(self, x0: Tensor, t, generator=None, noise: Tensor | None = None) -> State:
        raise NotImplementedError

    def fix(self, state: State, prompt: Tensor, mask: Tensor) -> State:
        """Clamp the positions where ``mask`` is True to the (clean) ``prompt`` tokens."""
        return State(torch.where(mask, prompt, state.xt), state.noise)

    # ---- training ----------------------------------------------------------------------------------
    def loss(self, objective: str, logits: Tensor, prediction: str, x0: Tensor, state: State, alpha, dalpha, t=None):
        """Per-token loss of ``objective`` for a network that outputs ``prediction`` (docs/maths.md §4).
        ``t``, the times of the batch, is used by discrete-time processes only (D3PM's step n(t))."""
        from .. import losses

        if objective not in self.objectives:
            raise ValueError(f"objective must be one of {self.objectives} for {self.label}, got {objective!r}")
        return losses.compute(objective, logits, output=prediction, x0=x0, xt=state.xt, alpha=alpha,
                              dalpha=dalpha, noise=state.noise, process=self)

    # ---- the concrete score (docs/maths.md §10) -------------------------------------------------------
    def convert_view(self, logits: Tensor, xt: Tensor, alpha, source: str, target: str) -> Tensor:
        """Exact conversion of a network output between two views of this process when one of them is
        the concrete score, materialised as (..., L, K) log-probabilities (or log-scores for the target
        "score"). Processes with a score view override ``_convert_score``.

        Raises:
            ValueError: a view the process does not have, or a process without a score view.
        """
        for name, value in (("source", source), ("target", target)):
            if value not in set(self.views.values()):
                raise ValueError(f"{name} must be one of {sorted(set(self.views.values()))} for {self.label}, "
                                 f"got {value!r}")
        if source == target:
            return logits if source == "score" else torch.log_softmax(logits, dim=-1)
        return self._convert_score(logits, xt, alpha, source, target)

    def _convert_score(self, logits: Tensor, xt: Tensor, alpha, source: str, target: str) -> Tensor:
        raise ValueError(f"{self.label} has no conversion from {source!r} to {target!r}")

    def score_log_scale(self, alpha: Tensor) -> Tensor:
        """The log-offset added to a score network's output under ``score_scaling="noise_level"``
        (float64, alpha's shape); only processes listing that scaling in ``score_scalings`` define it."""
        raise ValueError(f"score_scaling 'noise_level' is not defined for {self.label} "
                         f"(score_scalings = {self.score_scalings})")

    def convert_prediction(self, pred, source: str, target: str, alpha: float):
        """Sampling: the ``target`` view ("denoiser" or "loo") of a lazy ``Prediction`` in view
        ``source`` at alpha; by default the UDM self-evidence shift at the current token (§3)."""
        return pred.convert(source, target, alpha)

    # ---- what ddlm.exact needs (docs/maths.md §7) ---------------------------------------------------
    def token_loglik(self, xt: Tensor, x0: Tensor, alpha: Tensor, noise: Tensor | None = None) -> Tensor:
        """log q_t(x_t^i | x_0^i) for every pair of a batch of x_t (B, L) and of x_0 (N, L): (B, N, L)."""
        raise NotImplementedError

    def exact_states(self, length: int) -> State:
        """Every noisy state of ``length`` positions, as one batch (S, L)."""
        raise NotImplementedError

    def exact_noise_logweight(self, length: int) -> float:
        """log of the probability of a state's extra randomness (AUDM: the law of u); 0 otherwise."""
        return 0.0

    def exact_predictor(self, law, prediction: str):
        """The exact ``prediction`` of ``law`` as ``f(xt, alpha, noise=None) -> logp (..., L, K)``: by
        default the posterior of x_0^i given the whole state (view "denoiser") or given x_t^{-i}
        (view "loo"), from ``token_loglik`` (``ddlm.exact.posterior``), and the concrete score (view
        "score", ``ddlm.exact.score``)."""
        from .. import exact

        view = self.view(prediction)
        if view == "score":  # log p_t(x^{i<-y}) - log p_t(x) from the exact marginals
            return lambda x, a, u=None: exact.score(law, x, a, self)
        loo = view == "loo"
        return lambda x, a, u=None: exact.posterior(law, self, x, a, u, leave_one_out=loo)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, schedule={self.schedule!r})"
