"""Checkpoint folders: exact resume, RNG, corruption detection, crash safety."""

import hashlib
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from ddlm import checkpoint as ckpt
from ddlm.checkpoint import CheckpointError, capture_rng, checkpoint_step, load_checkpoint, restore_rng, save_checkpoint

CONFIG = {"model": {"width": 8}, "lr": 0.01, "betas": [0.9, 0.99]}
TOKENIZER = {"vocab": ["a", "b", "<mask>"]}


def make_run(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train_step(model, opt, sched):
    x = torch.randn(16, 4)  # drawn from the global RNG: resuming must restore it too
    loss = (model(x) - x[:, :3]).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def save_small(path, step=1, scale=1.0, **kw):
    model = {"w": torch.full((3, 2), scale), "b": torch.arange(3.0)}
    return save_checkpoint(path, step=step, config=CONFIG, tokenizer=TOKENIZER, model=model, **kw)


def folder_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def strays(parent):
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_resume_is_bit_identical(tmp_path):
    model, opt, sched = make_run(0)
    for _ in range(3):
        loss = train_step(model, opt, sched)
    ema = {k: v.detach() * 0.5 for k, v in model.state_dict().items()}
    groups, sched_state = opt.state_dict()["param_groups"], sched.state_dict()
    save_checkpoint(tmp_path / "c", step=3, config=CONFIG, tokenizer=TOKENIZER, model=model.state_dict(),
                    ema=ema, optimizer=opt.state_dict(), scheduler=sched_state, rng=capture_rng(),
                    data={"epoch": 1, "index": 48}, metrics={"loss": loss})
    train_step(model, opt, sched)  # the run that never stopped

    torch.manual_seed(123)  # a different state, to be overwritten by the checkpoint
    model2, opt2, sched2 = make_run(1)
    ck = load_checkpoint(tmp_path / "c")
    assert set(ck.optimizer["state"]) == {0, 1, 2, 3}
    assert ck.optimizer["param_groups"][0]["betas"] == (0.9, 0.99)
    assert ck.optimizer["param_groups"] == groups and ck.scheduler == sched_state
    assert (ck.step, ck.config, ck.tokenizer) == (3, CONFIG, TOKENIZER)
    assert ck.data == {"epoch": 1, "index": 48} and ck.metrics == {"loss": loss}
    assert list(ck.model) == list(model2.state_dict()) and list(ck.ema) == list(ema)
    model2.load_state_dict(ck.model)
    opt2.load_state_dict(ck.optimizer)
    sched2.load_state_dict(ck.scheduler)
    restore_rng(ck.rng)
    train_step(model2, opt2, sched2)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rng_round_trip(tmp_path):
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    np.random.normal()  # numpy caches a Gaussian: the state has has_gauss=1
    state = capture_rng()
    expected = (torch.rand(4), [random.random() for _ in range(3)], np.random.rand(3), np.random.normal())
    save_small(tmp_path / "c", rng=state)
    torch.rand(7), random.random(), np.random.rand(2)  # move every generator on
    ck = load_checkpoint(tmp_path / "c")
    assert isinstance(ck.rng["python"], tuple) and isinstance(ck.rng["python"][1], tuple)
    restore_rng(ck.rng)
    got = (torch.rand(4), [random.random() for _ in range(3)], np.random.rand(3), np.random.normal())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    assert np.array_equal(got[2], expected[2]) and got[3] == expected[3]


def test_odd_tensors_and_structures_round_trip(tmp_path):
    w = torch.randn(4, 3)
    model = {"tied_a": w, "tied_b": w, "view": w[1:3], "transposed": w.t(), "empty": torch.zeros(0, 2),
             "half": torch.ones(2, dtype=torch.bfloat16), "flags": torch.tensor([True, False])}
    weird = {"state": {0: {"t": torch.tensor(2.0)}, (1, "x"): [np.float64(1.5), np.int32(3)]},
             "__tensor__": "not a tensor", "nested": ((1, 2), [3, (4,)]), "arr": np.arange(6, dtype=np.int16)
             .reshape(2, 3), "keys": {"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}}}
    save_checkpoint(tmp_path / "c", step=0, config={}, tokenizer={}, model=model, optimizer=weird)
    ck = load_checkpoint(tmp_path / "c")
    assert list(ck.model) == list(model)
    for k, v in model.items():
        assert torch.equal(ck.model[k], v) and ck.model[k].dtype == v.dtype, k
    opt = ck.optimizer
    assert torch.equal(opt["state"][0]["t"], torch.tensor(2.0)) and opt["state"][(1, "x")] == [1.5, 3]
    assert opt["__tensor__"] == "not a tensor" and opt["nested"] == ((1, 2), [3, (4,)])
    assert opt["arr"].dtype == np.int16 and np.array_equal(opt["arr"], weird["arr"])
    assert torch.equal(opt["keys"]["a/b"], torch.ones(1)) and torch.equal(opt["keys"]["a"]["b"], torch.zeros(1))
    with pytest.raises(TypeError, match="set"):
        save_small(tmp_path / "d", optimizer={"bad": {1, 2}})
    assert not (tmp_path / "d").exists() and strays(tmp_path) == []


def test_corrupt_byte_is_detected(tmp_path):
    path = save_small(tmp_path / "c")
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: still parses as safetensors
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*checksum"):
        load_checkpoint(path)


def test_missing_file_and_folder(tmp_path):
    path = save_small(tmp_path / "c")
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json.*missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("fix_meta", [False, True], ids=["stale-meta", "meta-rewritten"])
def test_truncated_safetensors(tmp_path, fix_meta):
    path = save_small(tmp_path / "c")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    if fix_meta:  # checksums agree, so the safetensors parser itself must reject the file
        meta = json.loads((path / "meta.json").read_text())
        entry = next(e for e in meta["files"] if e["name"] == "model.safetensors")
        entry["size"] = f.stat().st_size
        entry["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        (path / "meta.json").write_text(json.dumps(meta))
    reason = "not valid safetensors" if fix_meta else "truncated"
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*" + reason):
        load_checkpoint(path)


def test_unknown_version(tmp_path):
    path = save_small(tmp_path / "c")
    meta = json.loads((path / "meta.json").read_text())
    meta["version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"meta\.json.*version 99"):
        load_checkpoint(path)


def test_crash_while_writing_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = save_small(tmp_path / "c", step=1, scale=1.0)
    before = folder_bytes(path)
    real, calls = ckpt._write_file, []

    def crashing(p, data):
        calls.append(p.name)
        if len(calls) == 3:
            raise OSError("disk on fire")
        return real(p, data)

    monkeypatch.setattr(ckpt, "_write_file", crashing)
    with pytest.raises(OSError, match="fire"):
        save_small(path, step=2, scale=2.0)
    monkeypatch.undo()
    assert folder_bytes(path) == before and load_checkpoint(path).step == 1
    assert len(strays(tmp_path)) == 1  # the half-written temp folder
    save_small(path, step=3, scale=3.0)
    assert strays(tmp_path) == [] and load_checkpoint(path).step == 3


@pytest.mark.parametrize("fail_calls", [{1}, {2}, {2, 3}], ids=["move-aside", "rename-in", "rename-and-rollback"])
def test_crash_while_renaming_keeps_old_checkpoint(tmp_path, monkeypatch, fail_calls):
    path = save_small(tmp_path / "c", step=1)
    before = folder_bytes(path)
    real, calls = os.replace, []

    def crashing(src, dst):
        calls.append(1)
        if len(calls) in fail_calls:
            raise OSError("power cut")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crashing)
    with pytest.raises(OSError, match="power cut"):
        save_small(path, step=2, scale=2.0)
    monkeypatch.undo()
    assert path.exists() == (fail_calls != {2, 3})  # a killed process could stop between the renames
    save_small(tmp_path / "other")  # the next save into the parent repairs and cleans up
    assert folder_bytes(path) == before and load_checkpoint(path).step == 1
    assert strays(tmp_path) == []


def test_save_never_deletes_foreign_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    for name in [".c.tmp-xyz", ".notes", ".c.tmp-0123456789abcdeg"]:
        (tmp_path / name).mkdir()
    (tmp_path / ".c.tmp-0123456789abcdef").write_text("a file, not our folder")
    with pytest.raises(FileExistsError):
        save_small(tmp_path / "c")
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"
    save_small(tmp_path / "d")
    assert {p.name for p in tmp_path.iterdir()} == {
        "c", "d", ".c.tmp-xyz", ".notes", ".c.tmp-0123456789abcdeg", ".c.tmp-0123456789abcdef"}


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, opt, sched = make_run(0)
    train_step(model, opt, sched)
    path = save_checkpoint(tmp_path / "c", step=1, config=CONFIG, tokenizer=TOKENIZER, model=model.state_dict(),
                           optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=capture_rng())

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_checkpoint")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"), (np, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    ck = load_checkpoint(path)
    restore_rng(ck.rng)
    opt.load_state_dict(ck.optimizer)


def test_checkpoint_step_reads_meta_only(tmp_path):
    path = save_small(tmp_path / "c", step=42)
    (path / "model.safetensors").unlink()  # the other files are not read
    assert checkpoint_step(path) == 42
    with pytest.raises(CheckpointError, match="meta.json: missing, unreadable or without a step"):
        checkpoint_step(tmp_path / "nowhere")
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        checkpoint_step(path)
