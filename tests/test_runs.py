"""Run folders: checkpoints/ bookkeeping, which checkpoint a path designates, loading and exporting."""

import pytest
import torch

from ddlm.checkpoint import save_checkpoint
from ddlm.config import load_config
from ddlm.runs import (
    checkpoint_name,
    export,
    is_checkpoint_folder,
    is_run_folder,
    latest_checkpoint,
    load,
    prune_checkpoints,
    resolve_checkpoint,
    set_latest,
)
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


def save_small(path, step=1):
    model = {"w": torch.ones(3, 2), "b": torch.arange(3.0)}
    return save_checkpoint(path, step=step, config={"lr": 0.01}, tokenizer={"vocab": ["a", "b"]}, model=model)


def make_steps(run, steps):
    for s in steps:
        save_small(run / "checkpoints" / checkpoint_name(s), step=s)
    return [run / "checkpoints" / checkpoint_name(s) for s in steps]


def test_latest_checkpoint(tmp_path):
    """The latest is what checkpoints/latest names (else the highest step folder), never silently an
    older one: a damaged latest is for the loaders to report."""
    from ddlm.checkpoint import CheckpointError

    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    s1, s2, s3 = make_steps(run, [1, 2, 30])
    assert checkpoint_name(30) == "step_000030" and checkpoint_name(1234567) == "step_1234567"
    (run / "checkpoints" / ".step_000099.tmp-0123456789abcdef").mkdir()
    assert latest_checkpoint(run) == s3  # no latest file: the highest step
    set_latest(run, s2)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert latest_checkpoint(run) == s2
    (run / "checkpoints" / "latest").write_text("step_000007\n")  # names a missing folder
    with pytest.raises(CheckpointError, match="latest names step_000007, which does not exist"):
        latest_checkpoint(run)
    (run / "checkpoints" / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="does not hold the name of a step_N checkpoint folder"):
        latest_checkpoint(run)
    set_latest(run, s3)
    (s3 / "model.safetensors").unlink()  # latest now names an incomplete folder: still the latest
    assert latest_checkpoint(run) == s3
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "step_000050").mkdir()  # incomplete (no meta.json), but the highest
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000050"
    with pytest.raises(ValueError):
        set_latest(run, run / "checkpoints" / "step_000050")


def test_prune_checkpoints(tmp_path):
    run = tmp_path / "run"
    paths = make_steps(run, [1, 2, 3, 4, 5])
    (run / "checkpoints" / "step_000000").mkdir()  # incomplete, left alone
    (run / "checkpoints" / "notes").mkdir()
    set_latest(run, paths[0])
    deleted = prune_checkpoints(run, keep=2)
    assert deleted == paths[1:3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest", "notes", "step_000000", "step_000001", "step_000004", "step_000005"]
    assert latest_checkpoint(run) == paths[0]
    assert prune_checkpoints(run, keep=0) == paths[3:]
    with pytest.raises(ValueError):
        prune_checkpoints(run, keep=-1)


def test_resolve_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(run)
    (run / "checkpoints").mkdir(parents=True)
    assert is_run_folder(run) and not is_checkpoint_folder(run)
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint under checkpoints/"):
        resolve_checkpoint(run)
    s1, s2 = make_steps(run, [1, 2])
    assert resolve_checkpoint(run) == s2
    set_latest(run, s1)
    assert resolve_checkpoint(run) == s1  # the run folder's latest
    assert is_checkpoint_folder(s2) and resolve_checkpoint(s2) == s2  # a checkpoint folder designates itself
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        resolve_checkpoint(tmp_path / "notes.txt")
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint: expected checkpoints/step_N/"):
        resolve_checkpoint(tmp_path / "other")


def _cfg(tmp_path, name):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    return load_config(None, [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", "data.block_size=16",
                              "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=6",
                              "eval_every=3", "save_every=3", "eval_batches=2", "optim.warmup_steps=2"])


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing' does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty' holds no complete checkpoint"):
        load(tmp_path / "empty")


def test_export_writes_a_small_loadable_checkpoint(tmp_path):
    train(_cfg(tmp_path, "e"), progress=False, log=lambda *_: None)
    out = export(tmp_path / "e", tmp_path / "ref", description="test", train_minutes=1.5)
    model, proc, _ = load(out)
    ema_model, _, _ = load(tmp_path / "e", ema=True)
    for p, q in zip(model.state_dict().values(), ema_model.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert not (out / "trainer.safetensors").exists() or (out / "trainer.safetensors").stat().st_size < 10_000
    with pytest.raises(FileExistsError, match="already exists"):
        export(tmp_path / "e", out)
    half = export(tmp_path / "e", tmp_path / "half", dtype="float16")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size
    model16, _, _ = load(half)
    for p, q in zip(model16.state_dict().values(), ema_model.state_dict().values(), strict=True):
        assert p.dtype == q.dtype and torch.equal(p, q.half().to(q.dtype) if q.is_floating_point() else q)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export(tmp_path / "e", tmp_path / "x", dtype="int8")


def test_weights_choice_of_load():
    from ddlm.runs import weights_choice

    assert weights_choice() == "ema" and weights_choice("raw") == "raw" and weights_choice(None, False) == "raw"
    assert weights_choice(False) == "raw" and weights_choice(True) == "ema"  # the old positional ema
    assert weights_choice("ema", True) == "ema"
    with pytest.raises(ValueError, match="ema=False contradicts weights='ema'"):
        weights_choice("ema", False)
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw', got 'best'"):
        weights_choice("best")


# ---- one policy for a damaged latest checkpoint (docs/reliability.md) -------------------------------

def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, inside the tensor data
    path.write_bytes(bytes(data))


def _six_steps(tmp_path, name):
    return load_config(None, [f"run_dir={tmp_path / name}", f"data.corpus={tmp_path / 'corpus.txt'}",
                              "data.block_size=16", "model.hidden=32", "model.blocks=1", "model.heads=2",
                              "batch_size=8", "max_steps=6", "eval_every=3", "save_every=3", "eval_batches=2",
                              "optim.warmup_steps=2", "sample_nfe=4", "num_samples=1"])


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "same-size-byte-flip"])
def test_a_damaged_latest_checkpoint_is_reported_the_same_way_everywhere(tmp_path, capsys, damage):
    """Training and sampling both refuse a damaged latest checkpoint with its path, the reason and
    the way out; neither silently uses the previous one. --resume-previous then resumes from step 3
    and ends bit-identically to an uninterrupted run."""
    from ddlm.checkpoint import CheckpointError
    from ddlm.cli import main

    (tmp_path / "corpus.txt").write_text(TEXT)
    train(_six_steps(tmp_path, "full"), progress=False, log=lambda *_: None)
    train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None, stop_at=5)  # steps 3 and 5
    ckpts = tmp_path / "c" / "checkpoints"
    damage(ckpts / "step_000005" / "model.safetensors")
    reason = "bytes, expected" if damage is _truncate else "SHA-256 checksum mismatch"
    with pytest.raises(CheckpointError, match=f"the latest checkpoint of run .* is damaged: .*step_000005/model."
                                              f"safetensors: .*{reason}.*nothing was read from an older checkpoint; to "
                                              "resume from the previous one, step_000003, pass --resume-previous"):
        train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None)
    with pytest.raises(CheckpointError, match=f"{reason}.*to use the previous one, give its folder instead of the "
                                              f"run: {ckpts / 'step_000003'}"):
        load(tmp_path / "c")
    assert main(["sample", str(tmp_path / "c"), "--nfe", "4", "--num-samples", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_000005/model.safetensors" in err[0] and "step_000003" in err[0]
    load(ckpts / "step_000003")  # the hint works
    said = []
    train(_six_steps(tmp_path, "c"), resume="previous", progress=False, log=said.append)
    assert any("moved it aside to" in s and "resuming from step_000003 as asked" in s for s in said)
    assert [p.name for p in ckpts.glob("step_000005.damaged-*")]  # kept for inspection
    for ema in (False, True):
        a, _, _ = load(tmp_path / "full", ema=ema)
        b, _, _ = load(tmp_path / "c", ema=ema)
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name


def test_a_damaged_optimizer_state_still_samples_but_does_not_resume(tmp_path, capsys):
    """Checksums are per file: sampling reads config, tokenizer and weights only."""
    from ddlm.checkpoint import CheckpointError
    from ddlm.cli import main

    (tmp_path / "corpus.txt").write_text(TEXT)
    train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None, stop_at=5)
    _flip(tmp_path / "c" / "checkpoints" / "step_000005" / "trainer.safetensors")
    load(tmp_path / "c")
    assert main(["sample", str(tmp_path / "c"), "--nfe", "4", "--num-samples", "1", "--no-progress"]) == 0
    with pytest.raises(CheckpointError, match="trainer.safetensors: SHA-256 checksum mismatch.*--resume-previous"):
        train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None)


def test_a_damaged_latest_file_is_reported_not_skipped(tmp_path):
    from ddlm.checkpoint import CheckpointError

    (tmp_path / "corpus.txt").write_text(TEXT)
    train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None, stop_at=5)
    (tmp_path / "c" / "checkpoints" / "latest").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(CheckpointError, match="checkpoints/latest: unreadable.*pass --resume-previous"):
        train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None)
    with pytest.raises(CheckpointError, match="checkpoints/latest: unreadable.*give its folder instead of the run"):
        load(tmp_path / "c")
    said = []
    assert train(_six_steps(tmp_path, "c"), resume="previous", progress=False, log=said.append)["step"] == 6
    assert any("resuming from step_000005" in s for s in said)


def test_resuming_with_another_corpus_is_refused_by_name(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    train(_six_steps(tmp_path, "c"), progress=False, log=lambda *_: None, stop_at=3)
    other = tmp_path / "other.txt"
    other.write_text(TEXT)
    cfg = load_config(None, [f"run_dir={tmp_path / 'c'}", f"data.corpus={other}", "data.block_size=16",
                             "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8"])
    with pytest.raises(ValueError, match=f"config key 'data.corpus' is '{other}' now but '.*corpus.txt' in the "
                                         "checkpoint; use a new run_dir"):
        train(cfg, progress=False, log=lambda *_: None)
