"""Paths of the released-checkpoint fixtures (tests/fixtures/pretrained) for the evaluation tests."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "pretrained"
GPT2_LIKE = ROOT / "gpt2_like_tokenizer.json"
GPT2_LIKE_37 = ROOT / "gpt2_like_tokenizer_37.json"
CORPUS = ROOT / "corpus_gpt2_like.txt"
MDLM = ROOT / "mdlm" / "last.ckpt"
UDM_LOO = ROOT / "rev_udm_udlm_loo" / "last.ckpt"
AUDM = ROOT / "rev_udm_audm" / "last.ckpt"
SEDD_UNIFORM = ROOT / "sedd_uniform" / "run" / "checkpoints-meta" / "checkpoint.pth"
SEDD_ABSORB_HF = ROOT / "sedd_absorb" / "hf"
