"""Sampler settings shared by the evaluation commands: one validated, JSON-serialisable record of
every option a draw depends on, the command-line options that fill it, and ``draw``, which turns it
into ``ddlm.sample`` calls (or autoregressive generation) in reproducible batches.

Reproducibility: batch ``b`` of a draw uses its own generator seeded with
``batch_seed(settings.seed, b)``. The samples are therefore a deterministic function of the
settings, the model, ``batch_size`` and the device; with the same ``batch_size`` the first whole
batches of a larger draw are the same sequences as those of a smaller one. Changing ``batch_size``
changes the samples (each batch's random stream is laid out over its rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..sampling import GibbsCorrector, RemaskingSchedule
from ..sampling.correctors import SELECTIONS
from ..sampling.options import check_options, default_sampler
from ..sampling.registry import all_samplers
from ..sampling.remasking import KINDS

#: fields of GibbsCorrector / RemaskingSchedule that the settings dicts may hold
CORRECTOR_KEYS = tuple(f.name for f in fields(GibbsCorrector))
REMASKING_KEYS = tuple(f.name for f in fields(RemaskingSchedule))
def _temperature_views() -> tuple[str, ...]:
    from ..processes import REGISTRY

    return tuple(dict.fromkeys(v for cls in REGISTRY.values() for v in cls.temperature_views))


#: every view some registered process can temper (what a process accepts is checked at draw time)
TEMPERATURE_ON = _temperature_views()


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _component(name: str, value, cls, keys) -> dict | None:
    """Validate a corrector/remasking dict by building the object; return every field resolved."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict of {cls.__name__} fields or None, got {type(value).__name__}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ValueError(f"{name} has unknown key {unknown[0]!r}; expected keys among {list(keys)}")
    try:
        obj = cls(**value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None
    return dataclasses.asdict(obj)


@dataclass(frozen=True)
class SamplerSettings:
    """Every option of a draw, validated on construction.

    Attributes:
        sampler: ``ddlm.sample`` sampler name; None for the process's default ("ancestral", or
            "remdm" for MDM when ``remasking`` is given). Autoregressive runs accept None or
            "ancestral" only.
        nfe: forward-pass budget of a diffusion draw (predictor + corrector passes). Autoregressive
            runs make one pass per generated token and do not use it.
        temperature: sampling temperature (> 0).
        temperature_on: "loo" or "denoiser" (which view is tempered, UDM), or None for the process
            default of ``ddlm.sample`` ("loo" for UDM, the denoiser/posterior otherwise).
        top_p: nucleus filtering of the prediction the kernel consumes, in (0, 1].
        corrector: ``GibbsCorrector`` fields (UDM only), e.g. ``{"sweeps": 1, "k": 1, "selection":
            "random", "tau": 1.0}``; missing fields take the class defaults and are filled in.
        remasking: ``RemaskingSchedule`` fields (MDM sampler "remdm"), filled in likewise.
        seed: seed of the draw (see the module docstring).
    """

    sampler: str | None = None
    nfe: int = 128
    temperature: float = 1.0
    temperature_on: str | None = None
    top_p: float = 1.0
    corrector: dict | None = None
    remasking: dict | None = None
    seed: int = 0

    def __post_init__(self):
        if self.sampler is not None and not isinstance(self.sampler, str):
            raise ValueError(f"sampler must be a sampler name or None, got {self.sampler!r}")
        _positive_int("nfe", self.nfe)
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
            raise ValueError(f"temperature must be a positive finite number, got {t!r}")
        object.__setattr__(self, "temperature", float(t))
        if self.temperature_on is not None and self.temperature_on not in TEMPERATURE_ON:
            raise ValueError(f"temperature_on must be one of {TEMPERATURE_ON} or None, got {self.temperature_on!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {p!r}")
        object.__setattr__(self, "top_p", float(p))
        object.__setattr__(self, "corrector", _component("corrector", self.corrector, GibbsCorrector, CORRECTOR_KEYS))
        object.__setattr__(self, "remasking",
                           _component("remasking", self.remasking, RemaskingSchedule, REMASKING_KEYS))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        """Every field (corrector/remasking with all their fields), JSON-serialisable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SamplerSettings:
        """Settings from :meth:`to_dict` output (missing keys take the defaults).

        Raises:
            ValueError: ``d`` is not a dict, has an unknown key, or a value is invalid (the key is named).
        """
        if not isinstance(d, dict):
            raise ValueError(f"sampler settings must be a dict, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"sampler settings have unknown key {unknown[0]!r}; expected keys among {names}")
        return cls(**d)


# ---- command-line options ------------------------------------------------------------------------

def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """Add the sampler options (a "sampler" argument group) to ``parser``; see :func:`settings_from_args`."""
    names = all_samplers()
    g = parser.add_argument_group("sampler")
    g.add_argument("--sampler", default=None,
                   help=f"sampler name (default: ancestral; remdm when --remasking is given): {', '.join(names)}")
    g.add_argument("--nfe", type=int, default=None,
                   help=f"forward passes per sample, predictor + corrector (default {SamplerSettings.nfe}; "
                        "not for autoregressive runs)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    g.add_argument("--temperature-on", choices=TEMPERATURE_ON, default=None,
                   help="which view the temperature acts on (UDM: loo or denoiser; default loo)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus filtering, in (0, 1] (default 1: off)")
    g.add_argument("--corrector-sweeps", type=int, default=None,
                   help="Gibbs corrector sweeps per corrected step (UDM); enables the corrector")
    g.add_argument("--corrector-k", type=int, default=None, help="positions resampled per sweep (default 12)")
    g.add_argument("--corrector-selection", default=None,
                   choices=SELECTIONS,
                   help="how the corrector picks positions (default lowest_log_margin)")
    g.add_argument("--corrector-tau", type=float, default=None, help="selection temperature (default 1)")
    g.add_argument("--remasking", default=None, choices=KINDS,
                   help="ReMDM remasking schedule (MDM); implies --sampler remdm")
    g.add_argument("--remasking-eta", type=float, default=None,
                   help="remasking strength (default: cap/constant 0.008, rescale 0.015, loop 0.02)")
    g.add_argument("--remasking-t-on", type=float, default=None, help="loop: start of the loop (default 0.55)")
    g.add_argument("--remasking-t-off", type=float, default=None, help="loop: end of the loop (default 0.05)")
    g.add_argument("--remasking-alpha-on", type=float, default=None, help="loop: alpha held in the loop (default 0.9)")
    g.add_argument("--remasking-t-switch", type=float, default=None, help="no remasking for t > t_switch")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def _given(args, prefix: str, keys) -> dict:
    """The ``--prefix-key`` options that were given, as {key: value}."""
    return {k: getattr(args, f"{prefix}_{k}") for k in keys if getattr(args, f"{prefix}_{k}", None) is not None}


def settings_from_args(args: argparse.Namespace) -> SamplerSettings:
    """``SamplerSettings`` from options added by :func:`add_sampler_options`.

    Raises:
        ValueError: an invalid value, or a corrector/remasking sub-option without its main option.
    """
    corrector = _given(args, "corrector", CORRECTOR_KEYS) or None
    if corrector is not None and "sweeps" not in corrector:
        raise ValueError(f"option --corrector-{next(iter(corrector))} needs --corrector-sweeps")
    remasking = _given(args, "remasking", REMASKING_KEYS[1:])
    if remasking and args.remasking is None:
        raise ValueError(f"option --remasking-{next(iter(remasking)).replace('_', '-')} needs --remasking KIND")
    remasking = {"kind": args.remasking, **remasking} if args.remasking is not None else None
    return SamplerSettings(sampler=args.sampler, nfe=args.nfe if args.nfe is not None else SamplerSettings.nfe,
                           temperature=args.temperature, temperature_on=args.temperature_on, top_p=args.top_p,
                           corrector=corrector, remasking=remasking, seed=args.seed)


def check_ar_args(args: argparse.Namespace) -> None:
    """Command-line check for autoregressive runs: ``--nfe`` does not apply (one pass per token)."""
    if getattr(args, "nfe", None) is not None:
        raise ValueError("option --nfe does not apply to an autoregressive run (one forward pass per generated token)")


# ---- drawing -------------------------------------------------------------------------------------

def batch_seed(seed: int, batch: int) -> int:
    """Seed of batch ``batch`` of a draw with seed ``seed``: distinct per (seed, batch), in [0, 2^63)."""
    return (seed * 1_000_003 + batch * 7_919 + 12_345) % (2**63)


def time_conditioned(model) -> bool:
    """False only for a model known to ignore t (a ``DiffusionModel`` built with
    ``time_conditioning=False``, or any model with ``time_conditioned = False``), so that ``ddlm.sample``
    may reuse predictions of unchanged rows; True otherwise (always call the model)."""
    flag = getattr(model, "time_conditioned", None)
    if flag is not None:
        return bool(flag)
    config = getattr(getattr(model, "net", None), "config", None)
    return bool(getattr(config, "time_conditioning", True))


def resolve_sampler(settings: SamplerSettings, process) -> str:
    """The sampler a draw uses: ``settings.sampler``, else the process's remasking sampler ("remdm")
    when remasking is given, else "ancestral"."""
    if settings.sampler is not None:
        return settings.sampler
    return default_sampler(process, settings.remasking) if process is not None else "ancestral"


def check_applicable(settings: SamplerSettings, process) -> None:
    """Refuse options that do not apply to the process (None: autoregressive), naming the option.

    The diffusion checks are ``ddlm.sampling.options.check_options``, the same that ``ddlm.sample``
    makes, applied to the objects the settings describe.

    Raises:
        ValueError: e.g. remasking for UDM/AUDM, a corrector for MDM/AUDM, temperature_on "loo" for
            MDM/AUDM, a sampler unknown to the process, or any diffusion-only option for an
            autoregressive run.
    """
    if process is None:
        for name, value, ok in (("sampler", settings.sampler, (None, "ancestral")),
                                ("temperature_on", settings.temperature_on, (None,)),
                                ("corrector", settings.corrector, (None,)), ("remasking", settings.remasking, (None,))):
            if value not in ok:
                raise ValueError(f"option {name}={value!r} does not apply to an autoregressive run "
                                 "(it supports temperature, top_p and seed)")
        return
    corrector = GibbsCorrector(**settings.corrector) if settings.corrector else None
    remasking = RemaskingSchedule(**settings.remasking) if settings.remasking else None
    try:
        check_options(process, sampler=resolve_sampler(settings, process), corrector=corrector,
                      temperature=settings.temperature, temperature_on=settings.temperature_on,
                      top_p=settings.top_p, remasking=remasking)
    except ValueError as e:
        raise ValueError(f"option {e}") from None


def _expand_prompt(prompt, prompt_mask, num_samples: int, length: int):
    if prompt is None and prompt_mask is None:
        return None, None
    if prompt is None or prompt_mask is None:
        raise ValueError("prompt and prompt_mask must be given together")
    prompt, prompt_mask = torch.as_tensor(prompt), torch.as_tensor(prompt_mask)
    if prompt_mask.dtype != torch.bool:
        raise ValueError(f"prompt_mask must be a bool tensor, got dtype {prompt_mask.dtype}")
    out = []
    for name, t in (("prompt", prompt.long()), ("prompt_mask", prompt_mask)):
        if tuple(t.shape) == (length,):
            t = t.expand(num_samples, length)
        if tuple(t.shape) != (num_samples, length):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected (length,) = ({length},) or "
                             f"(num_samples, length) = ({num_samples}, {length})")
        out.append(t)
    return out[0], out[1]


def _ar_prefix(prompt: Tensor | None, prompt_mask: Tensor | None, tokenizer, num_samples: int) -> Tensor:
    """The prefix of autoregressive generation: the prompt (a prefix, the same length in every row),
    or BOS when there is none."""
    if prompt is None:
        return torch.full((num_samples, 1), tokenizer.bos_id, dtype=torch.long)
    n = prompt_mask.sum(-1)
    lengths = set(n.tolist())
    prefix_ok = len(lengths) == 1 and bool(prompt_mask[:, : int(n[0])].all())
    if not prefix_ok or int(n[0]) == 0:
        raise ValueError("an autoregressive run supports prefix prompts only (prompt_mask True on the same "
                         "non-empty leading positions in every row); infilling needs a diffusion run")
    return prompt[:, : int(n[0])]


@torch.no_grad()
def ar_generate(model, prefix: Tensor, length: int, temperature: float, top_p: float, generator) -> Tensor:
    """Autoregressive sampling up to ``length`` tokens: ``model.generate`` when ``top_p == 1``; otherwise
    the same loop with nucleus filtering of each next-token distribution (exact float64 draws)."""
    if top_p >= 1.0:
        return model.generate(prefix, length, temperature=temperature, generator=generator)
    from ..sampling.loop import top_p_filter
    from ..sampling.prediction import categorical

    if not 1 <= prefix.shape[1] <= length <= model.config.max_len:
        raise ValueError(f"need 1 <= prefix length ({prefix.shape[1]}) <= length ({length}) <= max_len "
                         f"({model.config.max_len})")
    x = prefix
    while x.shape[1] < length:
        logp = torch.log_softmax(model(x)[:, -1].double() / temperature, dim=-1)
        x = torch.cat([x, categorical(top_p_filter(logp, top_p), generator).unsqueeze(-1)], dim=1)
    return x


def draw(model, process, tokenizer, settings: SamplerSettings, num_samples: int, length: int, *, prompt=None,
         prompt_mask=None, batch_size: int = 32, device=None, progress: bool = False) -> Tensor:
    """Draw ``num_samples`` sequences of ``length`` tokens in batches of ``batch_size``.

    Diffusion runs call ``ddlm.sample`` with ``prediction=model.prediction``, the sampler of
    :func:`resolve_sampler`, the corrector/remasking objects built from the settings and
    ``time_conditioned`` from :func:`time_conditioned`. Autoregressive runs (``process is None``)
    generate from BOS or from the prompt, which must then be a prefix (see :func:`ar_generate`).

    Args:
        model: the network (a ``DiffusionModel``, an ``ARTransformer``, or any ``ddlm.sample`` callable
            with a ``prediction`` attribute).
        process: the model's process, or None for an autoregressive model.
        tokenizer: the run's tokenizer (its BOS starts autoregressive generation).
        settings: the sampler settings; options that do not apply to the process raise.
        num_samples, length: output shape.
        prompt, prompt_mask: ``(length,)`` (shared by all samples) or ``(num_samples, length)``; where
            the mask is True the token is fixed to the prompt's.
        batch_size: rows per ``ddlm.sample`` call; the samples depend on it (module docstring).
        device: where sampling runs (default: the model's device).
        progress: progress bar over batches.

    Returns:
        int64 CPU tensor ``(num_samples, length)`` of token ids.

    Raises:
        ValueError: invalid sizes, inapplicable options (named), or a bad prompt.
    """
    _positive_int("num_samples", num_samples)
    _positive_int("length", length)
    _positive_int("batch_size", batch_size)
    if not isinstance(settings, SamplerSettings):
        raise TypeError(f"settings must be a SamplerSettings, got {type(settings).__name__}")
    check_applicable(settings, process)
    prompt, prompt_mask = _expand_prompt(prompt, prompt_mask, num_samples, length)
    if device is None:
        params = model.parameters() if hasattr(model, "parameters") else iter(())
        device = next(params, torch.zeros(())).device
    device = torch.device(device)
    corrector = GibbsCorrector(**settings.corrector) if settings.corrector else None
    remasking = RemaskingSchedule(**settings.remasking) if settings.remasking else None
    sampler = resolve_sampler(settings, process)
    batches = range(math.ceil(num_samples / batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling {num_samples} x {length}", unit="batch")
    out = []
    for b in batches:
        rows = slice(b * batch_size, min(num_samples, (b + 1) * batch_size))
        n = rows.stop - rows.start
        g = torch.Generator(device=device).manual_seed(batch_seed(settings.seed, b))
        p = None if prompt is None else prompt[rows].to(device)
        m = None if prompt_mask is None else prompt_mask[rows].to(device)
        if process is None:
            prefix = _ar_prefix(p, m, tokenizer, n).to(device)
            x = ar_generate(model, prefix, length, settings.temperature, settings.top_p, g)
        else:
            x = _sample(model, process, n, length, settings, sampler, corrector, remasking, p, m, g, device)
        out.append(x.cpu())
    return torch.cat(out)


def _sample(model, process, n, length, settings, sampler, corrector, remasking, prompt, prompt_mask, g, device):
    from ..sampling import sample

    if getattr(model, "prediction", None) is None:
        raise ValueError("model has no 'prediction' attribute: draw needs to know what the network predicts "
                         "(a DiffusionModel has it; wrap other callables, e.g. ddlm.evaluate.bound.CallableModel)")
    return sample(model, process, n, length, settings.nfe, sampler=sampler,
                  corrector=corrector, temperature=settings.temperature, temperature_on=settings.temperature_on,
                  top_p=settings.top_p, prompt=prompt, prompt_mask=prompt_mask,
                  time_conditioned=time_conditioned(model), generator=g, remasking=remasking, device=device)
