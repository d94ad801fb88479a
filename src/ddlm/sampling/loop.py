"""The sampling loop shared by every process, kernel and corrector: ``ddlm.sample`` (docs/maths.md §5, §6).

The loop knows no process or sampler by name: the process gives the prior, the prompt clamping and
the views of the model's prediction; the sampler is a registered ``Kernel`` (``ddlm.sampling.registry``)
called once per step; a corrector and a remasking schedule are step objects it calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_tokens
from ..processes import REGISTRY, State
from . import kernels as _kernels  # noqa: F401  (registers the built-in samplers)
from .options import check_options, check_process
from .prediction import Prediction, Score
from .registry import Step
from .remasking import RemaskingSchedule


def _samplers_table() -> dict:
    return {name: {k: v.consumes for k, v in cls.kernels.items()} for name, cls in REGISTRY.items()}


def __getattr__(attr):  # derived tables, kept for scripts that read them
    if attr == "SAMPLERS":
        return _samplers_table()
    if attr == "PREDICTIONS":
        return {name: cls.predictions for name, cls in REGISTRY.items()}
    raise AttributeError(attr)


@dataclass
class SampleInfo:
    """What a call to ``ddlm.sample`` did."""

    nfe: int  # forward passes actually made (predictor + corrector)
    nfe_budget: int
    predictor_steps: int
    corrected_steps: int
    corrector_sweeps: int


def split_nfe(nfe: int, sweeps: int) -> tuple[int, int]:
    """(predictor steps, corrected steps) for a budget of nfe passes with ``sweeps`` corrector sweeps.

    The first floor((nfe - 1)/(1 + c)) predictor steps are corrected and nfe - c floor(...) predictor
    steps are made, so that predictor + corrector passes add up to nfe.
    """
    corrected = (nfe - 1) // (1 + sweeps) if sweeps else 0
    return nfe - sweeps * corrected, corrected


def top_p_filter(logp: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (per position), renormalised."""
    if top_p >= 1.0:
        return logp
    sorted_lp, order = logp.sort(dim=-1, descending=True)
    cum = sorted_lp.exp().cumsum(-1)
    drop_sorted = (cum - sorted_lp.exp()) >= top_p  # mass before this token already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)


def _check_prompt(prompt, prompt_mask, shape, k, device):
    if prompt is None and prompt_mask is None:
        return None, None
    if prompt is None or prompt_mask is None:
        raise ValueError("prompt and prompt_mask must be given together")
    if tuple(prompt.shape) != shape:
        raise ValueError(f"prompt has shape {tuple(prompt.shape)}, expected (num_samples, length) = {shape}")
    if tuple(prompt_mask.shape) != shape:
        raise ValueError(f"prompt_mask has shape {tuple(prompt_mask.shape)}, expected (num_samples, length) = {shape}")
    if prompt_mask.dtype != torch.bool:
        raise TypeError(f"prompt_mask must be a bool tensor, got dtype {prompt_mask.dtype}")
    check_tokens("prompt", torch.where(prompt_mask, prompt, torch.zeros_like(prompt)), k)
    return prompt.to(device), prompt_mask.to(device)


class _Model:
    """Calls the network on a state, checks its output, keeps the K data columns, and caches by input."""

    def __init__(self, model, k, cache):
        self.model, self.k, self.cache = model, k, cache
        self.calls = 0
        self._last = None  # (state, logp) of the previous call

    def __call__(self, state: State, t: float) -> Tensor:
        rows = None
        if self.cache and self._last is not None:
            last, lp = self._last
            changed = (state.xt != last.xt).any(-1)
            if state.noise is not None:
                changed |= (state.noise != last.noise).any(-1)
            if not bool(changed.any()):
                return lp
            rows = changed.nonzero().squeeze(-1)
        part = state if rows is None else state.rows(rows)
        xi = part.xt
        tt = torch.full((xi.shape[0],), float(t), dtype=torch.float64, device=xi.device)
        out = self.model(xi, tt, part.noise) if part.noise is not None else self.model(xi, tt)
        self.calls += 1
        want = (xi.shape[0], xi.shape[1])
        if not isinstance(out, Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != want or out.shape[-1] < self.k:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"model output has shape {got}, expected logits of shape ({want[0]}, {want[1]}, V) "
                f"with V >= K = {self.k}"
            )
        logp = out[..., : self.k]  # raw logits of the data tokens; normalised lazily by Prediction
        if rows is not None:
            logp = self._last[1].clone().index_copy_(0, rows, logp.to(self._last[1].dtype))
        if self.cache:
            self._last = (State(state.xt.clone(), None if state.noise is None else state.noise.clone()), logp)
        return logp


def _view(logits, x, at, have, want, temperature, temperature_on, top_p, process=None):
    """The view a kernel consumes, from the model's logits: temperature on the chosen view, then
    conversion to the consumed one, then top-p (which materialises the full distribution).

    Denoiser <-> LOO is a per-position offset of the logits (lazy ``Prediction``), converted by
    ``process.convert_prediction`` (the UDM self-evidence shift when no process is given; D3PM's own
    for discrete time). A conversion from or to the concrete score is not, in general (docs/maths.md
    §3, §10): it goes through the process's exact ``convert_view`` and materialises a (B, L, K) tensor
    once per step, which is accepted for score networks and score kernels (``process`` is then
    required). A kernel that consumes the score gets a ``Score``.
    """
    if have == "score" and (want != "score" or temperature != 1.0):
        target = temperature_on if temperature != 1.0 else want
        logits, have = process.convert_view(logits, x, at, "score", target), target
    if want == "score":
        if temperature != 1.0:
            logits = Prediction(logits, x).convert(have, temperature_on, at).temper(temperature).log_probs()
            have = temperature_on
        if have != "score":
            logits = process.convert_view(logits, x, at, have, "score")
        return Score(logits, x)
    convert = (process.convert_prediction if process is not None
               else (lambda p, a, b, alpha: p.convert(a, b, alpha)))
    pred = Prediction(logits, x)
    if temperature != 1.0:
        pred = convert(pred, have, temperature_on, at).temper(temperature)
        have = temperature_on
    pred = convert(pred, have, want, at)
    if top_p < 1.0:
        pred = Prediction.from_logp(top_p_filter(pred.log_probs(), top_p), x)
    return pred


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@torch.no_grad()
def sample(
    model,
    process,
    num_samples: int,
    length: int,
    nfe: int,
    *,
    prediction: str | None = None,
    sampler: str = "ancestral",
    corrector=None,
    temperature: float = 1.0,
    temperature_on: str | None = None,
    top_p: float = 1.0,
    prompt: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    time_conditioned: bool = True,
    generator: torch.Generator | None = None,
    return_info: bool = False,
    remasking: RemaskingSchedule | None = None,
    device=None,
    progress: bool = False,
):
    """Draw ``num_samples`` sequences of ``length`` tokens with at most ``nfe`` forward passes.

    Args:
        model: callable ``model(xt, t, noise=None) -> logits (B, L, V)``, V >= K (extra columns are
            ignored); ``t`` is a (B,) float64 tensor, ``noise`` the state's noise tokens (AUDM; else
            not passed). A model declares what it predicts in ``model.prediction``.
        process: a ddlm process (``MaskedDiffusion``, ``UniformDiffusion``, ``AbsorbingUniformDiffusion``, ...).
        num_samples, length: output shape.
        nfe: budget of forward passes (predictor + corrector); the time grid is uniform in t.
        prediction: what the model predicts, one of ``process.predictions``. Default: the model's own
            declaration ``model.prediction``; a model that declares nothing is taken to predict
            ``process.default_prediction`` (the LOO for UDM, the denoiser for MDM, the posterior for
            AUDM). A value that contradicts the model's declaration raises ValueError.
        sampler: a sampler registered for the process (``ddlm.sampling.registry.samplers(process)``):
            MDM "ancestral" | "remdm" | "confidence"; UDM "ancestral" (plug-in bridge fed the
            LOO) | "x0" (D3PM form with the denoiser) | "max_coupling" | "confidence" |
            "bridge_raw_denoiser" (a deliberately wrong ablation) | "tau_leaping"; AUDM "ancestral"
            (carry-over) | "reaudm" | "confidence"; MDM and UDM also "sedd_euler" | "sedd_tweedie"
            (SEDD's samplers, fed the concrete score).
        corrector: a ``GibbsCorrector`` (UDM), or any corrector step object.
        temperature: p^(1/T) on the view given by ``temperature_on`` (one of
            ``process.temperature_views``; default the first: the LOO for UDM, the denoiser otherwise).
        top_p: nucleus filtering of the prediction the kernel consumes (a distribution: not for the
            samplers that consume the score).
        prompt, prompt_mask: (num_samples, length); where the mask is True the token is fixed to the
            prompt's for the whole trajectory (AUDM: marked certainly clean by its noise token).
        time_conditioned: False for a model that ignores t (MDM): rows whose input did not change
            reuse the last prediction instead of a forward pass.
        generator: every random draw goes through it; the same seed gives identical samples.
        return_info: also return a ``SampleInfo``.
        remasking: the ``RemaskingSchedule`` of a remasking sampler ("remdm"; default: cap, eta = 0.008).
        device: where the samples live (default: the generator's device, else CPU).
        progress: show a progress bar.

    Returns:
        int64 tensor (num_samples, length) of data tokens, or (samples, info).
    """
    check_process(process)
    for name, value in (("num_samples", num_samples), ("length", length), ("nfe", nfe)):
        _positive(name, value)
    prediction = process.resolve_prediction(model, prediction)
    kernel = check_options(process, sampler=sampler, corrector=corrector, temperature=temperature,
                           temperature_on=temperature_on, top_p=top_p, remasking=remasking)
    k = process.vocab_size
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    shape = (num_samples, length)
    prompt, prompt_mask = _check_prompt(prompt, prompt_mask, shape, k, device)
    have = process.view(prediction)
    t_view = process.view(temperature_on or process.temperature_views[0])
    if kernel.remasking and remasking is None:
        remasking = RemaskingSchedule()
    sweeps = corrector.sweeps if corrector is not None else 0
    n_steps, n_corrected = split_nfe(nfe, sweeps)

    # time grid and alphas (float64, shared by all rows)
    ts = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
    if remasking is not None:
        alphas = remasking.alpha(ts, process.schedule)
        t_model = process.schedule.t_of_alpha(alphas) if hasattr(process.schedule, "t_of_alpha") else ts
    else:
        alphas, t_model = process.alpha(ts), ts
    alphas[-1] = 1.0  # the last step lands on clean data
    alphas, t_model = alphas.tolist(), t_model.clamp(0, 1).tolist()

    state = process.prior(shape, generator=generator, device=device)
    if prompt is not None:
        state = process.fix(state, prompt, prompt_mask)
    free = torch.ones(shape, dtype=torch.bool, device=device) if prompt_mask is None else ~prompt_mask

    net = _Model(model, k, cache=not time_conditioned)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=nfe, desc=f"sampling ({process.label}, {sampler})", unit="nfe", leave=False)

    def predict(state_, t):
        before = net.calls
        logp = net(state_, t)
        if bar is not None:
            bar.update(net.calls - before)
        return logp

    for j in range(n_steps):
        at, as_ = alphas[j], alphas[j + 1]
        sigma = remasking.sigma(ts[j].item(), at, as_) if remasking is not None else 0.0
        step = Step(t=ts[j].item(), alpha_t=at, alpha_s=as_, free=free, sigma=sigma, process=process)
        logits = predict(state, t_model[j])
        view = _view(logits, state.xt, at, have, kernel.consumes, temperature, t_view, top_p, process)
        state = kernel.fn(state, view, step, generator)
        if prompt is not None:
            state = process.fix(state, prompt, prompt_mask)
        if j < n_corrected:
            for _ in range(sweeps):
                logits = predict(state, t_model[j + 1])
                view = _view(logits, state.xt, as_, have, corrector.consumes, temperature, t_view, top_p, process)
                state = corrector.correct(state, view, step, generator)
    if bar is not None:
        bar.close()
    info = SampleInfo(nfe=net.calls, nfe_budget=nfe, predictor_steps=n_steps, corrected_steps=n_corrected,
                      corrector_sweeps=sweeps)
    return (state.xt, info) if return_info else state.xt
