"""The on-disk streams (ddlm.data.shards): appending across shard boundaries, restoring a committed
state after uncommitted writes, reading any range, the dtype rule and tokenizer identities."""

import numpy as np
import pytest

from ddlm.data.shards import Stream, StreamWriter, shard_name, token_dtype, tokenizer_identity
from ddlm.data.tokenizers import BPETokenizer, CharTokenizer


def _docs(seed, n=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 500, rng.integers(1, 30)).astype(np.uint16) for _ in range(n)]


def _append(w, docs):
    w.append(np.concatenate(docs), np.array([len(d) for d in docs]))


def _info(folder, w, names):
    return {"tokens": w.tokens, "documents": w.documents, "shards": [{"name": n} for n in names]}


def test_append_across_shards_and_read_any_range(tmp_path):
    docs = _docs(0)
    w = StreamWriter(tmp_path / "s", np.dtype("<u2"), shard_tokens=37)
    _append(w, docs[:25])
    _append(w, docs[25:])
    names = w.finish()
    flat = np.concatenate(docs)
    assert names == [shard_name(i) for i in range(-(-len(flat) // 37))]
    assert not list((tmp_path / "s").glob("*.partial"))
    stream = Stream(tmp_path / "s", _info(tmp_path / "s", w, names), np.dtype("<u2"), 37)
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = int(rng.integers(0, len(flat)))
        b = int(rng.integers(a, len(flat) + 1))
        assert np.array_equal(stream.read(a, b), flat[a:b])
    ends = np.cumsum([len(d) for d in docs])
    assert np.array_equal(stream.doc_ends(0, len(docs)), ends) and stream.doc_start(3) == ends[2]
    with pytest.raises(IndexError, match="outside the stream"):
        stream.read(0, len(flat) + 1)


def test_restore_discards_everything_after_the_commit(tmp_path):
    docs = _docs(2)
    straight = StreamWriter(tmp_path / "a", np.dtype("<u2"), shard_tokens=23)
    for d in docs:
        _append(straight, [d])
    straight_names = straight.finish()
    cut = StreamWriter(tmp_path / "b", np.dtype("<u2"), shard_tokens=23)
    for d in docs[:10]:
        _append(cut, [d])
    state = cut.commit()
    for d in docs[10:30]:  # written, never committed: crosses shards, renames a full one
        _append(cut, [d])
    cut._shard.close()
    cut._docs.close()
    assert len(list((tmp_path / "b").glob("shard_*.bin"))) > state["tokens"] // 23
    resumed = StreamWriter(tmp_path / "b", np.dtype("<u2"), shard_tokens=23, **state)
    for d in docs[10:]:
        _append(resumed, [d])
    assert resumed.finish() == straight_names
    for name in straight_names + ["documents.bin"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_token_dtype_and_tokenizer_identity():
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    a, b = CharTokenizer("abc"), CharTokenizer("abd")
    assert tokenizer_identity(a) == tokenizer_identity(CharTokenizer("abc"))
    assert tokenizer_identity(a)["sha256"] != tokenizer_identity(b)["sha256"]
    gpt2 = tokenizer_identity(BPETokenizer.gpt2())
    assert gpt2["name"] == "gpt2" and gpt2["vocab_size"] == 50257 and gpt2["bos_id"] == gpt2["eos_id"] == 50256
