"""The released-checkpoint fixtures (tests/fixtures/pretrained, see its README.md): tiny random-weight
checkpoints written by each project's own code, with fixed inputs and that code's outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained"
#: stand-in GPT-2-like tokenizer (37 ids + [PAD] = 37), as MDLM/DUO pickle it; and without [PAD]
GPT2_LIKE = ROOT / "gpt2_like_tokenizer.json"
GPT2_LIKE_37 = ROOT / "gpt2_like_tokenizer_37.json"
CORPUS = ROOT / "corpus_gpt2_like.txt"

#: family -> its files (every format the fixtures hold)
FILES = {
    "mdlm": ["last.ckpt", "hf"],
    "duo": ["last.ckpt"],
    "udlm": ["last.ckpt", "hf"],
    "rev_udm_udlm_loo": ["last.ckpt"],
    "rev_udm_audm": ["last.ckpt"],
    "rev_udm_mdlm": ["last.ckpt"],
    "sedd_absorb": ["run/checkpoints-meta/checkpoint.pth", "hf"],
    "sedd_uniform": ["run/checkpoints-meta/checkpoint.pth", "hf"],
}
#: the reference output of the network itself, and of the project's own post-processing
RAW_KEY = {f: "output_layer" if f.startswith("sedd") else "raw" for f in FILES}
POST_KEY = {"mdlm": "subs_log_probs", "duo": "log_x_theta", "udlm": "log_probs",
            "rev_udm_udlm_loo": "diffusion_forward", "rev_udm_audm": "diffusion_forward",
            "rev_udm_mdlm": "diffusion_forward", "sedd_absorb": "log_score", "sedd_uniform": "log_score"}
#: (family, file, weights) for every case: an HF folder holds one set (EMA)
CASES = [(f, p, w) for f, paths in FILES.items() for p in paths for w in (("ema",) if p == "hf" else ("raw", "ema"))]


def path(family: str, file: str) -> Path:
    return ROOT / family / file


def io(family: str) -> dict:
    return load_file(str(ROOT / family / "io.safetensors"))


def manifest(family: str) -> dict:
    return json.loads((ROOT / family / "manifest.json").read_text())


def load(family: str, file: str, weights: str | None = None, **kwargs):
    """``ddlm.load`` of a fixture, without the warning about the records the reader skipped."""
    import ddlm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ddlm.load(path(family, file), weights, **kwargs)
