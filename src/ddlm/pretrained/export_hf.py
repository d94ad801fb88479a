"""``ddlm export RUN OUT --format hf``: a ddlm diffusion run as a Hugging Face style folder in the
layout of the released checkpoints (``backbone.vocab_embed.embedding``, ``backbone.sigma_map``,
``backbone.blocks.N.{norm1, attn_qkv, attn_out, norm2, mlp, adaLN_modulation}``,
``backbone.output_layer``), with a ``config.json`` stating its conventions, read back by
``ddlm.load`` bit-identically (the same weights, the same outputs).

The mapping from ddlm's DiT: ``embed`` -> ``vocab_embed.embedding``; ``time_embed.mlp`` ->
``sigma_map.mlp``; per block ``qkv`` -> ``attn_qkv``, ``proj`` -> ``attn_out``, ``mlp.fc1``/``fc2`` ->
``mlp.0``/``mlp.2``, ``modulation`` -> ``adaLN_modulation``; ``final_modulation``/``head`` ->
``output_layer.adaLN_modulation``/``linear``. ddlm's LayerNorms have no weight: the layout's norm
weights are ones. RoPE's inverse frequencies are stored as ``rotary_emb.inv_freq`` (ddlm's formula).
AUDM's noise conditioning is ddlm's additive one: ``conditioning_vocab_embed`` and
``conditioning_active_embed`` (``noise_fusion: additive`` in the config).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch

PREFIX = "backbone."


def _backbone_state(net) -> dict:
    """ddlm DiT state dict -> the released checkpoints' key layout (module docstring)."""
    cfg = net.config
    sd = net.state_dict()
    hd = cfg.hidden // cfg.heads
    out = {"vocab_embed.embedding": sd["embed.weight"]}
    if cfg.audm:
        out["conditioning_vocab_embed.embedding"] = sd["noise_embed.weight"]
        out["conditioning_active_embed.embedding"] = sd["active_embed.weight"]
    for i in (0, 2):
        out[f"sigma_map.mlp.{i}.weight"] = sd[f"time_embed.mlp.{i}.weight"]
        out[f"sigma_map.mlp.{i}.bias"] = sd[f"time_embed.mlp.{i}.bias"]
    out["rotary_emb.inv_freq"] = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ones = torch.ones(cfg.hidden)
    for b in range(cfg.blocks):
        src, dst = f"blocks.{b}.", f"blocks.{b}."
        out[dst + "norm1.weight"] = ones.clone()
        out[dst + "attn_qkv.weight"] = sd[src + "qkv.weight"]
        out[dst + "attn_out.weight"] = sd[src + "proj.weight"]
        out[dst + "norm2.weight"] = ones.clone()
        for a, c in (("fc1", "0"), ("fc2", "2")):
            out[dst + f"mlp.{c}.weight"] = sd[src + f"mlp.{a}.weight"]
            out[dst + f"mlp.{c}.bias"] = sd[src + f"mlp.{a}.bias"]
        out[dst + "adaLN_modulation.weight"] = sd[src + "modulation.weight"]
        out[dst + "adaLN_modulation.bias"] = sd[src + "modulation.bias"]
    out["output_layer.norm_final.weight"] = ones.clone()
    out["output_layer.linear.weight"] = sd["head.weight"]
    out["output_layer.linear.bias"] = sd["head.bias"]
    out["output_layer.adaLN_modulation.weight"] = sd["final_modulation.weight"]
    out["output_layer.adaLN_modulation.bias"] = sd["final_modulation.bias"]
    return out


def export_hf(run: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float32", description: str = "",
              train_minutes: float | None = None) -> Path:
    """Write a diffusion run's EMA weights (raw if it has none) as a Hugging Face style folder ``out``:
    ``config.json``, ``model.safetensors``, ``ddlm_tokenizer.json`` (and ``tokenizer.json`` for a
    ``tokenizers`` tokenizer).

    Raises:
        FileExistsError: ``out`` exists (nothing is overwritten).
        ValueError: an autoregressive run (it has no diffusion backbone), an unknown dtype.
    """
    from safetensors.torch import save_file

    from .. import __version__
    from .._io import atomic_write_text
    from ..checkpoint import load_checkpoint
    from ..config import is_autoregressive, saved_config
    from ..data.tokenizers import tokenizer_from_dict
    from ..models.factory import build_model
    from ..runs import EXPORT_DTYPES, resolve_checkpoint

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"out {str(out)!r} already exists; choose a new folder (nothing was overwritten)")
    ckpt_path = resolve_checkpoint(run)
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt.config)
    if is_autoregressive(cfg):
        raise ValueError(f"run {str(run)!r} is the autoregressive baseline; --format hf exports diffusion runs only")
    tokenizer = tokenizer_from_dict(ckpt.tokenizer)
    model = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id)
    model.load_state_dict(ckpt.ema if ckpt.ema is not None else ckpt.model)
    net, process = model.net, model.process
    if getattr(process, "steps", None) is not None:
        raise ValueError(f"run {str(run)!r} has the discrete-time process {cfg.process!r} (its transition options are "
                         "not in the released layout's conventions); --format hf exports continuous-time runs")
    from ..models.dit import DiT

    if not isinstance(net, DiT):
        raise ValueError(f"run {str(run)!r} has backbone {cfg.model.backbone!r}; --format hf writes the DiT layout of "
                         "the released checkpoints, so it exports DiT runs only")
    state = {PREFIX + k: v.to(EXPORT_DTYPES[dtype]).contiguous() for k, v in _backbone_state(net).items()}
    k = process.vocab_size
    special = {str(k): "MASK (input only; the output has the K data tokens)"} if process.extra_input_ids else {}
    config = {
        "architectures": ["DDLMDiT"], "model_type": "ddlm_dit", "vocab_size": net.config.vocab_size,
        "output_size": net.config.output_size, "hidden_dim": net.config.hidden, "cond_dim": net.config.cond_dim,
        "n_blocks": net.config.blocks, "n_heads": net.config.heads, "mlp_ratio": net.config.mlp_ratio,
        "model_length": net.config.max_len, "freq_dim": net.time_embed.freq_dim,
        "time_conditioning": net.config.time_conditioning, "dropout": net.config.dropout, "dtype": dtype,
        "ddlm": {
            "format_version": 1, "ddlm_version": __version__, "process": cfg.process, "process_vocab_size": k,
            "prediction": model.prediction, "score_scaling": model.score_scaling,
            "mask_id": k if process.extra_input_ids else None,
            "special_rows": special, "schedule": {"name": cfg.schedule, "eps": cfg.eps}, "t_min": cfg.t_min,
            "conditioning": "sigma = -log(alpha_t) of the schedule (alpha in float64, then float32); zeros when "
                            "time_conditioning is false",
            "noise_fusion": "additive" if process.has_noise else None,
            "output": f"logits over the K = {k} data tokens; their log-softmax is the '{model.prediction}' prediction",
            "key_prefix": PREFIX, "layernorm": "no affine in ddlm: norm weights are ones",
            "weights": "ema" if ckpt.ema is not None else "raw (the run has no EMA)",
            "tokenizer": ckpt.tokenizer.get("type"),
            "special_tokens": {"bos_token": _token_text(tokenizer, tokenizer.bos_id),
                               "eos_token": _token_text(tokenizer, tokenizer.eos_id)},
            "exported_from": str(ckpt_path), "step": ckpt.step, "description": description,
            "train_minutes": train_minutes,
        },
    }
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(8)}"
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_text(tmp / "config.json", json.dumps(config, indent=1) + "\n")
    atomic_write_text(tmp / "ddlm_tokenizer.json", json.dumps(ckpt.tokenizer, ensure_ascii=False))
    if ckpt.tokenizer.get("type") == "hf_json":
        atomic_write_text(tmp / "tokenizer.json", json.dumps(ckpt.tokenizer["json"], ensure_ascii=False))
    os.replace(tmp, out)
    return out


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special=False)
