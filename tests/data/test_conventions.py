"""Conventions and split rules (ddlm.data.conventions): the keyed permutation, the training order of a
prepared split (disjoint over ranks, covering an epoch, a pure function of seed and step), window phases."""

import numpy as np
import pytest
import torch
from _corpus import documents, write_paragraphs

from ddlm.data.conventions import epoch_key, parse_split, permute
from ddlm.data.prepare_corpus import prepare_corpus
from ddlm.data.prepared import open_prepared


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 65, 100, 255, 256, 257, 1000, 4097])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, key=12345)
    assert sorted(out.tolist()) == list(range(n))
    if n > 16:  # shuffled: far from the identity, and another key gives another order
        assert (out != np.arange(n)).mean() > 0.8
        assert not np.array_equal(out, permute(np.arange(n), n, key=12346))


def test_permute_large_domain_without_materialising_it():
    n = 9_000_000_001  # more blocks than OpenWebText has: only the asked slots are computed
    slots = np.arange(0, n, n // 5000, dtype=np.int64)[:5000]
    out = permute(slots, n, key=7)
    assert len(set(out.tolist())) == len(slots) and out.min() >= 0 and out.max() < n
    with pytest.raises(ValueError, match="slots must lie in"):
        permute(np.array([n]), n, key=7)


def test_parse_split():
    assert parse_split("fraction:0.005")["fraction"] == 0.005
    assert parse_split("last:100000")["documents"] == 100000
    assert parse_split("none")["rule"] == "none"
    for bad in ("fraction:0", "fraction:1.5", "last:0", "last:x", "none:1", "random", 3):
        with pytest.raises(ValueError, match="expected 'fraction:F'"):
            parse_split(bad)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    write_paragraphs(root / "c.txt", documents(80))
    out = {}
    for conv in ("wrap", "window", "pad"):
        prepare_corpus(root / "c.txt", root / conv, tokenizer="char", convention=conv, split="last:5",
                       block_size=12 if conv == "pad" else None, shard_tokens=211, chunk_bytes=500, progress=False,
                       log=lambda *_: None)
        out[conv] = open_prepared(root / conv)
    return out


@pytest.mark.parametrize("convention", ["wrap", "window", "pad"])
def test_ranks_see_disjoint_blocks_that_cover_the_epoch(folders, convention):
    """Two ranks take rows [0, B/2) and [B/2, B) of each global batch (as the training loop does): over
    one epoch's steps their blocks are disjoint and together every block once."""
    blocks = folders[convention].blocks("train", 12)
    n, batch = len(blocks), 8
    seen = {0: [], 1: []}
    for step in range(-(-n // batch)):  # the steps of the first epoch
        idx, _ = blocks.order(step, batch, seed=3)
        for row, block in enumerate(idx.tolist()):
            if step * batch + row < n:
                seen[row // (batch // 2)].append(block)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))
    assert len(seen[0]) >= n // 2 - batch and n > 3 * batch


def test_order_is_a_function_of_seed_and_step(folders):
    blocks = folders["wrap"].blocks("train", 12)
    a = blocks.batch(7, 16, seed=0)
    assert torch.equal(a, blocks.batch(7, 16, seed=0))  # e.g. after a resume at step 7
    assert not torch.equal(a, blocks.batch(7, 16, seed=1))
    assert not torch.equal(a, blocks.batch(8, 16, seed=0))
    n = len(blocks)  # the next epoch is another permutation
    e0 = blocks.order(0, n, seed=0)[0]
    e1 = blocks.order(1, n, seed=0)[0]
    assert sorted(e1.tolist()) == list(range(n)) and not np.array_equal(e0, e1)


def test_window_phase_changes_per_epoch(folders):
    blocks = folders["window"].blocks("train", 12)
    n = len(blocks)
    phases = {int(blocks.order(e, n, seed=0)[1][0]) for e in range(8)}
    assert len(phases) > 1 and all(0 <= p < 12 for p in phases)
    idx, ph = blocks.order(3, n, seed=0)
    rows = blocks.rows(idx, ph)
    stream = blocks.stream
    for r, (i, p) in enumerate(zip(idx.tolist(), ph.tolist(), strict=True)):  # each row is its window
        a = blocks.start + p + i * 12
        assert rows[r].tolist() == stream.read(a, a + 12).tolist()
    assert int(idx.max()) * 12 + int(ph.max()) + 12 <= blocks.end - blocks.start


def test_block_set_behaves_like_a_block_tensor(folders):
    blocks = folders["wrap"].blocks("val", 12)
    assert blocks.shape == (len(blocks), 12) and blocks.dtype == torch.long
    assert torch.equal(blocks[2], blocks[torch.tensor([2])][0])
    with pytest.raises(IndexError, match="block indices must lie in"):
        blocks[torch.tensor([len(blocks)])]
    assert 0 < blocks.unigram_entropy() < np.log(folders["wrap"].tokenizer.vocab_size)
    assert blocks.describe["convention"] == "wrap" and blocks.describe["split"] == "last:5"
    assert epoch_key(0, 1) != epoch_key(0, 2) != epoch_key(1, 1)
