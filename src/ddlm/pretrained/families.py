"""The conventions of each family of released checkpoints: which process and vocabulary, what the
network is fed, what it outputs and how its project post-processes it.

Every family runs the same backbone (``ddlm.models.imported_dit``); they differ in

- the vocabulary: the rows of the network and the K of the process (the paper's GPT-2 UDM models
  have 50,258 rows for a process over 50,257 tokens; DUO's 50,258 rows are all uniform states);
- the conditioning: sigma = -log(alpha_t) of alpha_t = 1 - (1 - eps) t, computed in float32 as
  ``-log1p(-(1 - eps) t)`` (MDLM, UDLM, SEDD) or ``-log(1 - (1 - eps) t)`` (DUO, rev_udm), zeroed when
  the family trains without time conditioning (MDLM's OWT release), plus the noise tokens for AUDM;
- the output: logits of the denoiser (MDLM, DUO, UDLM), of the LOO (the paper's UDM), of the AUDM
  posterior, or SEDD's log-score with its sigma scaling;
- the post-processing of its own forward pass (:func:`postprocess`): SUBS for MDLM, carry-over of
  unmasked tokens for the paper's MDM/AUDM, log-softmax, SEDD's scaling and zero at x_t.

``FAMILIES`` lists them with where their checkpoints are published (docs/pretrained.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: MDLM's and rev_udm's "minus infinity" (``NEG_INFINITY = -1_000_000.0``)
NEG_INFINITY = -1_000_000.0


@dataclass(frozen=True)
class Family:
    """One family's fixed conventions (the per-checkpoint ones are read from its config).

    Attributes:
        name: ddlm's name of the family.
        project: the repository whose code defines it.
        published: where its checkpoints are published.
        process: ddlm process name ("mdm", "udm", "audm").
        extra_rows: network rows beyond the process's K when the tokenizer has no [MASK] (GPT-2):
            1 for MDLM/SEDD-absorb (the MASK row) and the paper's models (a MASK/[PAD] row the uniform
            processes never use), 0 for DUO/UDLM/SEDD-uniform.
        sigma: "log1p" (``-log1p(-(1 - eps) t)``), "log_alpha" (``-log(1 - (1 - eps) t)``) or "ddlm"
            (ddlm's own: alpha in float64 from the schedule, -log, then float32).
        output: what the network's raw output is.
        postprocess: the project's own post-processing (key of :func:`postprocess`).
        default_prediction: ``model.prediction`` unless the checkpoint's config says otherwise.
    """

    name: str
    project: str
    published: str
    process: str
    extra_rows: int
    sigma: str
    output: str
    postprocess: str
    default_prediction: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("mdlm", "kuleshov-group/mdlm", "Hugging Face kuleshov-group/mdlm-owt, mdlm-no_flashattn-fp32-owt (HF "
           "folders); Lightning .ckpt of MDLM's training", "mdm", 1, "log1p", "logits over K+1 rows (MASK last)",
           "subs", "denoiser"),
    Family("duo", "s-sahoo/duo", "Hugging Face s-sahoo/duo, s-sahoo/duo-distilled; Google Drive (Lightning .ckpt)",
           "udm", 0, "log_alpha", "denoiser logits over len(tokenizer) rows ([PAD] is a uniform state)",
           "log_softmax", "denoiser"),
    Family("udlm", "kuleshov-group/discrete-diffusion-guidance", "Hugging Face kuleshov-group/udlm-lm1b (HF folder); "
           "Lightning .ckpt", "udm", 0, "log1p", "denoiser logits (d3pm parameterization) over all rows",
           "log_softmax", "denoiser"),
    Family("sedd_absorb", "louaaron/Score-Entropy-Discrete-Diffusion", "Hugging Face louaaron/sedd-small, "
           "sedd-medium (HF folders); run folders (checkpoint.pth); MDLM's and BD3-LM's SEDD baselines (Lightning "
           ".ckpt of MDLM's code, parameterization sedd; Google Drive folder of MDLM's README)", "mdm", 1, "log1p",
           "log-score before SEDD's sigma scaling (output_layer)", "sedd", "score"),
    Family("sedd_uniform", "louaaron/Score-Entropy-Discrete-Diffusion", "run folders of SEDD's own training "
           "(checkpoint.pth); the hub models its README names are absorbing",
           "udm", 0, "log1p", "log-score (output_layer; no sigma scaling)", "sedd", "score"),
    Family("rev_udm_udlm", "samsongourevitch/rev_udm", "Google Drive (Lightning .ckpt), see the repository's README",
           "udm", 1, "log_alpha", "LOO logits (model_prediction mean_loo) or denoiser logits (mean)",
           "log_softmax", "loo"),
    Family("rev_udm_audm", "samsongourevitch/rev_udm", "Google Drive (Lightning .ckpt)", "audm", 1, "log_alpha",
           "AUDM posterior logits", "carry_over_noise", "posterior"),
    Family("rev_udm_mdlm", "samsongourevitch/rev_udm", "Google Drive (Lightning .ckpt)", "mdm", 1, "log_alpha",
           "denoiser logits over K+1 rows (MASK last)", "carry_over_mask", "denoiser"),
    Family("ddlm", "ddlm", "ddlm export RUN OUT --format hf", "(stated in config.json)", 0, "ddlm",
           "logits over the K data tokens in the stated prediction", "none", "(stated in config.json)"),
)}


def sigma_of(family: Family, t: Tensor, eps: float, schedule=None) -> Tensor:
    """The conditioning scalar the family feeds its network at ddlm's diffusion time t (B,)."""
    if family.sigma == "ddlm":
        alpha = schedule.alpha(t.to(torch.float64)).clamp_min(1e-30)
        return (-torch.log(alpha)).to(torch.float32)
    t = t.to(torch.float32)
    if family.sigma == "log1p":
        return -torch.log1p(-(1 - eps) * t)
    return -torch.log(1 - (1 - eps) * t)


def _carry_over(xt: Tensor, logits: Tensor, keep: Tensor) -> Tensor:
    """Where ``keep`` is False: 0 at x_t and NEG_INFINITY elsewhere (rev_udm's ``_carry_over_unmasking``)."""
    frozen = torch.full_like(logits, NEG_INFINITY).scatter_(-1, xt.unsqueeze(-1), 0.0)
    return torch.where(keep.unsqueeze(-1), logits, frozen)


def postprocess(kind: str, raw: Tensor, xt: Tensor, sigma: Tensor, *, mask_id: int | None = None,
                noise: Tensor | None = None, scale_by_sigma: bool = False) -> Tensor:
    """The project's own forward output from the network's raw output (all rows kept).

    - "subs" (MDLM ``_subs_parameterization``): MASK row -1e6, normalise, unmasked positions 0 at x_t
      and -1e6 elsewhere;
    - "carry_over_mask" (rev_udm MDLM): MASK row -1e6, unmasked positions carried over, log-softmax;
    - "carry_over_noise" (rev_udm AUDM): positions with x_t != u carried over, log-softmax;
    - "log_softmax" (DUO, UDLM, rev_udm UDLM): log-softmax;
    - "sedd" (SEDD ``forward``): with ``scale_by_sigma`` minus log(e^sigma - 1) and log(rows - 1), then 0 at x_t;
    - "none": the raw output.
    """
    if kind == "none":
        return raw
    if kind == "log_softmax":
        return raw.log_softmax(-1)
    if kind == "subs":
        logits = raw.clone()
        logits[..., mask_id] += NEG_INFINITY
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        return _carry_over(xt, logits, xt == mask_id)
    if kind == "carry_over_mask":
        logits = raw.clone()
        logits[..., mask_id] += NEG_INFINITY
        return _carry_over(xt, logits, xt == mask_id).log_softmax(-1)
    if kind == "carry_over_noise":
        return _carry_over(xt, raw, xt == noise).log_softmax(-1)
    if kind == "sedd":
        x = raw
        if scale_by_sigma:
            esigm1 = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1)
            x = x - esigm1.log().to(x.dtype)[:, None, None] - math.log(x.shape[-1] - 1)
        return torch.scatter(x, -1, xt[..., None], torch.zeros_like(x[..., :1]))
    raise ValueError(f"postprocess kind must be one of subs, carry_over_mask, carry_over_noise, log_softmax, sedd, "
                     f"none; got {kind!r}")
