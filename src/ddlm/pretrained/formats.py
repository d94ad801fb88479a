"""The file formats of released checkpoints, read into one :class:`Source`.

- Hugging Face style folder: ``config.json`` and ``model.safetensors`` (or sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin``); one set of weights, keys prefixed
  ``backbone.`` (MDLM, UDLM, ddlm's export) or not (SEDD).
- PyTorch Lightning ``.ckpt``: ``state_dict`` with a module prefix (``backbone.``,
  ``diffusion.model.backbone.``), EMA in ``ema.shadow_params`` (a list in the order of the backbone's
  parameters), the run's config (omegaconf) and sometimes its tokenizer in ``hyper_parameters``.
- SEDD ``checkpoint.pth`` (``{"model", "ema", "step", "optimizer"}``) inside a run folder whose
  ``.hydra/config.yaml`` gives the dimensions.

Pickled files are read by ``ddlm.pretrained.safe_unpickle`` (no code from the file runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .safe_unpickle import Opaque, TensorStub, materialize, opaque_to_plain, read_torch_archive

#: module prefixes of the backbone's keys that ddlm recognises, longest first
KNOWN_PREFIXES = ("module.diffusion.model.backbone.", "diffusion.model.backbone.", "module.backbone.",
                  "backbone.", "")
_ANCHOR = "vocab_embed.embedding"


class PretrainedFormatError(ValueError):
    """A checkpoint whose layout ddlm cannot map to the backbone (missing or unknown keys, unknown
    prefix, wrong shapes, wrong vocabulary sizes); the message names the key and the shapes."""


@dataclass
class Source:
    """What a checkpoint file holds, as plain data.

    Attributes:
        path: the path given.
        format: "hf", "lightning" or "sedd".
        raw: the raw (or only) weights, backbone keys without prefix, in the file's order.
        ema: the EMA weights as the file stores them (a list in parameter order), or None.
        prefix: the key prefix that was removed.
        ignored_keys: keys of the file outside the backbone.
        config: the run's configuration as plain data (config.json, the Lightning config, hydra YAML).
        hparams: other plain hyper-parameters (Lightning: ``model_prediction``, the diffusion class name).
        tokenizer_json: the tokenizer's ``tokenizers`` JSON if the file carries one readable as data.
        special_tokens: BOS/EOS/PAD/MASK token strings the file states.
        tokenizer_note: why there is no tokenizer, or where it came from.
        step: the training step the file states.
        skipped: globals kept as inert records while reading (name -> count).
    """

    path: Path
    format: str
    raw: dict[str, Any]
    ema: list | None
    prefix: str
    ignored_keys: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    hparams: dict = field(default_factory=dict)
    tokenizer_json: dict | None = None
    special_tokens: dict = field(default_factory=dict)
    tokenizer_note: str = ""
    step: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)


def _sedd_config(pth: Path) -> Path | None:
    for root in (pth.parent.parent, pth.parent):
        if (root / ".hydra" / "config.yaml").is_file():
            return root / ".hydra" / "config.yaml"
    return None


def detect_format(path: str | os.PathLike) -> str | None:
    """"hf", "lightning" or "sedd" if ``path`` is a released-checkpoint layout, else None (a ddlm run
    or checkpoint folder, which hold ``checkpoints/`` or ``meta.json``, is never one of these)."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".ckpt":
            return "lightning"
        if p.suffix == ".pth" and _sedd_config(p) is not None:
            return "sedd"
        return None
    if not p.is_dir() or (p / "meta.json").is_file():
        return None
    if (p / ".hydra" / "config.yaml").is_file() and (p / "checkpoints-meta" / "checkpoint.pth").is_file():
        return "sedd"
    if (p / "checkpoints").is_dir():
        return None
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if (p / "config.json").is_file() and any((p / w).is_file() for w in weights):
        return "hf"
    return None


def split_prefix(state: dict[str, Any], where: str) -> tuple[str, dict[str, Any], list[str]]:
    """(prefix, backbone keys without it, other keys) of a state dict; the prefix is that of the key
    ending in ``vocab_embed.embedding`` and must be one of :data:`KNOWN_PREFIXES`."""
    anchors = [k for k in state if k.endswith(_ANCHOR)]
    anchors = [k for k in anchors if not k.endswith("conditioning_" + _ANCHOR)]
    if not anchors:
        some = ", ".join(list(state)[:5])
        raise PretrainedFormatError(f"{where}: missing key '{_ANCHOR}' (with any prefix) among {len(state)} keys "
                                    f"(first: {some}); not a DiT checkpoint of a known family")
    if len(anchors) > 1:
        raise PretrainedFormatError(f"{where}: several backbones ({', '.join(anchors)}); expected one")
    prefix = anchors[0][: -len(_ANCHOR)]
    if prefix not in KNOWN_PREFIXES:
        raise PretrainedFormatError(f"{where}: unknown key prefix {prefix!r} (key {anchors[0]!r}); known prefixes: "
                                    f"{[p for p in KNOWN_PREFIXES if p]} or none")
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return prefix, inside, [k for k in state if not k.startswith(prefix)]


def _tensor_dict(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise PretrainedFormatError(f"{where} is {type(obj).__name__}, expected a dict of tensors")
    import torch

    for k, v in obj.items():
        if isinstance(v, Opaque):
            from .safe_unpickle import UnsafeCheckpointError

            raise UnsafeCheckpointError(f"{where}[{k!r}] is an object of {v.qualname}, not a tensor; ddlm did not "
                                        "reconstruct it (nothing from the file was run)")
        if not isinstance(v, (torch.Tensor, TensorStub)):
            raise PretrainedFormatError(f"{where}[{k!r}] is {type(v).__name__}, expected a tensor")
    return dict(obj)


def _ema_list(ema: Any, where: str) -> list | None:
    if ema is None:
        return None
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list):
        raise PretrainedFormatError(f"{where}['ema'] has no 'shadow_params' list (found {type(ema).__name__})")
    return list(_tensor_dict(dict(enumerate(shadow)), f"{where}['ema']['shadow_params']").values())


def _special(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Opaque) and isinstance(value.state, dict) and isinstance(value.state.get("content"), str):
        return value.state["content"]  # a tokenizers.AddedToken kept as a record
    return None


def tokenizer_from_record(tok: Any) -> tuple[dict | None, dict, str]:
    """(tokenizers JSON, special token strings, note) of a pickled transformers tokenizer kept as an
    inert record: the JSON that ``tokenizers.Tokenizer`` pickles as its state, read as data."""
    if not isinstance(tok, Opaque) or not isinstance(tok.state, dict):
        return None, {}, "the checkpoint carries no tokenizer"
    backend = tok.state.get("_tokenizer")
    raw = backend.state if isinstance(backend, Opaque) else None
    if not isinstance(raw, (bytes, str)):
        return None, {}, (f"the pickled tokenizer ({tok.qualname}) holds no tokenizers JSON (a slow tokenizer?); "
                          "pass a tokenizer")
    try:
        content = json.loads(raw)
    except ValueError as e:
        return None, {}, f"the pickled tokenizer's JSON is unreadable: {e}"
    specials: dict[str, str] = {}
    for source in (tok.state.get("init_kwargs"), tok.state.get("_special_tokens_map"), tok.state):
        if isinstance(source, dict):
            for name in ("bos_token", "eos_token", "pad_token", "mask_token", "cls_token", "sep_token"):
                value = _special(source.get(name)) or _special(source.get("_" + name))
                if value is not None and name not in specials:
                    specials[name] = value
    return content, specials, f"read as data from the pickled {tok.qualname} (its tokenizers JSON)"


def read_hf(folder: Path, load_tensors: bool = True) -> Source:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise PretrainedFormatError(f"{folder / 'config.json'} holds {type(config).__name__}, expected a JSON object")
    state, skipped = _hf_weights(folder, load_tensors)
    prefix, raw, ignored = split_prefix(state, str(folder))
    tok_json, specials, note = None, {}, "the folder has no tokenizer file"
    for name in ("ddlm_tokenizer.json", "tokenizer.json"):
        if (folder / name).is_file():
            tok_json = {"file": name, "content": json.loads((folder / name).read_text(encoding="utf-8"))}
            note = f"{name} in the folder"
            break
    specials = dict(config.get("ddlm", {}).get("special_tokens", {})) if isinstance(config.get("ddlm"), dict) else {}
    return Source(folder, "hf", raw, None, prefix, ignored, config, {}, tok_json, specials, note, None, skipped)


def _hf_weights(folder: Path, load_tensors: bool) -> tuple[dict, dict]:
    from safetensors import safe_open

    def read_st(path: Path) -> dict:
        with safe_open(str(path), framework="pt") as f:
            if load_tensors:
                return {k: f.get_tensor(k) for k in f.keys()}
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = TensorStub(tuple(sl.get_shape()), _st_dtype(sl.get_dtype()))
            return out

    if (folder / "model.safetensors").is_file():
        return read_st(folder / "model.safetensors"), {}
    if (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
        state: dict = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if Path(shard).name != shard:
                raise PretrainedFormatError(f"{folder}: shard name {shard!r} is not a file name in the folder")
            state.update(read_st(folder / shard))
        return state, {}
    contents = read_torch_archive(folder / "pytorch_model.bin", load_tensors)
    return _tensor_dict(contents.obj, "pytorch_model.bin"), contents.skipped


def _st_dtype(name: str):
    import torch

    table = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
    return table.get(name, torch.float32)


def _weights_only(path: Path, ckpt: dict, keys: tuple[str, ...], load_tensors: bool) -> None:
    """Read the bytes of the weights (``ckpt[k]`` for ``k`` in ``keys``) and of nothing else: optimizer
    state, loops and callbacks stay stubs."""
    if load_tensors:
        for k in keys:
            if k in ckpt:
                ckpt[k] = materialize(ckpt[k], path)


def read_lightning(path: Path, load_tensors: bool = True) -> Source:
    contents = read_torch_archive(path, load_tensors=False)
    ckpt = contents.obj
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PretrainedFormatError(f"{path}: a Lightning checkpoint holds 'state_dict'; found {keys}")
    _weights_only(path, ckpt, ("state_dict", "ema"), load_tensors)
    state = _tensor_dict(ckpt["state_dict"], f"{path.name}['state_dict']")
    prefix, raw, ignored = split_prefix(state, f"{path.name}['state_dict']")
    hp = ckpt.get("hyper_parameters") or {}
    config = opaque_to_plain(hp.get("config")) if isinstance(hp, dict) else None
    hparams = {}
    if isinstance(hp, dict):
        for k, v in hp.items():
            if k in ("config", "tokenizer"):
                continue
            if isinstance(v, type) and issubclass(v, Opaque):
                hparams[k] = v.qualname  # a class pickled by reference (rev_udm's diffusion_model)
            elif isinstance(v, (str, int, float, bool)) or v is None:
                hparams[k] = v
    tok_json, specials, note = tokenizer_from_record(hp.get("tokenizer") if isinstance(hp, dict) else None)
    step = ckpt.get("global_step") if isinstance(ckpt.get("global_step"), int) else None
    return Source(path, "lightning", raw, _ema_list(ckpt.get("ema"), path.name), prefix, ignored,
                  config if isinstance(config, dict) else {}, hparams,
                  None if tok_json is None else {"file": None, "content": tok_json}, specials, note, step,
                  contents.skipped)


def read_sedd(path: Path, load_tensors: bool = True) -> Source:
    import yaml

    pth = path / "checkpoints-meta" / "checkpoint.pth" if path.is_dir() else path
    cfg_path = _sedd_config(pth)
    if cfg_path is None:
        raise FileNotFoundError(f"SEDD checkpoint {str(pth)!r}: its run folder's .hydra/config.yaml (the model's "
                                "dimensions) was not found next to it or one folder up")
    config = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    contents = read_torch_archive(pth, load_tensors=False)
    ckpt = contents.obj
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PretrainedFormatError(f"{pth}: a SEDD checkpoint holds 'model' (and 'ema', 'step'); found {keys}")
    _weights_only(pth, ckpt, ("model", "ema"), load_tensors)
    state = _tensor_dict(ckpt["model"], f"{pth.name}['model']")
    prefix, raw, ignored = split_prefix(state, f"{pth.name}['model']")
    step = ckpt.get("step") if isinstance(ckpt.get("step"), int) else None
    return Source(pth, "sedd", raw, _ema_list(ckpt.get("ema"), pth.name), prefix, ignored,
                  config if isinstance(config, dict) else {}, {}, None, {},
                  "SEDD checkpoints carry no tokenizer (GPT-2 for its OpenWebText models)", step, contents.skipped)


def read_source(path: str | os.PathLike, load_tensors: bool = True) -> Source:
    """Read a released checkpoint (module docstring) into a :class:`Source`.

    Raises:
        FileNotFoundError: no such path.
        PretrainedFormatError: not a layout ddlm reads, or keys it cannot map (named).
        ddlm.pretrained.safe_unpickle.UnsafeCheckpointError / CheckpointFormatError: see there.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    kind = detect_format(p)
    readers = {"hf": read_hf, "lightning": read_lightning, "sedd": read_sedd}
    if kind is None:
        raise PretrainedFormatError(
            f"{str(p)!r} is not a checkpoint ddlm can import: expected a Hugging Face style folder (config.json + "
            "model.safetensors or pytorch_model.bin), a Lightning .ckpt file, or a SEDD checkpoint.pth with its "
            "run's .hydra/config.yaml")
    return readers[kind](p, load_tensors)


def nested(config: dict, *keys: str, default: Any = None) -> Any:
    """``config[k1][k2]...`` or ``default`` when any level is missing."""
    node: Any = config
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node
