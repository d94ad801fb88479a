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
    """A run (or checkpoint folder, or imported released checkpoint) loaded for evaluation.

    Attributes:
        model: the model in eval mode on ``device`` (a ``DiffusionModel``, an ``ARTransformer``, or a
            ``ddlm.pretrained.ImportedModel``).
        process: the model's process, or None for an autoregressive run.
        tokenizer: the run's tokenizer.
        config: the run's resolved ``TrainConfig``; None for an imported checkpoint.
        info: :func:`run_info` of the checkpoint that was loaded (plus ``weights``; for an imported
            checkpoint ``imported``, its conventions).
    """

    model: Any
    process: Any
    tokenizer: Any
    config: Any
    info: dict

    @property
    def imported(self) -> bool:
        """Whether this is a released checkpoint imported by ``ddlm.pretrained`` (it has no ddlm config)."""
        return self.config is None

    @property
    def autoregressive(self) -> bool:
        """Whether this is the autoregressive baseline (``ddlm.config.is_autoregressive``; its process is None)."""
        return is_autoregressive(self.model if self.imported else self.config)

    @property
    def block_size(self) -> int:
        """Tokens per block of a diffusion model: the run's block size, or an imported model's length."""
        return int(self.model.net.config.max_len) if self.imported else int(self.config.data.block_size)

    @property
    def sample_length(self) -> int:
        """The default (and longest) sample length in tokens: the block size for a diffusion run; for
        an autoregressive run its context, BOS included (BOS + a whole block with a block-start token)."""
        return int(self.model.config.max_len) if self.autoregressive else self.block_size

    @property
    def t_min(self) -> float:
        """Lower end of the times of the bound: the run's ``t_min``, or the family's sampling eps."""
        return float(self.info["imported"]["t_min"]) if self.imported else float(self.config.t_min)

    @property
    def eval_batch_size(self) -> int:
        """Default blocks per batch of ``ddlm eval``: the run's per-step batch; for an imported model 32
        blocks, fewer for long ones (8,192 tokens a batch: 8 blocks of 1,024)."""
        if self.imported:
            return max(1, min(32, 8192 // self.block_size))
        return max(1, self.config.batch_size // self.config.grad_accum)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {str(path)!r} is unreadable: {e}") from e


def run_info(path: str | os.PathLike) -> dict:
    """What identifies the model behind a result: run path, checkpoint folder and step, process,
    model output, the run's config and the ddlm version doing the evaluation.

    Args:
        path: a run folder (its latest checkpoint is used), a checkpoint folder, or a released
            checkpoint (:func:`imported_info`).

    Returns:
        ``{"run", "checkpoint", "step", "process", "model_output", "config", "ddlm_version"}``;
        ``model_output`` is what the network predicts ("denoiser", "loo", "posterior", or
        "next_token" for the autoregressive baseline; "score" for SEDD).
    """
    from ..pretrained import is_pretrained

    if is_pretrained(path):
        return imported_info(path)
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


def imported_info(path: str | os.PathLike, conventions: dict | None = None) -> dict:
    """:func:`run_info` of a released checkpoint: ``config`` is None and ``imported`` holds its
    conventions (``model.conventions`` once loaded; before that, what its config states, read
    without the tensors' bytes)."""
    from .. import __version__

    if conventions is None:
        from ..pretrained.formats import read_source
        from ..pretrained.resolve import resolve

        src = read_source(path, load_tensors=False)
        spec = resolve(src)
        conventions = {"family": spec.family.name, "format": src.format, "step": src.step, "process": spec.process,
                       "process_vocab_size": spec.vocab_size, "prediction": spec.prediction, "t_min": spec.t_min}
    return {"run": str(path), "checkpoint": str(path), "step": conventions["step"], "process": conventions["process"],
            "model_output": conventions["prediction"], "config": None, "imported": conventions,
            "ddlm_version": __version__}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> CUDA if available else CPU; otherwise the named device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_run(path: str | os.PathLike, device: str | torch.device | None = "cpu", *, weights: str = "ema",
             tokenizer=None) -> LoadedRun:
    """Load a run's model (EMA weights unless ``weights="raw"``), process, tokenizer and config for
    evaluation (nothing is unpickled; only the checkpoint's config, tokenizer and weights are read,
    never the corpus), or a released checkpoint (``ddlm.pretrained``; ``tokenizer`` replaces or
    supplies its tokenizer).

    Raises:
        FileNotFoundError: missing run folder or no checkpoint in it (the path is named).
        ddlm.checkpoint.CheckpointError: a damaged checkpoint (the file and the way out are named),
            weights that do not fit the config's architecture, or non-finite weights.
        ValueError: an imported checkpoint without a readable tokenizer and none given; a tokenizer
            given for a ddlm run.
    """
    from ..config import saved_config
    from ..pretrained import is_pretrained
    from ..runs import load, model_from_checkpoint, open_checkpoint, weights_choice

    weights = weights_choice(weights)
    if is_pretrained(path):
        model, process, tok = load(path, weights, tokenizer=tokenizer)
        if tok is None:
            raise ValueError(f"{str(path)!r}: {model.conventions['tokenizer']['source']} "
                             f"(its family uses {model.conventions['tokenizer']['family_tokenizer']!r}); "
                             "pass --tokenizer gpt2 or --tokenizer FILE.json")
        info = dict(imported_info(path, model.conventions), weights=weights)
        return LoadedRun(model.to(resolve_device(device)).eval(), process, tok, None, info)
    if tokenizer is not None:
        raise ValueError(f"tokenizer= and --tokenizer apply to imported checkpoints; {str(path)!r} is a ddlm run, "
                         "which carries its own tokenizer")
    ckpt = open_checkpoint(path, weights_only=True)
    info = dict(_info(path, ckpt.path, ckpt.config, ckpt.step), weights=weights)
    model, process, tok = model_from_checkpoint(ckpt, ema=weights == "ema")
    model = model.to(resolve_device(device)).eval()
    return LoadedRun(model, process, tok, saved_config(info["config"]), info)


def add_model_options(parser, weights: bool = True) -> None:
    """``--weights`` (unless ``weights`` is False) and ``--tokenizer`` of the commands that load a run
    (:func:`load_run`)."""
    if weights:
        parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                            help="EMA (default) or raw weights of a run or of a file that holds both")
    parser.add_argument("--tokenizer", default=None, metavar="gpt2|FILE.json",
                        help="tokenizer of an imported checkpoint that carries none (or to replace its own): gpt2 "
                             "or a tokenizer JSON file (docs/pretrained.md)")


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
