"""Released checkpoints as ddlm models: MDLM, DUO, UDLM, SEDD and the paper's UDM/AUDM/MDM models
(docs/pretrained.md).

``ddlm.load(path)`` calls :func:`load_pretrained` for a Hugging Face style folder, a Lightning
``.ckpt`` file or a SEDD ``checkpoint.pth`` (``ddlm.pretrained.formats``), which reads the file
without running code from it (``ddlm.pretrained.safe_unpickle``), recognises the family from its
config (``ddlm.pretrained.resolve``), builds the shared backbone (``ddlm.models.imported_dit``) with
the file's raw or EMA weights and binds it to the family's process (``ddlm.pretrained.model``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .formats import PretrainedFormatError, detect_format, read_source
from .model import ImportedModel
from .resolve import Spec, resolve
from .safe_unpickle import CheckpointFormatError, UnsafeCheckpointError

__all__ = [
    "CheckpointFormatError", "ImportedModel", "PretrainedFormatError", "SkippedObjectsWarning",
    "UnsafeCheckpointError", "bound_convention", "is_pretrained", "load_pretrained",
]

WEIGHTS = ("ema", "raw")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SkippedObjectsWarning(UserWarning):
    """A pickled checkpoint named objects that ddlm kept as inert records instead of reconstructing."""


def is_pretrained(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a released-checkpoint layout (not a ddlm run or checkpoint folder)."""
    return detect_format(path) is not None


def _net(spec: Spec):
    from ..models.imported_dit import ImportedDiT, ImportedDiTConfig

    return ImportedDiT(ImportedDiTConfig(
        vocab_size=spec.rows, output_size=spec.output_rows, hidden=spec.hidden, blocks=spec.blocks, heads=spec.heads,
        mlp_ratio=spec.mlp_ratio, cond_dim=spec.cond_dim, max_len=spec.length, freq_dim=spec.freq_dim,
        time_conditioning=spec.time_conditioning, noise_fusion=spec.noise_fusion))


def _state(src, net, weights: str) -> tuple[dict, str]:
    """The state dict to load and which weights it is; every key and shape checked (named errors)."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    p = src.prefix
    for k, v in src.raw.items():
        if k not in expected:
            raise PretrainedFormatError(f"{src.path}: unexpected key {p + k!r} with shape {tuple(v.shape)}: not "
                                        f"part of the {len(expected)}-key backbone ddlm built for this family")
    for k, shape in expected.items():
        if k not in src.raw:
            raise PretrainedFormatError(f"{src.path}: missing key {p + k!r}; expected a tensor of shape {shape}")
        if tuple(src.raw[k].shape) != shape:
            raise PretrainedFormatError(f"{src.path}: key {p + k!r} has shape {tuple(src.raw[k].shape)}, expected "
                                        f"{shape}")
    state = dict(src.raw)
    if src.ema is None:
        which = ("raw" if src.format != "hf" else
                 "the folder's only set of weights (EMA by its family's export convention)")
        if src.format != "hf" and weights == "ema":
            which = "raw (the file holds no EMA weights)"
        return state, which
    if weights == "raw":
        return state, "raw"
    order = [k for k in src.raw if k in params]  # the file's parameter order = its EMA list's order
    if len(src.ema) < len(order):
        raise PretrainedFormatError(f"{src.path}: ema.shadow_params holds {len(src.ema)} tensors, expected one per "
                                    f"backbone parameter ({len(order)})")
    for k, v in zip(order, src.ema[: len(order)], strict=True):
        if tuple(v.shape) != expected[k]:
            raise PretrainedFormatError(f"{src.path}: ema.shadow_params entry for {p + k!r} has shape "
                                        f"{tuple(v.shape)}, expected {expected[k]}")
        state[k] = v
    extra = len(src.ema) - len(order)
    return state, "ema" + (f" ({extra} trailing shadow_params beyond the backbone ignored)" if extra else "")


def _tokenizer_from(spec_tok, specials: dict, where: str):
    """A ddlm tokenizer from a ddlm tokenizer dict, a ``tokenizers`` JSON, "gpt2", a file path or an object."""
    from ..data.tokenizers import GPT2_EOT, BPETokenizer, Tokenizer, tokenizer_from_dict

    if isinstance(spec_tok, Tokenizer):
        return spec_tok
    if spec_tok == "gpt2":
        return BPETokenizer.gpt2()
    if isinstance(spec_tok, (str, os.PathLike)):
        path = Path(spec_tok)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer {str(spec_tok)!r}: expected 'gpt2' or a tokenizer JSON file")
        spec_tok = json.loads(path.read_text(encoding="utf-8"))
        where = str(path)
    if not isinstance(spec_tok, dict):
        raise TypeError(f"tokenizer must be a ddlm Tokenizer, 'gpt2' or a JSON file path, got "
                        f"{type(spec_tok).__name__}")
    if spec_tok.get("type") in ("char", "gpt2", "hf_json"):
        return tokenizer_from_dict(spec_tok)
    added = {t.get("content") for t in spec_tok.get("added_tokens", []) if isinstance(t, dict)}
    bos, eos = specials.get("bos_token"), specials.get("eos_token")
    if bos is None or eos is None:
        if GPT2_EOT in added:
            bos, eos = GPT2_EOT, GPT2_EOT
        elif "[CLS]" in added and "[SEP]" in added:
            bos, eos = "[CLS]", "[SEP]"
    if bos is None:
        raise ValueError(f"tokenizer from {where}: cannot tell its BOS/EOS tokens; pass a ddlm tokenizer")
    return BPETokenizer.from_json(spec_tok, bos, eos)


def load_pretrained(path: str | os.PathLike, weights: str = "ema", *, tokenizer=None, dtype: str = "float32"):
    """Load a released checkpoint: returns ``(model, process, tokenizer)``.

    Args:
        path: a Hugging Face style folder, a Lightning ``.ckpt`` file, or a SEDD ``checkpoint.pth``
            (or its run folder).
        weights: "ema" (default) or "raw" for a file that holds both; a folder with one set ignores it.
        tokenizer: a ddlm tokenizer, "gpt2", or a tokenizer JSON file, used instead of the file's own;
            None: the file's own if it carries one readable as data, else the returned tokenizer is None.
        dtype: "float32" or "bfloat16" (autocast, weights stay float32).

    Returns:
        An :class:`ImportedModel` in eval mode (``model.conventions`` states every convention), its
        process, and the tokenizer (or None).

    Raises:
        FileNotFoundError: no such path.
        PretrainedFormatError: unknown layout, prefix or family; missing, unexpected or misshapen keys
            (the key, the shape found and the shape expected are named).
        UnsafeCheckpointError: a value ddlm needs is an arbitrary object in the pickle.
    """
    from ..processes import get_process
    from ..schedules import get_schedule

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    src = read_source(path)
    spec = resolve(src)
    net = _net(spec)
    state, which = _state(src, net, weights)
    net.load_state_dict(state, strict=True)
    schedule = get_schedule(spec.schedule.get("name", "linear"), eps=float(spec.schedule.get("eps", spec.eps)))
    process = get_process(spec.process, spec.vocab_size, schedule)
    if tokenizer is not None:
        tok, tok_note = _tokenizer_from(tokenizer, {}, "the tokenizer argument"), "given by the caller"
    elif src.tokenizer_json is not None:
        tok = _tokenizer_from(src.tokenizer_json["content"], src.special_tokens, str(src.path))
        tok_note = src.tokenizer_note
    else:
        tok, tok_note = None, src.tokenizer_note + "; pass tokenizer= (e.g. 'gpt2' or a tokenizer JSON)"
    if tok is not None and tok.vocab_size > spec.rows:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model's vocab_embed.embedding has {spec.rows} "
                         "rows; it is not this model's tokenizer")
    if tok is not None and tok.vocab_size < spec.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but the process samples K = {spec.vocab_size} tokens "
                         f"({spec.family.name}: {spec.special_rows or 'every row is a state'}); pass the tokenizer "
                         "that has them (e.g. the checkpoint's own, with its added [PAD])")
    if src.skipped:
        names = ", ".join(src.skipped)
        warnings.warn(f"ddlm read {src.path} without running code from it; objects kept as inert records (not "
                      f"reconstructed): {names}", SkippedObjectsWarning, stacklevel=2)
    conventions = _conventions(src, spec, which, tok_note)
    model = ImportedModel(net, process, spec, conventions, _DTYPES[dtype]).eval()
    return model, process, tok


def _conventions(src, spec: Spec, which: str, tok_note: str) -> dict:
    fam = spec.family
    sigma = {"log1p": "-log1p(-(1 - eps) t) in float32", "log_alpha": "-log(1 - (1 - eps) t) in float32",
             "ddlm": "-log(alpha_t) of the schedule, alpha in float64, then float32"}[fam.sigma]
    return {
        "family": fam.name, "project": fam.project, "published": fam.published, "format": src.format,
        "path": str(src.path), "weights": which, "key_prefix": src.prefix, "ignored_keys": src.ignored_keys,
        "step": src.step, "rows": spec.rows, "output_rows": spec.output_rows, "process": spec.process,
        "process_vocab_size": spec.vocab_size, "mask_id": spec.mask_id,
        "special_rows": {str(k): v for k, v in spec.special_rows.items()},
        "conditioning": {"sigma": sigma, "eps": spec.eps, "time_conditioning": spec.time_conditioning,
                         "zeroed": not spec.time_conditioning, "noise_tokens": spec.noise_fusion},
        "schedule": spec.schedule, "t_min": spec.t_min, "network_output": fam.output,
        "family_postprocess": fam.postprocess, "scale_by_sigma": spec.scale_by_sigma,
        "prediction": spec.prediction,
        "ddlm_output": ("the log-score over the K tokens" if spec.prediction == "score" else
                        f"{spec.prediction} logits over the K = {spec.vocab_size} tokens (the first K rows)"),
        "tokenizer": {"family_tokenizer": spec.tokenizer_name, "source": tok_note},
        "dims": {"hidden": spec.hidden, "blocks": spec.blocks, "heads": spec.heads, "mlp_ratio": spec.mlp_ratio,
                 "cond_dim": spec.cond_dim, "length": spec.length},
        "skipped_globals": src.skipped, "notes": spec.notes,
    }


def bound_convention(model, process, t_min: float) -> dict:
    """How ``ddlm eval``'s bound of an imported model relates to its family's own (the record's
    ``bound_convention``): the objective ddlm computes (``process.bound_objective``), its K, schedule and
    times, and any difference from what the family's code reports."""
    conv = model.conventions
    objective = process.bound_objective(model.prediction)
    note = "the family's own validation NLL bound (val/nll): the same ELBO of the same process"
    if conv["prediction"] == "score":
        note = ("SEDD's own bound: the diffusion-weighted denoising score entropy of its log-scores (ddlm's "
                f"{objective}, docs/maths.md §10), as SEDD evaluates it")
    elif conv["rows"] > conv["process_vocab_size"] and conv["process"] != "mdm":
        note += (f"; the network's extra row {conv['rows'] - 1} is dropped and the prediction renormalised over the "
                 f"K = {conv['process_vocab_size']} tokens (the family's code keeps it; equal when the row has "
                 "no mass)")
    return {"family": conv["family"], "objective": objective, "process": process.label,
            "process_vocab_size": process.vocab_size, "schedule": repr(process.schedule), "t_range": [t_min, 1.0],
            "prediction_scored": model.prediction,
            "units": "nats per token over every position of each block (BOS and EOS included)", "note": note}
