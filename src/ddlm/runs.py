"""Run folders: where a training run keeps its checkpoints, which checkpoint a path designates, and
loading or exporting a run's model.

A run folder (``run_dir`` of the config) holds ``config.json``, ``metrics.jsonl``, ``samples.jsonl``
and ``checkpoints/``: ``step_000123/`` checkpoint folders (``ddlm.checkpoint``) and a ``latest`` text
file holding the name of the newest one. Every command that takes a run accepts a run folder (its
latest complete checkpoint is used) or one checkpoint folder (it holds ``meta.json``), such as an
exported model: :func:`resolve_checkpoint` is that rule.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

import torch

from ._io import atomic_write_text
from .checkpoint import META, is_complete, load_checkpoint, save_checkpoint

CHECKPOINTS, LATEST = "checkpoints", "latest"
_STEP = re.compile(r"^step_(\d+)$")


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run's folder (it holds ``checkpoints/``)."""
    return (Path(path) / CHECKPOINTS).is_dir()


def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one checkpoint folder (it holds ``meta.json``)."""
    return (Path(path) / META).is_file()


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint of ``step``, e.g. ``step_000123``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return f"step_{step:06d}"


def _complete_steps(run_dir: Path) -> list[Path]:
    """Complete ``checkpoints/step_*`` folders, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir()
             if (m := _STEP.match(p.name)) and not p.is_symlink() and p.is_dir() and is_complete(p)]
    return [p for _, p in sorted(found)]


def _named_latest(run_dir: Path) -> Path | None:
    try:
        name = (run_dir / CHECKPOINTS / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    folder = run_dir / CHECKPOINTS / name
    return folder if _STEP.match(name) and folder.is_dir() and is_complete(folder) else None


def set_latest(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
    """Atomically write ``<name>`` into ``run_dir/checkpoints/latest`` (a complete step folder's name)."""
    run_dir, name = Path(run_dir), Path(checkpoint).name
    if not _STEP.match(name) or not is_complete(run_dir / CHECKPOINTS / name):
        raise ValueError(f"{run_dir / CHECKPOINTS / name} is not a complete step checkpoint")
    atomic_write_text(run_dir / CHECKPOINTS / LATEST, f"{name}\n")


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``checkpoints/latest`` names if complete, else the highest complete step, else None."""
    run_dir = Path(run_dir)
    named = _named_latest(run_dir)
    if named is not None:
        return named
    steps = _complete_steps(run_dir)
    return steps[-1] if steps else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete step folders, never the one ``latest`` names.

    Incomplete folders, temp folders and anything else are left alone. Returns the deleted folders.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a non-negative int, got {keep!r}")
    run_dir = Path(run_dir)
    steps = _complete_steps(run_dir)
    latest = _named_latest(run_dir)
    doomed = [p for p in steps[:max(len(steps) - keep, 0)] if p != latest]
    for folder in doomed:  # rename first: a crash mid-delete leaves a temp folder, not a broken step
        trash = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(8)}"
        os.replace(folder, trash)
        shutil.rmtree(trash)
    return doomed


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder a run path designates: the latest complete checkpoint of a run folder,
    or the folder itself when it is a checkpoint folder (it holds ``meta.json``).

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds no checkpoint (the path is named).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {str(path)!r} is not a folder")
    if is_run_folder(path):
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"run folder {str(path)!r} holds no complete checkpoint under checkpoints/")
        return ckpt
    if is_checkpoint_folder(path):
        return path
    raise FileNotFoundError(
        f"run folder {str(path)!r} holds no checkpoint: expected checkpoints/step_N/ folders (a training run) "
        "or meta.json (a checkpoint folder)"
    )


def weights_choice(weights=None, ema: bool | None = None) -> str:
    """"ema" or "raw" from ``load``'s arguments: ``weights`` (``load(path, False)``, the old positional
    ``ema``, still means raw) or the older keyword ``ema``; EMA when neither is given; both given must agree."""
    if isinstance(weights, bool):
        weights = "ema" if weights else "raw"
    if weights is not None and weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if ema is not None and not isinstance(ema, bool):
        raise ValueError(f"ema must be True or False, got {ema!r}")
    from_ema = None if ema is None else ("ema" if ema else "raw")
    if weights is not None and from_ema is not None and weights != from_ema:
        raise ValueError(f"ema={ema} contradicts weights={weights!r}; give one of them")
    return weights or from_ema or "ema"


def load(path: str | os.PathLike, weights: str | None = None, *, ema: bool | None = None, tokenizer=None,
         dtype: str = "float32"):
    """Load a run folder, one checkpoint folder, or a released checkpoint: returns (model, process, tokenizer).

    ``weights`` is "ema" (the default) or "raw"; ``ema=True``/``False`` is the older spelling of the same
    choice. A ddlm run gives a ``DiffusionModel`` in eval mode with the chosen weights; for an
    autoregressive run it is the ``ARTransformer`` and the process is None. Nothing is unpickled. A
    Hugging Face style folder, a Lightning ``.ckpt`` file or a SEDD ``checkpoint.pth`` is imported by
    ``ddlm.pretrained.load_pretrained`` (``tokenizer`` and ``dtype`` apply to those only; a file holding
    one set of weights ignores ``weights``).

    Raises:
        FileNotFoundError: no such folder, or no checkpoint in it (see :func:`resolve_checkpoint`).
        ddlm.checkpoint.CheckpointError: a corrupt checkpoint (the file is named).
        ValueError: ``tokenizer`` or ``dtype`` given for a ddlm run (it carries its own tokenizer and
            computes in float32); errors of ``load_pretrained`` for released checkpoints.
    """
    from .config import saved_config
    from .data.tokenizers import tokenizer_from_dict
    from .models.factory import build_model
    from .pretrained import is_pretrained, load_pretrained

    weights = weights_choice(weights, ema)
    if is_pretrained(path):
        return load_pretrained(path, weights, tokenizer=tokenizer, dtype=dtype)
    if tokenizer is not None or dtype != "float32":
        raise ValueError(f"tokenizer= and dtype= apply to imported checkpoints; {str(path)!r} is a ddlm run, which "
                         "carries its own tokenizer and computes in float32")
    ckpt = load_checkpoint(resolve_checkpoint(path))
    cfg = saved_config(ckpt.config)
    tokenizer = tokenizer_from_dict(ckpt.tokenizer)
    model = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id)
    model.load_state_dict(ckpt.ema if weights == "ema" and ckpt.ema is not None else ckpt.model)
    return model.eval(), getattr(model, "process", None), tokenizer


EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export(run: str | os.PathLike, out: str | os.PathLike, description: str = "", train_minutes: float | None = None,
           dtype: str = "float32") -> Path:
    """Write the EMA weights of a run's latest checkpoint (or of a checkpoint folder), with its config,
    tokenizer and metrics, as a small standalone checkpoint (no optimizer state) at ``out``.

    ``dtype`` "float16" or "bfloat16" stores the floating-point weights at half the size; ``load``
    casts them back to float32 (the model then computes in float32 with rounded weights)."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    ckpt_path = resolve_checkpoint(run)
    ckpt = load_checkpoint(ckpt_path)
    metrics = dict(ckpt.metrics or {}, description=description, exported_from=str(ckpt_path), weights_dtype=dtype)
    if train_minutes is not None:
        metrics["train_minutes"] = train_minutes
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"out {str(out)!r} already exists; choose a new folder (nothing was overwritten)")
    return save_checkpoint(out, step=ckpt.step, config=ckpt.config, tokenizer=ckpt.tokenizer,
                           model={k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v
                                  for k, v in (ckpt.ema if ckpt.ema is not None else ckpt.model).items()},
                           metrics=metrics)
