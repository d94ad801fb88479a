"""Tests for ddlm.data.corpora: the embedded corpus, loading, entropy, packing, splitting."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from ddlm.data.corpora import (
    DEFAULT_CORPUS_NAME,
    default_corpus,
    load_corpus,
    pack,
    split_documents,
    unigram_entropy,
)
from ddlm.data.tokenizers import CharTokenizer

# ------------------------------------------------------------------------------ embedded corpus


def test_default_corpus():
    docs = default_corpus()
    assert len(docs) == 9
    total = sum(len(d) for d in docs)
    assert 1_000_000 < total < 1_500_000
    assert load_corpus(DEFAULT_CORPUS_NAME) == docs
    assert any(d.startswith("HAMLET, PRINCE OF DENMARK") for d in docs)
    for d in docs:
        assert d.isascii() and d.endswith("\n") and not d.startswith("\n")
        assert "gutenberg" not in d.lower() and "etext" not in d.lower()
    docs[0] = "changed"  # callers get a copy
    assert default_corpus()[0] != "changed"


# ------------------------------------------------------------------------------------- loading


def test_load_text_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First para,\nline two.\n\n  \nSecond para.\n\n\nThird.\n", encoding="utf-8")
    assert load_corpus(path) == [path.read_text(encoding="utf-8")]
    assert load_corpus(str(path), split_on_blank_lines=True) == ["First para,\nline two.", "Second para.", "Third."]


def test_load_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_corpus(tmp_path) == ["ay", "bee", "sea"]


def test_load_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "one", "id": 1}, {"text": "two", "body": "zwei"}, {"text": "three"}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n", encoding="utf-8")
    assert load_corpus(path) == ["one", "two", "three"]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "zwei"}) + "\n", encoding="utf-8")
    assert load_corpus(other, field="body") == ["zwei"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus path not found: .*nowhere.txt"):
        load_corpus(tmp_path / "nowhere.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus: .*empty.txt"):
        load_corpus(empty)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"empty corpus: no \*\.txt file under folder .*folder"):
        load_corpus(folder)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_corpus(bad)
    lacking = tmp_path / "lacking.jsonl"
    lacking.write_text('{"text": "ok"}\n\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacking\.jsonl, line 3: no field 'text'"):
        load_corpus(lacking)
    with pytest.raises(ValueError, match=r"lacking\.jsonl, line 1: no field 'body'"):
        load_corpus(lacking, field="body")
    number = tmp_path / "number.jsonl"
    number.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"number\.jsonl, line 1: field 'text' is a int, not a string"):
        load_corpus(number)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt is not UTF-8 text \(an invalid byte at offset 3\)") as info:
        load_corpus(latin)
    assert "0xe9" not in str(info.value)  # error messages never quote a file's content


def test_encode_documents_names_the_position_never_the_text():
    from ddlm.data.corpora import encode_documents
    from ddlm.data.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("abc\n")
    assert encode_documents(tok, ["ab", "c\na"], "corpus 'x'") == [tok.encode("ab"), tok.encode("c\na")]
    with pytest.raises(ValueError, match=r"corpus 'x', document 1: the character at offset 6 \(line 2, column 3\) "
                                         "is not in the vocabulary of the run's tokenizer") as info:
        encode_documents(tok, ["abc", "abc\nabZ"], "corpus 'x'")
    assert "Z" not in str(info.value)


# ------------------------------------------------------------------------------------- entropy


def test_unigram_entropy_known_counts():
    assert unigram_entropy([0, 1, 2, 3], vocab_size=4) == pytest.approx(math.log(4))
    assert unigram_entropy(torch.tensor([[0, 1], [2, 3]]), vocab_size=10) == pytest.approx(math.log(4))
    assert unigram_entropy([5, 5, 5], vocab_size=6) == 0.0
    # counts 2, 1, 1 -> p = 1/2, 1/4, 1/4 -> H = 1.5 log 2
    assert unigram_entropy([[7, 7], [1], [0]], vocab_size=8) == pytest.approx(1.5 * math.log(2))
    with pytest.raises(ValueError, match=r"ids holds token id 4, expected ids in \[0, 3\]"):
        unigram_entropy([0, 4], vocab_size=4)
    with pytest.raises(ValueError, match="at least one token"):
        unigram_entropy([], vocab_size=4)


# ------------------------------------------------------------------------------------- packing


def test_pack_hand_made_example():
    docs = [[1, 2, 3], [4], torch.tensor([5, 6])]
    # stream: 8 1 2 3 9 | 8 4 9 8 5 | 6 9 (partial, dropped)
    expected = torch.tensor([[8, 1, 2, 3, 9], [8, 4, 9, 8, 5]])
    out = pack(docs, block_size=5, bos_id=8, eos_id=9)
    assert out.dtype == torch.long
    assert torch.equal(out, expected)
    assert torch.equal(pack(docs, 4, 8, 9), torch.tensor([[8, 1, 2, 3], [9, 8, 4, 9], [8, 5, 6, 9]]))
    assert pack(docs, 50, 8, 9).shape == (0, 50)
    with pytest.raises(ValueError, match="block_size must be an int >= 2"):
        pack(docs, 1, 8, 9)


# ------------------------------------------------------------------------------------ splitting


def test_split_is_deterministic():
    docs = [f"document {i}" for i in range(100)]
    train, val = split_documents(docs, val_fraction=0.05, seed=3)
    random.seed(999)
    torch.manual_seed(999)  # global random state plays no part
    assert split_documents(docs, val_fraction=0.05, seed=3) == (train, val)
    assert len(val) == 5 and len(train) == 95
    assert sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in train] and val == [d for d in docs if d in val]  # order kept
    assert split_documents(docs, val_fraction=0.05, seed=4)[1] != val


def test_split_inside_few_documents():
    doc = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_documents([doc], val_fraction=0.05)
    assert train == [doc[:950]] and val == [doc[950:]]
    train, val = split_documents(["ab", "xyz" * 10, "q"], val_fraction=0.3)  # 3 * 0.3 < 1 document
    assert train == ["a", "xyz" * 7, "q"] and val == ["b", "xyz" * 3]
    train, val = split_documents(["abc"], val_fraction=0.01)
    assert val == ["c"]  # never empty
    for bad in (0.0, -0.1, 0.6):
        with pytest.raises(ValueError, match=r"val_fraction must lie in \(0, 0.5\]"):
            split_documents([doc], val_fraction=bad)
    with pytest.raises(ValueError, match="empty corpus"):
        split_documents([])
    with pytest.raises(ValueError, match="too small to split"):
        split_documents(["a", "b"])


# -------------------------------------------------------------------------------------- splits


def _blocks(docs, tok, block_size, split="train", val_fraction=0.05, seed=0):
    train, val = split_documents(docs, val_fraction=val_fraction, seed=seed)
    return pack([tok.encode(d) for d in (train if split == "train" else val)], block_size, tok.bos_id, tok.eos_id)


def test_default_corpus_blocks():
    tok = CharTokenizer.from_text(default_corpus())
    train, val = _blocks(default_corpus(), tok, 128), _blocks(default_corpus(), tok, 128, "val")
    assert train.shape[1] == 128 and train.dtype == torch.long
    n_chars = sum(len(d) for d in default_corpus())
    assert (len(train) + len(val)) * 128 == pytest.approx(n_chars, rel=0.01)
    assert 0.04 < len(val) / (len(train) + len(val)) < 0.06
    assert train[0][0] == tok.bos_id


def test_train_and_val_text_are_disjoint():
    # each document has its own two characters: the token sets of the splits show which docs they hold
    rng = random.Random(0)
    docs = ["".join(rng.choice(chr(0x4E00 + 2 * i) + chr(0x4E01 + 2 * i)) for _ in range(50)) for i in range(40)]
    tok = CharTokenizer.from_text(docs)
    train = _blocks(docs, tok, 16, val_fraction=0.1, seed=1)
    val = _blocks(docs, tok, 16, "val", val_fraction=0.1, seed=1)
    special = {tok.bos_id, tok.eos_id}
    train_ids, val_ids = set(train.unique().tolist()) - special, set(val.unique().tolist()) - special
    assert train_ids and val_ids and not train_ids & val_ids
    _, val_docs = split_documents(docs, val_fraction=0.1, seed=1)
    assert val_ids <= set(tok.encode("".join(val_docs)))
    # one document: split inside the text
    tok = CharTokenizer.from_text("ab")
    train = _blocks(["a" * 900 + "b" * 100], tok, 10, val_fraction=0.1)
    val = _blocks(["a" * 900 + "b" * 100], tok, 10, "val", val_fraction=0.1)
    # streams: BOS a*900 EOS -> 90 blocks; BOS b*100 EOS -> 10 blocks
    assert tok.decode(train.flatten()) == "a" * 899 and tok.decode(val.flatten()) == "b" * 99
