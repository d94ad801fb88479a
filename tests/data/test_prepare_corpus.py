"""ddlm prepare (ddlm.data.prepare_corpus): exact decoding per convention, byte-identical and resumable
preparations, split rules, options and folder states."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from _corpus import documents, write_jsonl, write_paragraphs

from ddlm.cli import main
from ddlm.data.conventions import in_validation
from ddlm.data.prepare_corpus import prepare_corpus
from ddlm.data.prepared import open_prepared
from ddlm.data.shards import META, PROGRESS, PreparedDataError


def _prep(source, out, **kw):
    kw.setdefault("tokenizer", "char")
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *_: None)
    return prepare_corpus(source, out, **kw)


def _files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _split_docs(corpus, split) -> list[np.ndarray]:
    """Each document of a split as its token ids (its EOS included)."""
    rec = corpus.meta["splits"][split]
    stream = corpus.streams[rec["stream"]]
    return [np.asarray(stream.read(stream.doc_start(d), stream.doc_start(d + 1))) for d in range(*rec["documents"])]


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_documents_decode_back_to_the_source_exactly(tmp_path, tokenizer):
    docs = documents(40)
    write_paragraphs(tmp_path / "c.txt", docs)
    meta = _prep(tmp_path / "c.txt", tmp_path / "p", tokenizer=tokenizer, split="last:5", shard_tokens=257,
                 chunk_bytes=500)
    corpus = open_prepared(tmp_path / "p")
    tok = corpus.tokenizer
    for split, expected in (("train", docs[:-5]), ("val", docs[-5:])):
        got = _split_docs(corpus, split)
        assert all(d[-1] == tok.eos_id for d in got)
        assert [tok.decode(d[:-1].tolist()) for d in got] == expected
    assert meta["documents"] == 40 and len(meta["streams"]["all"]["shards"]) > 2  # documents cross shards
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["name"] == tokenizer


@pytest.mark.parametrize("convention", ["wrap", "window", "pad"])
def test_blocks_decode_back_to_the_stream_per_convention(tmp_path, convention):
    docs, length = documents(30), 16
    write_paragraphs(tmp_path / "c.txt", docs)
    _prep(tmp_path / "c.txt", tmp_path / "p", convention=convention, block_size=length if convention == "pad" else None,
          split="last:4", shard_tokens=101, chunk_bytes=400)
    corpus = open_prepared(tmp_path / "p")
    tok, blocks = corpus.tokenizer, corpus.blocks("train", length)
    rows = blocks[torch.arange(len(blocks))]
    assert rows.shape == (len(blocks), length) and rows.dtype == torch.long
    stream = torch.from_numpy(np.concatenate(_split_docs(corpus, "train")).astype(np.int64))
    if convention == "wrap":  # BOS + L-2 tokens of the stream + EOS, the last partial piece dropped
        assert len(blocks) == len(stream) // (length - 2)
        assert (rows[:, 0] == tok.bos_id).all() and (rows[:, -1] == tok.eos_id).all()
        assert torch.equal(rows[:, 1:-1].flatten(), stream[: len(blocks) * (length - 2)])
    elif convention == "window":  # consecutive windows from the start (evaluation's phase 0)
        assert len(blocks) == (len(stream) - length + 1) // length
        assert torch.equal(rows.flatten(), stream[: len(blocks) * length])
    else:  # one document per block (BOS + its tokens, padded with EOS); long ones continue
        assert (rows[:, 0] == tok.bos_id).all()
        r = 0
        for d in _split_docs(corpus, "train"):
            pieces = [d[i : i + length - 1] for i in range(0, len(d), length - 1)]
            for piece in pieces:
                assert rows[r, 1 : 1 + len(piece)].tolist() == piece.tolist()
                assert (rows[r, 1 + len(piece) :] == tok.eos_id).all()
                r += 1
        assert r == len(blocks) > len(docs) - 4  # some documents took several blocks
        assert "".join(tok.decode(row) for row in rows) == "".join(docs[:-4])


def test_two_preparations_are_byte_identical_for_any_worker_count(tmp_path):
    write_paragraphs(tmp_path / "c.txt", documents(80))
    kw = dict(tokenizer="gpt2", split="fraction:0.2", shard_tokens=300, chunk_bytes=700)
    _prep(tmp_path / "c.txt", tmp_path / "one", workers=1, **kw)
    _prep(tmp_path / "c.txt", tmp_path / "two", workers=2, **kw)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one == two and any(k.startswith("train/shard_000003") for k in one)
    meta = json.loads(one[META])
    assert meta["splits"]["val"]["documents"][1] > 0 and meta["source"]["content_sha256"]


def test_an_interrupted_preparation_resumes_to_the_same_bytes(tmp_path):
    write_paragraphs(tmp_path / "c.txt", documents(60))
    kw = dict(split="fraction:0.2", shard_tokens=97, chunk_bytes=300, commit_seconds=0)
    _prep(tmp_path / "c.txt", tmp_path / "whole", **kw)
    seen = {"appended": 0}

    def crash(event, state):  # dies after appending a chunk it has not committed
        seen[event] = seen.get(event, 0) + 1
        if event == "appended" and seen["appended"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _prep(tmp_path / "c.txt", tmp_path / "cut", _hook=crash, **kw)
    cut = tmp_path / "cut"
    committed = json.loads((cut / PROGRESS).read_text())["streams"]
    written = sum(p.stat().st_size for p in (cut / "train").glob("shard_*")) // 2
    assert written > committed["train"]["tokens"]  # uncommitted tokens on disk (a complete shard among them)
    assert not (cut / META).exists()
    with pytest.raises(PreparedDataError, match="unfinished preparation"):
        open_prepared(cut)
    _prep(tmp_path / "c.txt", cut, **kw)
    assert _files(tmp_path / "whole") == _files(cut)


def test_an_interruption_while_finishing_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """Killed after the shards got their final names but before the metadata: the same command
    restores the committed streams and finishes again."""
    from ddlm.data import finish_corpus

    write_paragraphs(tmp_path / "c.txt", documents(40))
    kw = dict(split="last:4", shard_tokens=101, chunk_bytes=400, convention="pad", block_size=16)
    _prep(tmp_path / "c.txt", tmp_path / "whole", **kw)
    real = finish_corpus._count

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finish_corpus, "_count", crash)
    with pytest.raises(KeyboardInterrupt):
        _prep(tmp_path / "c.txt", tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "all" / "documents.bin").exists() and not (tmp_path / "cut" / META).exists()
    monkeypatch.setattr(finish_corpus, "_count", real)
    _prep(tmp_path / "c.txt", tmp_path / "cut", **kw)
    assert _files(tmp_path / "whole") == _files(tmp_path / "cut")


_KILL_AFTER_THREE_COMMITS = """
import os, signal, sys
from ddlm.data.prepare_corpus import prepare_corpus

def hook(event, state):
    if event == "committed" and state["chunks"] >= 3:
        os.killpg(0, signal.SIGKILL)  # the whole group: main process and workers, mid-read

prepare_corpus(sys.argv[1], sys.argv[2], tokenizer="gpt2", workers=2, shard_tokens=5000, chunk_bytes=2000,
               progress=False, commit_seconds=0.0, _hook=hook)
"""


@pytest.mark.slow
def test_a_killed_preparation_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL to the whole process group (main and workers) mid-read; the same command finishes it.

    The kill comes from a hook after the third committed chunk, so it lands mid-run however fast the
    machine is (a timed kill from outside raced a fast preparation that had already finished)."""
    write_paragraphs(tmp_path / "c.txt", documents(3000, long_every=0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def cmd(out):
        return [sys.executable, "-m", "ddlm", "prepare", str(tmp_path / "c.txt"), "--out", str(out), "--tokenizer",
                "gpt2", "--workers", "2", "--shard-tokens", "5000", "--chunk-bytes", "2000", "--no-progress"]

    subprocess.run(cmd(tmp_path / "whole"), check=True, env=env, capture_output=True, timeout=600)
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_THREE_COMMITS, str(tmp_path / "c.txt"),
                             str(tmp_path / "cut")], env=env, start_new_session=True, capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    state = json.loads((tmp_path / "cut" / PROGRESS).read_text())
    assert state["chunks"] >= 3 and state["phase"] != "finishing" and not (tmp_path / "cut" / META).exists()
    subprocess.run(cmd(tmp_path / "cut"), check=True, env=env, capture_output=True, timeout=600)
    assert _files(tmp_path / "whole") == _files(tmp_path / "cut")


def test_split_rules(tmp_path):
    docs = documents(200, long_every=0)
    write_jsonl(tmp_path / "c.jsonl", docs)
    meta = _prep(tmp_path / "c.jsonl", tmp_path / "f", split="fraction:0.25")
    corpus, tok = open_prepared(tmp_path / "f"), open_prepared(tmp_path / "f").tokenizer
    val = [tok.decode(d[:-1].tolist()) for d in _split_docs(corpus, "val")]
    train = [tok.decode(d[:-1].tolist()) for d in _split_docs(corpus, "train")]
    assert val == [d for d in docs if in_validation(d, 0.25)] and 25 < len(val) < 75
    assert train == [d for d in docs if not in_validation(d, 0.25)]
    assert meta["split"]["name"] == "fraction:0.25"
    meta = _prep(tmp_path / "c.jsonl", tmp_path / "n", split="none")
    assert list(meta["splits"]) == ["all"] and meta["splits"]["all"]["documents"] == [0, 200]
    with pytest.raises(PreparedDataError, match="split last:500 needs more than 200 documents"):
        _prep(tmp_path / "c.jsonl", tmp_path / "l", split="last:500")
    counts = np.load(tmp_path / "f" / "counts" / "val.npy")
    assert counts.sum() == meta_tokens(tmp_path / "f", "val") and len(counts) == tok.vocab_size


def meta_tokens(folder, split):
    return json.loads((folder / META).read_text())["splits"][split]["tokens"]


def test_folder_states_and_options(tmp_path):
    write_paragraphs(tmp_path / "c.txt", documents(30))
    _prep(tmp_path / "c.txt", tmp_path / "p", split="last:3")
    logged = []
    _prep(tmp_path / "c.txt", tmp_path / "p", split="last:3", log=logged.append)  # done already: nothing to do
    assert "already prepared" in logged[0]
    with pytest.raises(PreparedDataError, match="already holds a prepared corpus"):
        _prep(tmp_path / "c.txt", tmp_path / "p", split="last:4")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        _prep(tmp_path / "c.txt", tmp_path / "other")
    with pytest.raises(ValueError, match="only convention 'pad' fixes it"):
        _prep(tmp_path / "c.txt", tmp_path / "q", block_size=64)
    with pytest.raises(ValueError, match="block_size is None, expected an integer >= 2 for convention 'pad'"):
        _prep(tmp_path / "c.txt", tmp_path / "q", convention="pad")
    with pytest.raises(ValueError, match="split is 'half', expected"):
        _prep(tmp_path / "c.txt", tmp_path / "q", split="half")
    with pytest.raises(ValueError, match="workers is 0, expected an integer >= 1"):
        _prep(tmp_path / "c.txt", tmp_path / "q", workers=0)


def test_interrupted_preparation_with_other_options_is_refused(tmp_path):
    write_paragraphs(tmp_path / "c.txt", documents(40))

    def crash(event, state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _prep(tmp_path / "c.txt", tmp_path / "p", chunk_bytes=300, commit_seconds=0, _hook=crash, split="last:3")
    with pytest.raises(PreparedDataError, match="split: 'last:3' then, 'last:4' now"):
        _prep(tmp_path / "c.txt", tmp_path / "p", chunk_bytes=300, split="last:4")


def test_cli_prepare_fixed_convention(tmp_path, capsys):
    """The fixed command line: python -m ddlm prepare SOURCE --tokenizer gpt2 --out DIR --workers N."""
    write_jsonl(tmp_path / "c.jsonl", documents(50))
    assert main(["prepare", str(tmp_path / "c.jsonl"), "--tokenizer", "gpt2", "--out", str(tmp_path / "p"),
                 "--workers", "2", "--split", "last:5", "--no-progress"]) == 0
    assert "prepared" in capsys.readouterr().out
    corpus = open_prepared(tmp_path / "p")
    assert corpus.meta["tokenizer"]["name"] == "gpt2" and corpus.meta["documents"] == 50
    assert main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "q")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
