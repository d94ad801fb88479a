"""Opening prepared folders (ddlm.data.prepared): corrupt or mismatched data gets a named error at start."""

import json
import shutil

import numpy as np
import pytest
from _corpus import documents, write_paragraphs

from ddlm.config import load_config
from ddlm.data.prepare import prepare_data
from ddlm.data.prepare_corpus import prepare_corpus
from ddlm.data.prepared import open_prepared
from ddlm.data.shards import META, PreparedDataError
from ddlm.data.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    write_paragraphs(root / "c.txt", documents(50))
    prepare_corpus(root / "c.txt", root / "p", tokenizer="char", split="last:5", shard_tokens=300, chunk_bytes=600,
                   progress=False, log=lambda *_: None)
    return root / "p"


@pytest.fixture
def copy(prepared, tmp_path):
    shutil.copytree(prepared, tmp_path / "p")
    return tmp_path / "p"


def test_truncated_shard(copy):
    shard = copy / "all" / "shard_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(PreparedDataError, match=r"shard_000001.bin is truncated: expected 600 bytes \(300 tokens"):
        open_prepared(copy)


def test_shard_written_with_another_dtype(copy):
    shard = copy / "all" / "shard_000000.bin"
    shard.write_bytes(np.fromfile(shard, dtype="<u2").astype("<u4").tobytes())
    with pytest.raises(PreparedDataError, match="the size of 300 tokens as uint32: written with another dtype"):
        open_prepared(copy)


def test_token_ids_outside_the_vocabulary(copy):
    shard = copy / "all" / "shard_000000.bin"
    data = np.fromfile(shard, dtype="<u2")
    data[0] = 60000
    data.tofile(shard)
    with pytest.raises(PreparedDataError, match="holds token id 60000, not below the vocabulary size"):
        open_prepared(copy)


def test_wrong_tokenizer_file(copy):
    CharTokenizer("abc").save(copy / "tokenizer.json")
    with pytest.raises(PreparedDataError, match="does not belong to these shards"):
        open_prepared(copy)


def test_recorded_dtype_must_fit_the_vocabulary(copy):
    meta = json.loads((copy / META).read_text())
    meta["dtype"] = "uint32"
    (copy / META).write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="records dtype uint32 for a vocabulary of"):
        open_prepared(copy)


def test_document_index(copy):
    index = copy / "all" / "documents.bin"
    index.write_bytes(index.read_bytes()[:-8])
    with pytest.raises(PreparedDataError, match="document index .* expected"):
        open_prepared(copy)


def test_missing_marker_and_missing_folder(copy, tmp_path):
    (copy / META).unlink()
    with pytest.raises(PreparedDataError, match="not a prepared corpus"):
        open_prepared(copy)


def test_config_tokenizer_must_match_the_folder(prepared, tmp_path):
    base = [f"data.corpus={prepared}", "data.block_size=16", f"run_dir={tmp_path / 'r'}"]
    tok, train, val = prepare_data(load_config(None, base + ["data.tokenizer=char"]))
    assert isinstance(tok, CharTokenizer) and train.shape[1] == val.shape[1] == 16
    with pytest.raises(PreparedDataError, match="data.tokenizer is gpt2 .* was tokenized with char"):
        prepare_data(load_config(None, base + ["data.tokenizer=gpt2"]))
    with pytest.raises(PreparedDataError, match="data.tokenizer is char .* was tokenized with char"):
        prepare_data(load_config(None, base + ["data.tokenizer=char"]), tokenizer=CharTokenizer("xyz"))


def test_pad_folder_is_read_at_its_block_size_only(tmp_path):
    write_paragraphs(tmp_path / "c.txt", documents(30))
    prepare_corpus(tmp_path / "c.txt", tmp_path / "p", tokenizer="char", convention="pad", block_size=24,
                   split="last:3", progress=False, log=lambda *_: None)
    corpus = open_prepared(tmp_path / "p")
    assert corpus.blocks("train", 24).shape[1] == 24
    with pytest.raises(PreparedDataError, match="holds pad blocks of 24 tokens, but blocks of 32"):
        corpus.blocks("train", 32)
    with pytest.raises(PreparedDataError, match="no split 'test'"):
        corpus.blocks("test", 24)
    prepare_corpus(tmp_path / "c.txt", tmp_path / "w", tokenizer="char", split="last:3", progress=False,
                   log=lambda *_: None)
    with pytest.raises(PreparedDataError, match="holds no whole block of 100000 tokens under convention 'wrap'"):
        open_prepared(tmp_path / "w").blocks("val", 100000)


def test_folder_without_a_train_split_cannot_be_trained_on(tmp_path):
    write_paragraphs(tmp_path / "c.txt", documents(10))
    prepare_corpus(tmp_path / "c.txt", tmp_path / "p", tokenizer="char", split="none", progress=False,
                   log=lambda *_: None)
    cfg = load_config(None, [f"data.corpus={tmp_path / 'p'}", "data.block_size=16"])
    with pytest.raises(PreparedDataError, match="has no train/validation split"):
        prepare_data(cfg)
