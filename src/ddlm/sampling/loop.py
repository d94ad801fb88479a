"""The sampling loop shared by every process, kernel and corrector: ``ddlm.sample``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_tokens
from ..processes import AbsorbingUniformDiffusion, MaskedDiffusion, UniformDiffusion
from . import kernels as K
from .correctors import GibbsCorrector
from .prediction import Prediction
from .remasking import RemaskingSchedule

#: process -> sampler name -> the prediction view its kernel consumes
SAMPLERS = {
    "mdm": {"ancestral": "denoiser", "remdm": "denoiser", "confidence": "denoiser"},
    "udm": {
        "ancestral": "loo",
        "x0": "denoiser",
        "max_coupling": "denoiser",
        "confidence": "denoiser",
        "bridge_raw_denoiser": "denoiser",
    },
    "audm": {"ancestral": "denoiser", "reaudm": "denoiser", "confidence": "denoiser"},
}
PREDICTIONS = {"mdm": ("denoiser", "loo"), "udm": ("denoiser", "loo"), "audm": ("denoiser", "posterior")}


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


def _name(process) -> str:
    if isinstance(process, MaskedDiffusion):
        return "mdm"
    if isinstance(process, AbsorbingUniformDiffusion):
        return "audm"
    if isinstance(process, UniformDiffusion):
        return "udm"
    raise TypeError(
        "process must be a MaskedDiffusion, UniformDiffusion or AbsorbingUniformDiffusion, "
        f"got {type(process).__name__}"
    )


def _check_args(kind, num_samples, length, nfe, prediction, sampler, corrector, temperature,
                temperature_on, top_p, remasking):
    for name, value, low in (("num_samples", num_samples, 1), ("length", length, 1), ("nfe", nfe, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if prediction not in PREDICTIONS[kind]:
        raise ValueError(f"prediction must be one of {PREDICTIONS[kind]} for {kind.upper()}, got {prediction!r}")
    if sampler not in SAMPLERS[kind]:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS[kind])} for {kind.upper()}, got {sampler!r}")
    if corrector is not None:
        if not isinstance(corrector, GibbsCorrector):
            raise TypeError(f"corrector must be a ddlm.GibbsCorrector or None, got {type(corrector).__name__}")
        if kind != "udm":
            raise ValueError(f"corrector GibbsCorrector supports uniform diffusion only, got process {kind.upper()}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    allowed_on = ("loo", "denoiser") if kind == "udm" else ("denoiser",)
    if temperature_on is not None and temperature_on not in allowed_on:
        raise ValueError(f"temperature_on must be one of {allowed_on} for {kind.upper()}, got {temperature_on!r}")
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if sampler == "confidence" and (temperature != 1.0 or top_p != 1.0):
        raise ValueError("sampler 'confidence' is greedy (argmax): temperature and top_p must be 1")
    if remasking is not None and not isinstance(remasking, RemaskingSchedule):
        raise TypeError(f"remasking must be a ddlm.RemaskingSchedule or None, got {type(remasking).__name__}")
    if remasking is not None and sampler != "remdm":
        raise ValueError(f"remasking is used by sampler 'remdm' only, got sampler {sampler!r}")


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
    """Calls the network, checks its output, keeps the K data columns, and caches by input."""

    def __init__(self, model, k, cache):
        self.model, self.k, self.cache = model, k, cache
        self.calls = 0
        self._last = None  # (x, noise, logp) of the previous call

    def __call__(self, x: Tensor, noise: Tensor | None, t: float) -> Tensor:
        rows = None
        if self.cache and self._last is not None:
            lx, lu, lp = self._last
            changed = (x != lx).any(-1)
            if noise is not None:
                changed |= (noise != lu).any(-1)
            if not bool(changed.any()):
                return lp
            rows = changed.nonzero().squeeze(-1)
        xi = x if rows is None else x[rows]
        ui = None if noise is None else (noise if rows is None else noise[rows])
        tt = torch.full((xi.shape[0],), float(t), dtype=torch.float64, device=x.device)
        out = self.model(xi, tt, ui) if ui is not None else self.model(xi, tt)
        self.calls += 1
        want = (xi.shape[0], xi.shape[1])
        if not isinstance(out, Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != want or out.shape[-1] < self.k:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"model output has shape {got}, expected logits of shape ({want[0]}, {want[1]}, V) with V >= K = {self.k}"
            )
        logp = out[..., : self.k]  # raw logits of the data tokens; normalised lazily by Prediction
        if rows is not None:
            logp = self._last[2].clone().index_copy_(0, rows, logp.to(self._last[2].dtype))
        if self.cache:
            self._last = (x.clone(), None if noise is None else noise.clone(), logp)
        return logp


def _view(logits, x, at, have, want, temperature, temperature_on, top_p) -> Prediction:
    """The view a kernel consumes, from the model's logits: temperature on the chosen view, then
    conversion to the consumed one, then top-p (which materialises the full distribution)."""
    pred = Prediction(logits, x)
    if temperature != 1.0:
        pred = pred.convert(have, temperature_on, at).temper(temperature)
        have = temperature_on
    pred = pred.convert(have, want, at)
    if top_p < 1.0:
        pred = Prediction.from_logp(top_p_filter(pred.log_probs(), top_p), x)
    return pred


@torch.no_grad()
def sample(
    model,
    process,
    num_samples: int,
    length: int,
    nfe: int,
    *,
    prediction: str = "denoiser",
    sampler: str = "ancestral",
    corrector: GibbsCorrector | None = None,
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
            ignored); ``t`` is a (B,) float64 tensor, ``noise`` the AUDM noise tokens (else not passed).
        process: a ``MaskedDiffusion``, ``UniformDiffusion`` or ``AbsorbingUniformDiffusion``.
        num_samples, length: output shape.
        nfe: budget of forward passes (predictor + corrector); the time grid is uniform in t.
        prediction: what the model predicts: "denoiser" or "loo" (UDM); for AUDM the posterior
            p(x_0 | x_t, u) ("denoiser" or "posterior"); for MDM the denoiser ("loo" is the same).
        sampler: MDM "ancestral" | "remdm" | "confidence"; UDM "ancestral" (plug-in bridge fed the
            LOO) | "x0" (D3PM form with the denoiser) | "max_coupling" | "confidence" |
            "bridge_raw_denoiser" (a deliberately wrong ablation); AUDM "ancestral" (carry-over) |
            "reaudm" | "confidence".
        corrector: a ``GibbsCorrector`` (UDM only).
        temperature: p^(1/T) on the view given by ``temperature_on`` ("loo" by default for UDM,
            the denoiser/posterior otherwise).
        top_p: nucleus filtering of the prediction the kernel consumes.
        prompt, prompt_mask: (num_samples, length); where the mask is True the token is fixed to the
            prompt's for the whole trajectory (AUDM: marked certainly clean by its noise token).
        time_conditioned: False for a model that ignores t (MDM): rows whose input did not change
            reuse the last prediction instead of a forward pass.
        generator: every random draw goes through it; the same seed gives identical samples.
        return_info: also return a ``SampleInfo``.
        remasking: the ``RemaskingSchedule`` of sampler "remdm" (default: cap, eta = 0.008).
        device: where the samples live (default: the generator's device, else CPU).
        progress: show a progress bar.

    Returns:
        int64 tensor (num_samples, length) of data tokens, or (samples, info).
    """
    kind = _name(process)
    _check_args(kind, num_samples, length, nfe, prediction, sampler, corrector, temperature,
                temperature_on, top_p, remasking)
    k = process.vocab_size
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    shape = (num_samples, length)
    prompt, prompt_mask = _check_prompt(prompt, prompt_mask, shape, k, device)
    have = {"posterior": "denoiser"}.get(prediction, prediction)
    if kind == "mdm":
        have = "denoiser"  # at masked positions the MDM denoiser and LOO coincide
    want = SAMPLERS[kind][sampler]
    temperature_on = temperature_on or ("loo" if kind == "udm" else "denoiser")
    if kind != "udm":
        temperature_on = have = want = "denoiser"
    if sampler == "remdm" and remasking is None:
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

    # initial state
    state = process.prior(shape, generator=generator, device=device)
    x, noise = (state.xt, state.noise) if kind == "audm" else (state, None)
    if prompt is not None:
        x = torch.where(prompt_mask, prompt, x)
        if noise is not None:  # u != x marks the position as certainly clean
            noise = torch.where(prompt_mask, (prompt + 1) % k, noise)
    free = torch.ones(shape, dtype=torch.bool, device=device) if prompt_mask is None else ~prompt_mask

    net = _Model(model, k, cache=not time_conditioned)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=nfe, desc=f"sampling ({kind}, {sampler})", unit="nfe", leave=False)

    def predict(x_, noise_, t):
        before = net.calls
        logp = net(x_, noise_, t)
        if bar is not None:
            bar.update(net.calls - before)
        return logp

    for j in range(n_steps):
        at, as_ = alphas[j], alphas[j + 1]
        logp = predict(x, noise, t_model[j])
        view = _view(logp, x, at, have, want, temperature, temperature_on, top_p)
        if kind == "mdm":
            if sampler == "ancestral":
                x = K.mdm_ancestral(x, view, at, as_, generator, process.mask_id)
            elif sampler == "remdm":
                x = K.remdm(x, view, at, as_, generator, process.mask_id, remasking.sigma(ts[j].item(), at, as_))
            else:
                masked = x == process.mask_id
                count = _commit_count(masked, at, as_)
                x = K.confidence(x, view, masked, count)
        elif kind == "udm":
            if sampler == "confidence":
                count = torch.full((num_samples,), length if as_ >= 1.0 else round(length * as_) - round(length * at),
                                   dtype=torch.long, device=device)
                x = K.confidence(x, view, free, count)
            else:
                x = getattr(K, {"ancestral": "udm_bridge", "x0": "udm_x0", "max_coupling": "max_coupling",
                                "bridge_raw_denoiser": "udm_bridge_raw_denoiser"}[sampler])(x, view, at, as_, generator)
        else:
            if sampler == "confidence":
                active = (x == noise) & free
                x = K.confidence(x, view, active, _commit_count(active, at, as_))
            elif sampler == "reaudm":
                x, noise = K.reaudm(x, noise, view, at, as_, generator)
            else:
                x, noise = K.audm_carry_over(x, noise, view, at, as_, generator)
        if prompt is not None:
            x = torch.where(prompt_mask, prompt, x)
            if noise is not None:
                noise = torch.where(prompt_mask, (prompt + 1) % k, noise)
        if j < n_corrected:
            for _ in range(sweeps):
                logp = predict(x, None, t_model[j + 1])
                logr = _view(logp, x, as_, have, "loo", temperature, temperature_on, top_p)
                x = corrector.step(x, logr, as_, free, generator)
    if bar is not None:
        bar.close()
    info = SampleInfo(nfe=net.calls, nfe_budget=nfe, predictor_steps=n_steps, corrected_steps=n_corrected,
                      corrector_sweeps=sweeps)
    return (x, info) if return_info else x


def _commit_count(eligible: Tensor, at: float, as_: float) -> Tensor:
    """How many eligible positions each row resolves in a step: round(n (alpha_s - alpha_t)/(1 - alpha_t))."""
    frac = (as_ - at) / (1.0 - at)
    return torch.round(eligible.sum(-1).double() * frac).long()
