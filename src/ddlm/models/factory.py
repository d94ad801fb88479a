"""The network of a run config: the DiT bound to the run's diffusion process, or the autoregressive
baseline on the same trunk (process "ar"). Training builds its model here, and loading a run builds
the same model before filling in the saved weights."""

from __future__ import annotations

from ..config import TrainConfig, is_autoregressive
from .ar import ARConfig, ARTransformer
from .diffusion import DiffusionModel


def build_model(cfg: TrainConfig, vocab_size: int, start_id: int | None = None):
    """The DiT of the run's process, or the autoregressive baseline on the same trunk (process "ar";
    ``start_id``, the tokenizer's BOS, is required when ``model.block_start`` is true)."""
    overrides = {k: getattr(cfg.model, k) for k in ("hidden", "blocks", "heads") if getattr(cfg.model, k) is not None}
    if is_autoregressive(cfg):
        if cfg.model.block_start and start_id is None:
            raise ValueError("build_model: an autoregressive run with model.block_start needs start_id (the BOS id)")
        start = start_id if cfg.model.block_start else None
        return ARTransformer(ARConfig.preset(cfg.model.preset, vocab_size, cfg.data.block_size + (start is not None),
                                             dropout=cfg.model.dropout, start_id=start, **overrides))
    return DiffusionModel.build(cfg.process, vocab_size, cfg.data.block_size, preset=cfg.model.preset,
                                output=cfg.model.output, schedule=cfg.schedule, eps=cfg.eps,
                                time_conditioning=cfg.model.time_conditioning, dropout=cfg.model.dropout,
                                backbone=cfg.model.backbone, process_options=cfg.process_options(),
                                score_scaling=cfg.model.score_scaling, **overrides)
