"""An imported checkpoint as a ddlm model: ``model(xt, t)`` (``model(xt, t, noise)`` for AUDM) takes
ddlm's diffusion time t in [0, 1], maps it to the family's conditioning and returns the family's
prediction over the process's K tokens; the family's own outputs stay available.

Three outputs, from the closest to the file to the one ddlm's samplers read:

- :meth:`ImportedModel.raw`: the network's output (all rows), what the project's backbone returns;
- :meth:`ImportedModel.family_output`: the project's own forward pass (SUBS, carry-over, log-softmax,
  SEDD's scaled log-score), all rows;
- ``forward``: the prediction ``model.prediction`` declares, over the K tokens of ``model.process``:
  logits ("denoiser", "loo", "posterior": their log-softmax is the family output restricted to the K
  data tokens and renormalised, wherever the process reads it) or, for SEDD, the log-score restricted
  to the K tokens ("score").

SEDD declares "score": its forward returns the log-score exactly as SEDD computes it (already scaled
by the noise level on the absorbing graph), which ddlm's processes consume like the output of a ddlm
score network (``process.convert_view`` for the samplers, the score entropy for the bound; docs/maths.md
§10).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .families import postprocess, sigma_of


class ImportedModel(nn.Module):
    """A released checkpoint bound to its ddlm process (module docstring).

    Attributes:
        net: the backbone (``ddlm.models.imported_dit.ImportedDiT``).
        process: the family's process (``process.vocab_size`` is its K).
        spec: the resolved settings (``ddlm.pretrained.resolve.Spec``).
        conventions: every convention of the import as plain data (family, format, weights, rows,
            conditioning, output, tokenizer, what the reader skipped): also in every result record.
        compute_dtype: torch.float32, or torch.bfloat16 (autocast, as the projects run on GPUs).
    """

    def __init__(self, net: nn.Module, process, spec, conventions: dict, compute_dtype=torch.float32):
        super().__init__()
        if compute_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.bfloat16, got {compute_dtype!r}")
        self.net, self.process, self.spec, self.conventions = net, process, spec, conventions
        self.compute_dtype = compute_dtype

    @property
    def prediction(self) -> str:
        """What ``forward`` returns: "denoiser", "loo", "posterior" or "score"."""
        return self.spec.prediction

    @property
    def output(self) -> str:
        return self.spec.prediction

    @property
    def time_conditioned(self) -> bool:
        """False when the output does not depend on t (the family feeds sigma = 0 and no noise-level
        scaling applies): the samplers may then reuse predictions."""
        return bool(self.spec.time_conditioning) or self.spec.score_scaling != "none"

    def sigma(self, t: Tensor, batch: int | None = None) -> Tensor:
        """The family's conditioning scalar (B,) at diffusion time t (float or (B,))."""
        t = torch.as_tensor(t, dtype=torch.float64 if not torch.is_tensor(t) else None)
        if t.dim() == 0 and batch is not None:
            t = t.expand(batch)
        return sigma_of(self.spec.family, t, self.spec.eps, self.process.schedule).to(self._device())

    def _device(self) -> torch.device:
        return self.net.vocab_embed.embedding.device

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self._device().type, dtype=self.compute_dtype)

    def raw(self, xt: Tensor, t, noise: Tensor | None = None) -> Tensor:
        """The network's output (B, L, rows) in float32, as the project's backbone returns it."""
        with self._autocast():
            return self.net(xt, self.sigma(t, xt.shape[0]), noise).float()

    def family_output(self, xt: Tensor, t, noise: Tensor | None = None) -> Tensor:
        """The project's own forward output (B, L, rows): see ``ddlm.pretrained.families.postprocess``."""
        spec = self.spec
        raw = self.raw(xt, t, noise)
        return postprocess(spec.family.postprocess, raw, xt, self.sigma(t, xt.shape[0]), mask_id=spec.mask_id,
                           noise=noise, scale_by_sigma=spec.scale_by_sigma)

    def forward(self, xt: Tensor, t, noise: Tensor | None = None) -> Tensor:
        """``model.prediction`` over the process's K tokens (B, L, K), float32 (module docstring).

        Logits, as ddlm's own ``DiffusionModel`` returns them (its consumers normalise): the network's
        first K rows, whose log-softmax is the family's own output restricted to the K data tokens and
        renormalised at every position the process reads (masked MDM positions, active AUDM positions,
        every UDM position); positions the family carries over (unmasked tokens, inactive AUDM
        positions) are left to ddlm's kernels, which carry them over themselves, as for ddlm's own
        networks. SEDD: its log-score (scaled, 0 at x_t) over the K tokens."""
        k = self.process.vocab_size
        if self.prediction == "score" and self.spec.family.name != "ddlm":
            return self.family_output(xt, t, noise)[..., :k]
        raw = self.raw(xt, t, noise)
        if self.spec.score_scaling == "noise_level":  # ddlm's export of a scaled score network, as DiffusionModel
            alpha = self.process.alpha(torch.as_tensor(t, device=xt.device).to(torch.float64)).clamp_min(1e-30)
            alpha = alpha.expand(xt.shape[0]) if alpha.dim() == 0 else alpha
            return raw + self.process.score_log_scale(alpha).to(raw.dtype)[:, None, None]
        return raw if raw.shape[-1] == k else raw[..., :k]
