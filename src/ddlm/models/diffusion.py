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
        output: what the network predicts, one of ``process.network_outputs``: "loo" or "denoiser"
            (UDM), "denoiser" (MDM), "posterior" (AUDM). Declared as ``model.prediction``, which
            ``ddlm.sample``, the losses and evaluation read.
    """

    def __init__(self, process, net: nn.Module, output: str):
        super().__init__()
        if output not in process.network_outputs:
            raise ValueError(f"output must be one of {process.network_outputs} for {process.label}, got {output!r}")
        if net.config.vocab_size != process.input_vocab_size or net.config.output_size != process.vocab_size:
            raise ValueError(
                f"net has vocab_size {net.config.vocab_size} and output_size {net.config.output_size}, expected "
                f"{process.input_vocab_size} and {process.vocab_size} for {process!r}"
            )
        self.process, self.net, self.output = process, net, output

    @classmethod
    def build(cls, process_name: str, vocab_size: int, max_len: int, *, preset: str = "tiny",
              output: str | None = None, schedule: str = "linear", eps: float = 1e-3,
              time_conditioning: bool = True, backbone: str = "dit", process_options: dict | None = None,
              **overrides) -> DiffusionModel:
        """Process + backbone preset in one call (``overrides`` replace the backbone's config fields;
        ``backbone`` names an entry of ``ddlm.models.backbones.BACKBONES``; ``process_options`` are the
        process's own, e.g. D3PM's ``kind`` and ``steps``)."""
        process = get_process(process_name, vocab_size, get_schedule(schedule, eps=eps), **(process_options or {}))
        net_cls, config_cls = get_backbone(backbone)
        config = config_cls.preset(preset, process.input_vocab_size, vocab_size, max_len,
                                   audm=process.has_noise, time_conditioning=time_conditioning, **overrides)
        return cls(process, net_cls(config), output or process.default_output)

    @property
    def prediction(self) -> str:
        """What the network predicts (its ``output``)."""
        return self.output

    def forward(self, xt: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        alpha = self.process.alpha(t.to(torch.float64)).clamp_min(1e-30)
        sigma = (-torch.log(alpha)).to(torch.float32)
        return self.net(xt, sigma, noise)
