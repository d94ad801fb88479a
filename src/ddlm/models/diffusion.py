"""A backbone (a DiT by default) bound to its process: the callable ``model(xt, t, noise=None) -> logits``
that training, sampling and evaluation use."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..processes import get_process
from ..schedules import get_schedule
from .backbones import get_backbone


def __getattr__(attr):  # a derived table, kept for scripts that read it
    if attr == "OUTPUTS":
        from ..processes import REGISTRY

        return {name: cls.network_outputs for name, cls in REGISTRY.items()}
    raise AttributeError(attr)


class DiffusionModel(nn.Module):
    """A backbone whose time input is t: it conditions on sigma = -log alpha_t of the process's schedule.

    Args:
        process: the forward process (its vocabulary and schedule).
        net: the backbone, e.g. a DiT (input vocabulary = process.input_vocab_size, output = K data tokens).
        output: what the network predicts, one of ``process.network_outputs``: "loo", "denoiser" or
            "score" (UDM), "denoiser" or "score" (MDM), "posterior" (AUDM). Declared as
            ``model.prediction``, which ``ddlm.sample``, the losses and evaluation read.
        score_scaling: for a "score" output, how the network's output becomes the log-score: "none" (it
            is the log-score) or "noise_level" (one of ``process.score_scalings``; masked diffusion: SEDD's
            absorbing-graph scaling, log s = output - log(e^sigma - 1) - log K with sigma = -log alpha_t,
            ``process.score_log_scale``; docs/maths.md §10.3). Applied in float32 at least.
    """

    def __init__(self, process, net: nn.Module, output: str, score_scaling: str = "none"):
        super().__init__()
        if output not in process.network_outputs:
            raise ValueError(f"output must be one of {process.network_outputs} for {process.label}, got {output!r}")
        if score_scaling not in process.score_scalings:
            raise ValueError(f"score_scaling must be one of {process.score_scalings} for {process.label}, "
                             f"got {score_scaling!r}")
        if score_scaling != "none" and output != "score":
            raise ValueError(f"score_scaling {score_scaling!r} applies to a 'score' output only, got output {output!r}")
        if net.config.vocab_size != process.input_vocab_size or net.config.output_size != process.vocab_size:
            raise ValueError(
                f"net has vocab_size {net.config.vocab_size} and output_size {net.config.output_size}, expected "
                f"{process.input_vocab_size} and {process.vocab_size} for {process!r}"
            )
        self.process, self.net, self.output, self.score_scaling = process, net, output, score_scaling

    @classmethod
    def build(cls, process_name: str, vocab_size: int, max_len: int, *, preset: str = "tiny",
              output: str | None = None, schedule: str = "linear", eps: float = 1e-3,
              time_conditioning: bool = True, backbone: str = "dit", process_options: dict | None = None,
              score_scaling: str = "none", **overrides) -> DiffusionModel:
        """Process + backbone preset in one call (``overrides`` replace the backbone's config fields;
        ``backbone`` names an entry of ``ddlm.models.backbones.BACKBONES``; ``process_options`` are the
        process's own, e.g. D3PM's ``kind`` and ``steps``)."""
        process = get_process(process_name, vocab_size, get_schedule(schedule, eps=eps), **(process_options or {}))
        net_cls, config_cls = get_backbone(backbone)
        config = config_cls.preset(preset, process.input_vocab_size, vocab_size, max_len,
                                   audm=process.has_noise, time_conditioning=time_conditioning, **overrides)
        return cls(process, net_cls(config), output or process.default_output, score_scaling)

    @property
    def time_conditioned(self) -> bool:
        """Whether the output depends on t: a time-conditioned backbone, or a noise-level-scaled score."""
        return bool(self.net.config.time_conditioning) or self.score_scaling != "none"

    @property
    def prediction(self) -> str:
        """What the network predicts (its ``output``)."""
        return self.output

    def forward(self, xt: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        alpha = self.process.alpha(t.to(torch.float64)).clamp_min(1e-30)
        sigma = (-torch.log(alpha)).to(torch.float32)
        out = self.net(xt, sigma, noise)
        if self.score_scaling == "noise_level":
            dtype = torch.promote_types(out.dtype, torch.float32)
            out = out.to(dtype) + self.process.score_log_scale(alpha).to(dtype)[:, None, None]
        return out
