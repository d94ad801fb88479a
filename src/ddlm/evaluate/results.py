"""Result records of the evaluation commands: atomic JSON/JSONL writing and the run description that
goes into every record, so that any reported number can be remade from its record alone."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text, check_writable
from ..checkpoint import checkpoint_step
from ..config import is_autoregressive
from ..runs import resolve_checkpoint


class ResultExistsError(FileExistsError, ValueError):
    """A result file exists and overwriting was not asked for (a ValueError too, so that the command
    line reports it as an error message)."""


def check_out(path: str | os.PathLike | None, overwrite: bool) -> None:
    """Fail early, before any work, if a result would overwrite an existing file or could not be
    written (``ddlm._io.check_writable``).

    Raises:
        ResultExistsError: ``path`` exists and ``overwrite`` is False (the path is named).
        PermissionError: ``path`` cannot be written (the folder in the way is named).
    """
    if path is not None and os.path.lexists(path) and not overwrite:
        raise ResultExistsError(f"result file {str(path)!r} already exists; choose another path or pass "
                                "overwrite=True (--overwrite) to replace it")
    if path is not None:
        check_writable(path, "result file")


@dataclass
class LoadedRun:
    """A run (or checkpoint folder) loaded for evaluation.

    Attributes:
        model: the EMA model in eval mode on ``device`` (a ``DiffusionModel`` or an ``ARTransformer``).
        process: the model's process, or None for an autoregressive run.
        tokenizer: the run's tokenizer.
        config: the run's resolved ``TrainConfig``.
        info: :func:`run_info` of the checkpoint that was loaded.
    """

    model: Any
    process: Any
    tokenizer: Any
    config: Any
    info: dict

    @property
    def autoregressive(self) -> bool:
        """Whether this is the autoregressive baseline (``ddlm.config.is_autoregressive``; its process is None)."""
        return is_autoregressive(self.config)

    @property
    def sample_length(self) -> int:
        """The default (and longest) sample length in tokens: the block size for a diffusion run; for
        an autoregressive run its context, BOS included (BOS + a whole block with a block-start token)."""
        return int(self.model.config.max_len) if self.autoregressive else int(self.config.data.block_size)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {str(path)!r} is unreadable: {e}") from e


def run_info(path: str | os.PathLike) -> dict:
    """What identifies the model behind a result: run path, checkpoint folder and step, process,
    model output, the run's config and the ddlm version doing the evaluation.

    Args:
        path: a run folder (its latest checkpoint is used) or a checkpoint folder.

    Returns:
        ``{"run", "checkpoint", "step", "process", "model_output", "config", "ddlm_version"}``;
        ``model_output`` is what the network predicts ("denoiser", "loo", "posterior", or
        "next_token" for the autoregressive baseline).
    """
    ckpt = resolve_checkpoint(path)
    return _info(path, ckpt, _read_json(ckpt / "config.json"), checkpoint_step(ckpt))


def _info(path, ckpt: Path, config: dict, step: int) -> dict:
    from .. import __version__
    from ..config import saved_config

    cfg = saved_config(config)
    if is_autoregressive(cfg):
        output = "next_token"
    else:
        from ..processes import REGISTRY

        output = cfg.model.output or REGISTRY[cfg.process].default_output
    return {"run": str(path), "checkpoint": str(ckpt), "step": step, "process": cfg.process,
            "model_output": output, "config": cfg.to_dict(), "ddlm_version": __version__}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> CUDA if available else CPU; otherwise the named device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_run(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> LoadedRun:
    """Load a run's EMA model, process, tokenizer and config for evaluation (nothing is unpickled;
    only the checkpoint's config, tokenizer and weights are read, never the corpus).

    Raises:
        FileNotFoundError: missing run folder or no checkpoint in it (the path is named).
        ddlm.checkpoint.CheckpointError: a damaged checkpoint (the file and the way out are named),
            weights that do not fit the config's architecture, or non-finite weights.
    """
    from ..config import saved_config
    from ..runs import model_from_checkpoint, open_checkpoint

    ckpt = open_checkpoint(path, weights_only=True)
    info = _info(path, ckpt.path, ckpt.config, ckpt.step)
    model, process, tokenizer = model_from_checkpoint(ckpt, ema=True)
    model = model.to(resolve_device(device)).eval()
    return LoadedRun(model, process, tokenizer, saved_config(info["config"]), info)


def _jsonable(obj: Any) -> Any:
    """Reject NaN/inf (not JSON) with the offending key path; tensors and numpy scalars as numbers."""

    def walk(x, where):
        if isinstance(x, dict):
            return {str(k): walk(v, f"{where}.{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, torch.Tensor):
            return walk(x.tolist(), where)
        if hasattr(x, "item") and callable(x.item) and not isinstance(x, (str, bytes)):
            x = x.item()  # numpy scalars
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"record value at {where} is {x}, which JSON cannot hold; use None")
        if isinstance(x, Path):
            return str(x)
        return x

    return walk(obj, "record")


def _atomic_write(path: Path, data: str, overwrite: bool) -> Path:
    check_out(path, overwrite)
    try:
        return atomic_write_text(path, data, overwrite=overwrite)
    except FileExistsError:  # the path appeared meanwhile: never clobber a result
        check_out(path, overwrite)
        raise


def write_json(path: str | os.PathLike, record: dict, overwrite: bool = False) -> Path:
    """Write ``record`` as indented JSON at ``path`` atomically (temporary file, then rename).

    Raises:
        ResultExistsError: ``path`` exists and ``overwrite`` is False (nothing is written); it is
            both a FileExistsError and a ValueError.
        ValueError: the record holds NaN or infinity (its key path is named).
    """
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    text = json.dumps(_jsonable(record), indent=1, allow_nan=False) + "\n"
    return _atomic_write(Path(path), text, overwrite)


def write_jsonl(path: str | os.PathLike, records: list[dict], overwrite: bool = False) -> Path:
    """Write ``records`` as JSON lines at ``path`` atomically (same rules as :func:`write_json`)."""
    lines = [json.dumps(_jsonable(r), allow_nan=False) for r in records]
    return _atomic_write(Path(path), "".join(line + "\n" for line in lines), overwrite)


def write_out(out: str | os.PathLike | None, record: dict, overwrite: bool = False) -> None:
    """A command's ``--out``: write ``record`` there as JSON (see :func:`write_json`) and say so;
    nothing when ``out`` is None."""
    if out is not None:
        write_json(out, record, overwrite=overwrite)
        print(f"wrote {out}")
