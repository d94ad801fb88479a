"""The last step of a preparation (ddlm.data.finish_corpus): the pad block table and the unigram counts."""

import numpy as np

from ddlm.data.finish_corpus import _count, _pad_table
from ddlm.data.shards import PAD_BLOCKS, Stream, StreamWriter


def _stream(tmp_path, lengths, shard_tokens=50):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 300, n).astype(np.uint16) for n in lengths]
    w = StreamWriter(tmp_path / "s", np.dtype("<u2"), shard_tokens)
    w.append(np.concatenate(docs), np.array(lengths))
    names = w.finish()
    info = {"tokens": w.tokens, "documents": w.documents, "shards": [{"name": n} for n in names]}
    return Stream(tmp_path / "s", info, np.dtype("<u2"), shard_tokens), docs


def test_pad_table_cuts_every_document_into_blocks_of_l_minus_1(tmp_path):
    lengths = [1, 5, 7, 8, 15, 16, 40, 3]
    stream, docs = _stream(tmp_path, lengths)
    before = _pad_table(tmp_path / "s", stream, block_size=8, marks={0, 3, 6}, piece=3)  # pieces of 3 documents
    table = np.fromfile(tmp_path / "s" / PAD_BLOCKS, dtype="<i8").reshape(-1, 2)
    per_doc = [-(-n // 7) for n in lengths]
    assert len(table) == sum(per_doc) == before[len(lengths)]
    assert before[0] == 0 and before[3] == sum(per_doc[:3]) and before[6] == sum(per_doc[:6])
    r = 0
    for d, doc in enumerate(docs):  # each document's blocks, in order, are its tokens
        pieces = [stream.read(s, e) for s, e in table[r : r + per_doc[d]].tolist()]
        assert all(0 < len(p) <= 7 for p in pieces)
        assert np.array_equal(np.concatenate(pieces), doc)
        r += per_doc[d]


def test_counts_are_the_histogram_of_the_range(tmp_path):
    stream, docs = _stream(tmp_path, [30, 20, 45, 10])
    flat = np.concatenate(docs)
    counts = _count(stream, 12, 90, vocab=300, piece=17)
    assert np.array_equal(counts, np.bincount(flat[12:90], minlength=300))
