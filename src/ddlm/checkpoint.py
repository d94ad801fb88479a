"""Checkpoint folders for training runs: atomic, checksummed, pickle-free.

A checkpoint is a folder::

    config.json           resolved run config
    tokenizer.json        tokenizer description
    model.safetensors     model state dict (key order kept in the header metadata)
    ema.safetensors       EMA weights (only if given)
    trainer.safetensors   every tensor of the optimizer state and the torch/CUDA RNG states
    trainer.json          step, metrics, data-loader position, and the optimizer, scheduler and RNG
                          structures with tensors replaced by {"__tensor__": "optimizer/state/0/exp_avg"}
    meta.json             format name and version, step, and each file's name, size and SHA-256

A training run keeps its checkpoints under ``checkpoints/`` in its run folder (``ddlm.runs``). Loading
reads only JSON and safetensors (never pickle) and verifies the checksum of every file it reads.
Saving writes into ``.<name>.tmp-<hex>`` beside the target and renames it into place, so a
crash leaves the old or the new complete checkpoint at the path; strays are removed by the next save
into the same parent. Concurrent saves into one parent from several processes are not supported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from ._io import fsync_dir

FORMAT = "ddlm-checkpoint"
FORMAT_VERSION = 1
META = "meta.json"
_REQUIRED = ("config.json", "tokenizer.json", "model.safetensors", "trainer.json", "trainer.safetensors")
_KNOWN = frozenset(_REQUIRED + ("ema.safetensors",))
#: what a model needs (``weights_only``): the trainer's files (optimizer, scheduler, RNG, metrics) are not read
_WEIGHTS = ("config.json", "tokenizer.json", "model.safetensors", "ema.safetensors")
_STRAY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{16}$")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt or of an unknown format."""


@dataclass
class Checkpoint:
    """Everything :func:`load_checkpoint` read back from a checkpoint folder."""

    path: Path
    step: int
    config: dict
    tokenizer: dict
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict | None = None
    data: dict | None = None
    metrics: dict | None = None


def _encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """Make ``obj`` JSON-safe, moving tensors into ``tensors`` under path-like keys."""
    if isinstance(obj, Tensor):
        key, n = path, 1
        while key in tensors:
            key, n = f"{path}#{n}", n + 1
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, path, tensors), _encode(v, f"{path}/{k}", tensors)]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, Tensor], device: str | torch.device) -> Any:
    """Invert :func:`_encode` (tuples, int keys and numpy arrays come back as such)."""
    if isinstance(obj, list):
        return [_decode(v, tensors, device) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]].to(device)
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, device) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors, device): _decode(v, tensors, device) for k, v in obj["__items__"]}
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return {k: _decode(v, tensors, device) for k, v in obj.items()}


def _safetensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    """Serialise tensors as CPU, contiguous, non-aliasing copies (what safetensors requires)."""
    ready, seen = {}, set()
    for key, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{key!r} is a {type(t).__name__}, expected a torch.Tensor")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            t = t.clone()  # shares storage with an earlier tensor (tied weights, views)
        seen.add(t.untyped_storage().data_ptr())
        ready[key] = t
    return safetensors.torch.save(ready, metadata={"format": "pt", "ddlm.keys": json.dumps(list(ready))})


def _load_safetensors(data: bytes) -> dict[str, Tensor]:
    tensors = safetensors.torch.load(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    order = json.loads(header.get("__metadata__", {}).get("ddlm.keys", "[]"))
    return {k: tensors[k] for k in order} if sorted(order) == sorted(tensors) else tensors


def _write_file(path: Path, data: bytes) -> dict:
    """Write, flush and fsync a new file; return its meta.json entry."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode()


def _cleanup(parent: Path) -> None:
    """Remove our stray temp folders; put back an old checkpoint a crash left moved aside."""
    for entry in sorted(parent.iterdir()):
        match = _STRAY.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        target = parent / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.replace(entry, target)  # crashed between the two renames of a save
        else:
            shutil.rmtree(entry)


def tidy(parent: str | os.PathLike) -> None:
    """What every save does first in ``parent``: remove stray temp folders and put back a checkpoint
    that a crash left moved aside. Only while nothing else saves into ``parent`` (a training holds
    its run folder's lock)."""
    _cleanup(Path(parent))


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / META).read_bytes())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The step a checkpoint folder records in its ``meta.json`` (its other files are not read).

    Raises:
        CheckpointError: ``meta.json`` is missing, unreadable or not a checkpoint's (the file is named).
    """
    meta = _read_meta(Path(folder))
    step = meta.get("step") if meta is not None else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(f"{Path(folder) / META}: missing, unreadable or without a step")
    return step


def is_complete(folder: Path) -> bool:
    """A known-version meta.json whose listed files all exist with their recorded sizes (no hashing)."""
    meta = _read_meta(folder)
    try:
        files = {e["name"]: e["size"] for e in meta["files"]}
        return (meta["version"] == FORMAT_VERSION and set(_REQUIRED) <= set(files) <= _KNOWN
                and all((folder / n).stat().st_size == s for n, s in files.items()))
    except (OSError, KeyError, TypeError):
        return False


def save_checkpoint(path: str | os.PathLike, *, step: int, config: dict, tokenizer: dict,
                    model: dict[str, Tensor], ema: dict[str, Tensor] | None = None,
                    optimizer: dict | None = None, scheduler: dict | None = None, rng: dict | None = None,
                    data: dict | None = None, metrics: dict | None = None) -> Path:
    """Atomically write a checkpoint folder at ``path``, replacing an existing checkpoint there.

    Args:
        path: The checkpoint folder, e.g. ``run/checkpoints/step_000100``; its parent is created.
        step: The training step (a non-negative int).
        config: The resolved run config (JSON-safe).
        tokenizer: The tokenizer description (JSON-safe).
        model: The model state dict.
        ema: EMA weights, if any.
        optimizer: ``optimizer.state_dict()``.
        scheduler: ``scheduler.state_dict()``.
        rng: RNG states, usually :func:`capture_rng`.
        data: The data-loader position (JSON-safe).
        metrics: Metrics to keep with the checkpoint (JSON-safe).

    Returns:
        The checkpoint folder.

    Raises:
        ValueError: ``step`` is not a non-negative int.
        TypeError: Something is not storable (checked before anything is written).
        FileExistsError: ``path`` exists and is neither a checkpoint nor an empty folder.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    _cleanup(parent)
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()
                                  or (_read_meta(path) is None and any(path.iterdir()))):
        raise FileExistsError(f"{path} exists and is not a checkpoint folder; refusing to replace it")
    for name, group in [("model", model), ("ema", ema or {})]:
        if bad := [k for k, v in group.items() if not isinstance(v, Tensor)]:
            raise TypeError(f"{name} must map names to tensors; {bad[0]!r} is not a tensor")
    tensors: dict[str, Tensor] = {}
    trainer = {"step": step, "metrics": metrics, "data": data,
               "optimizer": _encode(optimizer, "optimizer", tensors),
               "scheduler": _encode(scheduler, "scheduler", tensors), "rng": _encode(rng, "rng", tensors)}
    jsons = {n: _json_bytes(o) for n, o in
             [("config.json", config), ("tokenizer.json", tokenizer), ("trainer.json", trainer)]}
    tmp = parent / f".{path.name}.tmp-{secrets.token_hex(8)}"
    tmp.mkdir()
    files = [_write_file(tmp / name, blob) for name, blob in jsons.items()]
    for name, group in [("model.safetensors", model), ("ema.safetensors", ema), ("trainer.safetensors", tensors)]:
        if group is not None:
            files.append(_write_file(tmp / name, _safetensors_bytes(group)))
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "files": files}
    _write_file(tmp / META, _json_bytes(meta))
    fsync_dir(tmp)
    old = parent / f".{path.name}.old-{secrets.token_hex(8)}" if os.path.lexists(path) else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not os.path.lexists(path):
            with contextlib.suppress(Exception):
                os.replace(old, path)  # otherwise the next save's _cleanup puts it back
        raise
    fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old)
    return path


def _entry(folder: Path, i: int, entry: Any) -> tuple[str, int, str]:
    """(name, size, sha256) of meta.json's file entry number ``i`` (never echoing its content)."""
    try:
        name, size, digest = entry["name"], entry["size"], entry["sha256"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{folder / META}: file entry {i} is malformed") from None
    if name not in _KNOWN:
        raise CheckpointError(f"{folder / META}: file entry {i} names a file that is not part of a checkpoint")
    return name, size, digest


def _read_verified(folder: Path, name: str, size: int, digest: str) -> tuple[str, bytes]:
    try:
        blob = (folder / name).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{folder / name}: file missing from checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{folder / name}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(blob) != size:
        raise CheckpointError(f"{folder / name}: {len(blob)} bytes, expected {size} (truncated or corrupt)")
    if hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointError(f"{folder / name}: SHA-256 checksum mismatch (corrupt)")
    return name, blob


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    weights_only: bool = False) -> Checkpoint:
    """Read and verify a checkpoint folder, without unpickling anything.

    Args:
        path: The checkpoint folder.
        map_location: Device for the model, EMA and optimizer tensors (RNG states stay on CPU).
        weights_only: read (and verify) only what a model needs: config, tokenizer, model and EMA
            weights. The trainer's files (optimizer, scheduler, RNG, metrics) are neither read nor
            checked, so a checkpoint whose optimizer state is damaged still samples; ``optimizer``,
            ``scheduler``, ``rng``, ``data`` and ``metrics`` are then None and ``step`` comes from
            ``meta.json``.

    Returns:
        The :class:`Checkpoint`; ``optimizer``, ``scheduler`` and ``rng`` are in the exact types
        ``optimizer.load_state_dict``, ``scheduler.load_state_dict`` and :func:`restore_rng` expect.

    Raises:
        CheckpointError: Naming the file, if the folder or a file is missing, a file is corrupt or
            truncated, a checksum does not match, or the format version is unknown.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    if not (folder / META).is_file():
        raise CheckpointError(f"{folder / META}: file missing from checkpoint")
    meta = _read_meta(folder)
    if meta is None:
        raise CheckpointError(f"{folder / META}: not a valid {FORMAT} meta file")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder / META}: unknown format version {meta.get('version')!r}")
    if not isinstance(meta.get("files"), list):
        raise CheckpointError(f"{folder / META}: no file list")
    entries = [_entry(folder, i, e) for i, e in enumerate(meta["files"])]
    for name in _REQUIRED:
        if name not in {e[0] for e in entries}:
            raise CheckpointError(f"{folder / name}: not listed in {META}")
    blobs = dict(_read_verified(folder, *e) for e in entries if not weights_only or e[0] in _WEIGHTS)
    parsed: dict[str, Any] = {}
    for name, blob in blobs.items():
        try:
            parsed[name] = json.loads(blob) if name.endswith(".json") else _load_safetensors(blob)
        except Exception as e:  # SafetensorError derives from Exception only
            kind = "JSON" if name.endswith(".json") else "safetensors"
            raise CheckpointError(f"{folder / name}: its checksum matches but it is not valid {kind} "
                                  f"({type(e).__name__})") from e
    if weights_only:
        step = meta.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise CheckpointError(f"{folder / META}: missing or malformed step")
        tensors, trainer = {}, {"step": step, "optimizer": None, "scheduler": None, "rng": None, "data": None,
                                "metrics": None}
    else:
        tensors, trainer = parsed["trainer.safetensors"], parsed["trainer.json"]
    try:
        ema = parsed.get("ema.safetensors")
        return Checkpoint(
            path=folder, step=trainer["step"], config=parsed["config.json"],
            tokenizer=parsed["tokenizer.json"],
            model={k: v.to(map_location) for k, v in parsed["model.safetensors"].items()},
            ema=None if ema is None else {k: v.to(map_location) for k, v in ema.items()},
            optimizer=_decode(trainer["optimizer"], tensors, map_location),
            scheduler=_decode(trainer["scheduler"], tensors, map_location),
            rng=_decode(trainer["rng"], tensors, "cpu"), data=trainer["data"], metrics=trainer["metrics"])
    except (KeyError, TypeError, ValueError) as e:  # the kind only: messages may quote the file
        raise CheckpointError(f"{folder / 'trainer.json'}: inconsistent with trainer.safetensors "
                              f"({type(e).__name__})") from e


def capture_rng() -> dict:
    """Return the torch CPU, CUDA (if available), Python ``random`` and numpy global RNG states."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(rng: dict) -> None:
    """Set the RNG states captured by :func:`capture_rng` (keys that are absent are skipped)."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda"):
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            warnings.warn("checkpoint holds CUDA RNG states but CUDA is not available; not restored", stacklevel=2)
    if "python" in rng:
        random.setstate(rng["python"])
    if "numpy" in rng:
        np.random.set_state(rng["numpy"])
