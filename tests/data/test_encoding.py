"""The workers' encoders (ddlm.data.encoding): tiktoken and tokenizers give GPT-2's ids identically."""

import importlib.util

import pytest
from _corpus import documents

from ddlm.data.encoding import CHECK_TEXT, ChunkEncoder, make_encoder
from ddlm.data.sources import Chunk, ReadOptions
from ddlm.data.tokenizers import BPETokenizer, CharTokenizer

TEXTS = [CHECK_TEXT, "", " ", "\n\n\n", "a  b   c\t\td", "<|endoftext|> is text here", "x" * 3000,
         "Ünïcödé — “quotes” ‘single’ … ½ ≥ 𝔘", *documents(50)]


@pytest.mark.skipif(importlib.util.find_spec("tiktoken") is None, reason="tiktoken is not installed")
def test_tiktoken_and_tokenizers_agree_on_gpt2():
    tok = BPETokenizer.gpt2()
    fast, name = make_encoder(tok)
    slow, slow_name = make_encoder(tok, use_tiktoken=False)
    assert name.startswith("tiktoken") and slow_name.startswith("tokenizers")
    assert fast(TEXTS) == slow(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_encoders_give_the_tokenizer_ids():
    tok = BPETokenizer.gpt2()
    encode, _ = make_encoder(tok, use_tiktoken=False)
    assert encode(TEXTS) == [tok.encode(t) for t in TEXTS]
    char = CharTokenizer.from_text("abc ")
    encode, name = make_encoder(char)
    assert encode(["abc", "c a"]) == [[1, 2, 3], [3, 0, 1]] and "CharTokenizer" in name


def test_chunk_encoder_appends_eos_and_splits_by_hash():
    char = CharTokenizer.from_text("abcdefgh \n")
    enc = ChunkEncoder(char, ReadOptions(), None, 0.5, "<u2")
    r = enc(Chunk(segments=[("f", 0, "text", "line", b"abc\n  \nde\nfgh")]))
    assert r["tokens"].tolist() == char.encode("abc") + [char.eos_id] + char.encode("de") + [char.eos_id] + \
        char.encode("fgh") + [char.eos_id]
    assert r["lengths"].tolist() == [4, 3, 4] and r["skipped"] == 1 and len(r["val"]) == 3
    assert r["digest"] != enc(Chunk(segments=[("f", 0, "text", "line", b"fgh\nde\n  \nabc")]))["digest"]
