"""Run folders: where a training run keeps its checkpoints, which checkpoint a path designates, and
loading or exporting a run's model.

A run folder (``run_dir`` of the config) holds ``config.json``, ``metrics.jsonl``, ``samples.jsonl``
and ``checkpoints/``: ``step_000123/`` checkpoint folders (``ddlm.checkpoint``) and a ``latest`` text
file holding the name of the newest one. Every command that takes a run accepts a run folder (its
latest checkpoint is used) or one checkpoint folder (it holds ``meta.json``), such as an exported
model: :func:`resolve_checkpoint` is that rule.

A damaged latest checkpoint (truncated, a checksum that does not match, ``latest`` naming a folder
that is gone) is reported with its path and the reason, the same way for training and for every
command that loads a run; nothing silently falls back to an older checkpoint. The message names the
newest older checkpoint and how to use it (``--resume-previous`` for training, that checkpoint's
folder for the other commands). Loading a model verifies only the files a model needs (config,
tokenizer, weights), so a checkpoint whose optimizer state is damaged can still be sampled and
evaluated. See docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

import torch

from ._io import atomic_write_text
from .checkpoint import META, Checkpoint, CheckpointError, is_complete, load_checkpoint, save_checkpoint

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
    """The run's latest checkpoint folder: the one ``checkpoints/latest`` names or, when there is no
    such file, the highest ``step_N`` folder; None when the run has no checkpoint.

    The folder is not verified here (loading it verifies it); a damaged one is reported by the
    loaders, never replaced by an older one (see the module docstring).

    Raises:
        CheckpointError: ``checkpoints/latest`` cannot be read, or names a folder that does not exist.
    """
    root = Path(run_dir) / CHECKPOINTS
    named = root / LATEST
    if os.path.lexists(named):
        try:
            name = named.read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise CheckpointError(f"{named}: unreadable") from None
        if not _STEP.match(name):
            raise CheckpointError(f"{named}: does not hold the name of a step_N checkpoint folder")
        folder = root / name
        if not folder.is_dir():
            replaced = any(root.glob(f".{name}.old-*"))
            raise CheckpointError(f"{named} names {name}, which " + (
                "a save was replacing when it stopped (resuming the training repairs it)" if replaced
                else "does not exist"))
        return folder
    found = sorted((int(m[1]), p) for p in root.iterdir() if (m := _STEP.match(p.name))) if root.is_dir() else []
    return found[-1][1] if found else None


def previous_checkpoint(run_dir: str | os.PathLike, before: Path) -> Path | None:
    """The newest complete ``step_N`` folder of a run older than ``before`` (sizes checked, not
    checksums), or None."""
    steps = [p for p in _complete_steps(Path(run_dir)) if int(_STEP.match(p.name)[1]) < _step_of(before)]
    return steps[-1] if steps else None


def _step_of(folder: Path) -> int:
    m = _STEP.match(Path(folder).name)
    return int(m[1]) if m else 1 << 62


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
    """The checkpoint folder a run path designates: the latest checkpoint of a run folder
    (:func:`latest_checkpoint`), or the folder itself when it is a checkpoint folder (it holds
    ``meta.json``).

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds no checkpoint (the path is named).
        CheckpointError: the run's ``checkpoints/latest`` is damaged (with the way out).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {str(path)!r} is not a folder")
    if is_run_folder(path):
        try:
            ckpt = latest_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {_way_out(path, None, training=False)}") from None
        if ckpt is None:
            raise FileNotFoundError(f"run folder {str(path)!r} holds no complete checkpoint under checkpoints/")
        return ckpt
    if is_checkpoint_folder(path):
        return path
    raise FileNotFoundError(
        f"run folder {str(path)!r} holds no checkpoint: expected checkpoints/step_N/ folders (a training run) "
        "or meta.json (a checkpoint folder)"
    )


def _way_out(run: Path, latest: Path | None, training: bool) -> str:
    """What to do about a damaged latest checkpoint of ``run``: use the previous one explicitly."""
    previous = previous_checkpoint(run, latest) if latest is not None else None
    if previous is None and latest is None:
        steps = _complete_steps(Path(run))
        previous = steps[-1] if steps else None
    if previous is None:
        return "no older complete checkpoint exists: delete the damaged one (or the run) and train again"
    if training:
        return (f"nothing was read from an older checkpoint; to resume from the previous one, {previous.name}, "
                "pass --resume-previous (train(..., resume='previous')), which moves the damaged one aside")
    return (f"nothing was read from an older checkpoint; to use the previous one, give its folder instead of the "
            f"run: {previous}")


def open_checkpoint(path: str | os.PathLike, *, weights_only: bool = True, training: bool = False) -> Checkpoint:
    """Resolve a run or checkpoint folder (:func:`resolve_checkpoint`) and load it, verified.

    Args:
        path: a run folder (its latest checkpoint) or a checkpoint folder.
        weights_only: read only what a model needs (``ddlm.checkpoint.load_checkpoint``).
        training: word the way out for ``ddlm train`` (``--resume-previous``).

    Raises:
        FileNotFoundError: no such folder, or no checkpoint in it.
        CheckpointError: the checkpoint is damaged: the file, the reason and, for a run folder,
            the previous checkpoint and how to use it.
    """
    folder = resolve_checkpoint(path)
    try:
        return load_checkpoint(folder, weights_only=weights_only)
    except CheckpointError as e:
        if not is_run_folder(path):
            raise
        raise CheckpointError(f"the latest checkpoint of run {str(path)!r} is damaged: {e}; "
                              f"{_way_out(Path(path), folder, training)}") from None


def resume_checkpoint(run_dir: str | os.PathLike, previous: bool = False, log=print) -> Checkpoint | None:
    """The checkpoint a training resumes from, fully verified: the run's latest; None for a new run.

    A damaged latest checkpoint is an error naming the file, the reason and the way out, unless
    ``previous``: then it is moved aside (renamed ``step_N.damaged-<hex>``, kept for inspection),
    the newest older checkpoint that verifies is used, ``checkpoints/latest`` names it, and ``log``
    says so. Call it only while holding the run's lock.

    Raises:
        CheckpointError: the latest is damaged and ``previous`` is False, or no checkpoint verifies.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINTS).is_dir():
        return None
    folder = None
    try:
        folder = latest_checkpoint(run_dir)
        return None if folder is None else load_checkpoint(folder)
    except CheckpointError as e:
        if not previous:
            raise CheckpointError(f"the latest checkpoint of run {str(run_dir)!r} is damaged: {e}; "
                                  f"{_way_out(run_dir, folder, training=True)}") from None
        damage = e
    older = [p for p in _complete_steps(run_dir) if folder is None or _step_of(p) < _step_of(folder)]
    for candidate in reversed(older):
        try:
            ckpt = load_checkpoint(candidate)
        except CheckpointError as e:
            log(f"{candidate} is damaged too ({e}); trying an older one")
            continue
        moved = ""
        if folder is not None and folder.is_dir():
            aside = folder.parent / f"{folder.name}.damaged-{secrets.token_hex(4)}"
            os.replace(folder, aside)
            moved = f"; moved it aside to {aside}"
        set_latest(run_dir, candidate)
        log(f"the latest checkpoint of run {str(run_dir)!r} is damaged ({damage}){moved}; resuming from "
            f"{candidate.name} as asked (--resume-previous)")
        return ckpt
    raise CheckpointError(f"the latest checkpoint of run {str(run_dir)!r} is damaged ({damage}) and no older "
                          "checkpoint verifies: delete the run folder (or choose a new run_dir) and train again")


def check_weights(model: torch.nn.Module, state: dict, where: str) -> None:
    """Check that ``state`` fits ``model`` (same names, same shapes) before ``load_state_dict``.

    Raises:
        CheckpointError: naming the first missing, unexpected or misshapen tensor, its shape in the
            file and the shape the config's architecture expects.
    """
    expected = model.state_dict()
    why = "the config (config.json) and the weights do not describe the same architecture"
    for name, want in expected.items():
        if name not in state:
            raise CheckpointError(f"{where}: tensor {name!r} is missing ({why}; expected shape {tuple(want.shape)})")
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(got.shape)}, but the architecture of "
                                  f"its config expects {tuple(want.shape)} ({why})")
    extra = [name for name in state if name not in expected]
    if extra:
        raise CheckpointError(f"{where}: holds {len(extra)} tensor(s) the config's architecture has no place for, "
                              f"such as {extra[0]!r} ({why})")


def check_finite_weights(state: dict, where: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run), naming the first such tensor."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinite values: the run diverged before "
                                  "this checkpoint was saved; use an earlier checkpoint, or train again with a lower "
                                  "optim.lr")


def model_from_checkpoint(ckpt: Checkpoint, ema: bool = True):
    """(model, process, tokenizer) of a loaded checkpoint, the model in eval mode with the EMA weights
    (``ema=False``: the raw ones), after :func:`check_weights` and :func:`check_finite_weights`."""
    from .config import saved_config
    from .data.tokenizers import tokenizer_from_dict
    from .models.factory import build_model

    cfg = saved_config(ckpt.config)
    tokenizer = tokenizer_from_dict(ckpt.tokenizer)
    model = build_model(cfg, tokenizer.vocab_size, tokenizer.bos_id)
    use_ema = ema and ckpt.ema is not None
    state = ckpt.ema if use_ema else ckpt.model
    where = str(Path(ckpt.path) / ("ema.safetensors" if use_ema else "model.safetensors"))
    check_weights(model, state, where)
    check_finite_weights(state, where)
    model.load_state_dict(state)
    return model.eval(), getattr(model, "process", None), tokenizer


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
    autoregressive run it is the ``ARTransformer`` and the process is None. Nothing is unpickled, only
    the files a model needs are read (never the corpus or the optimizer state). A Hugging Face style
    folder, a Lightning ``.ckpt`` file or a SEDD ``checkpoint.pth`` is imported by
    ``ddlm.pretrained.load_pretrained`` (``tokenizer`` and ``dtype`` apply to those only; a file holding
    one set of weights ignores ``weights``).

    Raises:
        FileNotFoundError: no such folder, or no checkpoint in it (see :func:`resolve_checkpoint`).
        ddlm.checkpoint.CheckpointError: a damaged checkpoint (the file and the way out are named),
            weights that do not fit the config's architecture, or weights that are not finite.
        ValueError: ``tokenizer`` or ``dtype`` given for a ddlm run (it carries its own tokenizer and
            computes in float32); errors of ``load_pretrained`` for released checkpoints.
    """
    from .pretrained import is_pretrained, load_pretrained

    weights = weights_choice(weights, ema)
    if is_pretrained(path):
        return load_pretrained(path, weights, tokenizer=tokenizer, dtype=dtype)
    if tokenizer is not None or dtype != "float32":
        raise ValueError(f"tokenizer= and dtype= apply to imported checkpoints; {str(path)!r} is a ddlm run, which "
                         "carries its own tokenizer and computes in float32")
    return model_from_checkpoint(open_checkpoint(path, weights_only=True), ema=weights == "ema")




EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export(run: str | os.PathLike, out: str | os.PathLike, description: str = "", train_minutes: float | None = None,
           dtype: str = "float32") -> Path:
    """Write the EMA weights of a run's latest checkpoint (or of a checkpoint folder), with its config,
    tokenizer and metrics, as a small standalone checkpoint (no optimizer state) at ``out``.

    ``dtype`` "float16" or "bfloat16" stores the floating-point weights at half the size; ``load``
    casts them back to float32 (the model then computes in float32 with rounded weights)."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"out {str(out)!r} already exists; choose a new folder (nothing was overwritten)")
    from ._io import check_writable

    check_writable(out, "out")
    ckpt = open_checkpoint(run, weights_only=False)
    ckpt_path = ckpt.path
    check_finite_weights(ckpt.ema if ckpt.ema is not None else ckpt.model, str(ckpt_path))
    metrics = dict(ckpt.metrics or {}, description=description, exported_from=str(ckpt_path), weights_dtype=dtype)
    if train_minutes is not None:
        metrics["train_minutes"] = train_minutes
    if out.exists():  # appeared meanwhile
        raise FileExistsError(f"out {str(out)!r} already exists; choose a new folder (nothing was overwritten)")
    return save_checkpoint(out, step=ckpt.step, config=ckpt.config, tokenizer=ckpt.tokenizer,
                           model={k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v
                                  for k, v in (ckpt.ema if ckpt.ema is not None else ckpt.model).items()},
                           metrics=metrics)
