"""The command line's error policy (docs/reliability.md): one line that says what to do, never a
traceback (unless --debug or DDLM_DEBUG=1); outputs checked writable before any computing;
architecture mismatches named."""

import os

import pytest
import torch

from ddlm.cli import main
from ddlm.config import load_config
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


def _args(root, name, *over):
    corpus = root / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    return [f"run_dir={root / name}", f"data.corpus={corpus}", "data.block_size=16", "model.hidden=32",
            "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=3", "eval_every=3", "save_every=3",
            "eval_batches=2", "optim.warmup_steps=2", "sample_nfe=4", "num_samples=1", *over]


def _train(root, name, *over):
    train(load_config(None, _args(root, name, *over)), progress=False, log=lambda *_: None)
    return root / name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cli"), "run")


@pytest.fixture(scope="module")
def udm_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cli-udm"), "udm", "process=udm")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line and "batch/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


READ_ONLY_IS_EFFECTIVE = hasattr(os, "geteuid") and os.geteuid() != 0


@pytest.fixture(params=["read-only-folder", "under-a-file"])
def blocked(request, tmp_path):
    """(a folder nothing can be written into, a path below it) by chmod, or a path whose parent is a file
    (root ignores file modes, so there only the second applies)."""
    if request.param == "read-only-folder":
        if not READ_ONLY_IS_EFFECTIVE:
            pytest.skip("running as root: chmod does not stop writes")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder, folder / "out"
        folder.chmod(0o755)
    else:
        (tmp_path / "a-file").write_text("x")
        yield tmp_path / "a-file", tmp_path / "a-file" / "out"


def _never(*_, **__):
    raise AssertionError("computed before checking the output path")


@pytest.mark.parametrize("command", ["eval", "sample", "frontier", "export", "probe", "sudoku", "train"])
def test_an_unwritable_output_fails_before_computing(command, run, udm_run, blocked, capsys, monkeypatch):
    import ddlm.evaluate.bound as bound
    import ddlm.evaluate.frontier as frontier
    import ddlm.evaluate.generate as generate
    import ddlm.evaluate.probe_cli as probe_cli
    import ddlm.evaluate.sudoku as sudoku
    import ddlm.runs as runs
    import ddlm.train as training

    for module, name in [(bound, "nll_bound"), (generate, "generate_samples"), (frontier, "sweep"),
                         (runs, "open_checkpoint"), (probe_cli, "_load_udm_run"), (sudoku, "evaluate_sudoku"),
                         (training, "_train"), (bound, "validation_bound")]:
        monkeypatch.setattr(module, name, _never)
    folder, out = blocked
    argv = {"eval": ["eval", run, "--out", out / "r.json"],
            "sample": ["sample", run, "--out", out / "s.jsonl"],
            "frontier": ["frontier", run, "--out", out],
            "export": ["export", run, out],
            "probe": ["probe", udm_run, "--out", out],
            "sudoku": ["sudoku", run, "--out", out / "r.json"],
            "train": ["train", "-", f"run_dir={out}", "max_steps=1"]}[command]
    assert main([str(a) for a in argv]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"ddlm {command}: error: ") and str(folder) in line
    assert "cannot be written" in line or "cannot be created" in line or "not writable" in line


def test_check_writable_sees_a_read_only_folder(tmp_path, monkeypatch):
    """The permission branch, also when the tests run as root (where chmod does not stop root)."""
    from ddlm._io import check_writable

    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith("ro") and real(p, mode))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PermissionError, match="out 'ro/x/y.json' cannot be written: folder '.*ro' is not writable"):
        check_writable("ro/x/y.json", "out")
    with pytest.raises(PermissionError, match="folder 'ro' cannot be written: folder 'ro' is not writable"):
        check_writable("ro", "folder")  # an existing folder: written into
    check_writable(tmp_path / "new" / "deeper" / "f.json")  # missing folders: the existing ancestor decides


def _mismatched(tmp_path, run):
    """A checkpoint whose config says hidden 64 while its weights are hidden 32 (checksums valid)."""
    from ddlm.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "step_000003")
    config = {**ckpt.config, "model": {**ckpt.config["model"], "hidden": 64}}
    return save_checkpoint(tmp_path / "mismatch", step=3, config=config, tokenizer=ckpt.tokenizer, model=ckpt.model,
                           ema=ckpt.ema, optimizer=ckpt.optimizer, scheduler=ckpt.scheduler, rng=ckpt.rng,
                           metrics=ckpt.metrics)


def test_an_architecture_mismatch_is_named(tmp_path, run, capsys):
    from ddlm.checkpoint import CheckpointError
    from ddlm.runs import load

    folder = _mismatched(tmp_path, run)
    with pytest.raises(CheckpointError, match=r"ema.safetensors: tensor '[\w.]+' has shape \([\d, ]*32[\d, ]*\), but "
                                              r"the architecture of its config expects \([\d, ]*64[\d, ]*\)"):
        load(folder)
    for command in (["sample", folder, "--nfe", "4"], ["eval", folder]):
        assert main([str(a) for a in command]) == 2
        line = _one_line(capsys)
        assert "has shape" in line and "do not describe the same architecture" in line
    # resuming a run whose checkpoint does not fit its own config: named too
    (tmp_path / "resume" / "checkpoints").mkdir(parents=True)
    os.replace(folder, tmp_path / "resume" / "checkpoints" / "step_000003")
    cfg = load_config(None, _args(run.parent, "run", "model.hidden=64", f"run_dir={tmp_path / 'resume'}"))
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* has shape"):
        train(cfg, progress=False, log=lambda *_: None)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(run, capsys, monkeypatch):
    import ddlm.evaluate.generate as generate

    def boom(*_, **__):
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(generate, "generate_samples", boom)
    assert main(["sample", str(run), "--nfe", "4"]) == 1
    line = _one_line(capsys)
    assert line == ("ddlm sample: error: RuntimeError: boom with a second line (unexpected; --debug or DDLM_DEBUG=1 "
                    "shows the traceback; please report it if it looks like a bug)")
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "sample", str(run), "--nfe", "4"])
    monkeypatch.setenv("DDLM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["sample", str(run), "--nfe", "4"])


@pytest.mark.parametrize("error,code,expected", [
    (PermissionError(13, "Permission denied", "/x/y"), 1,
     "Permission denied (/x/y); check the permissions of that path, or choose another path"),
    (OSError(28, "No space left on device", "/x"), 1, "No space left on device (/x); the disk is full"),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), 1, "out of memory (OutOfMemoryError)"),
])
def test_system_errors_say_what_to_do(run, capsys, monkeypatch, error, code, expected):
    import ddlm.evaluate.generate as generate

    def fail(*_, **__):
        raise error

    monkeypatch.setattr(generate, "generate_samples", fail)
    assert main(["sample", str(run), "--nfe", "4"]) == code
    assert expected in _one_line(capsys)


def test_an_unreadable_checkpoint_file_is_a_checkpoint_error(tmp_path, run, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run / "checkpoints" / "step_000003", copy)
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors").mkdir()  # read_bytes raises IsADirectoryError (an OSError)
    (copy / "ema.safetensors").unlink()
    (copy / "ema.safetensors").mkdir()
    assert main(["sample", str(copy), "--nfe", "4"]) == 2
    assert "safetensors: cannot be read (Is a directory)" in _one_line(capsys)


def test_sampling_never_reads_the_corpus(tmp_path, capsys, monkeypatch):
    """A run's saved config may name any path as data.corpus: loading a run to sample reads only the
    checkpoint (config, tokenizer, weights)."""
    import ddlm.data.corpora as corpora

    run = _train(tmp_path, "own")
    (tmp_path / "corpus.txt").write_text("changed")  # whatever the file holds now
    monkeypatch.setattr(corpora, "load_corpus", _never)
    monkeypatch.setattr(corpora, "_read_text", _never)
    assert main(["sample", str(run), "--nfe", "4", "--num-samples", "1", "--no-progress"]) == 0
    assert "--- sample 0 ---" in capsys.readouterr().out


def test_train_resume_previous_flag(tmp_path, capsys):
    """`ddlm train --resume-previous` moves a damaged latest checkpoint aside; without it: one line, exit 2."""
    args = ["train", "-", *_args(tmp_path, "r", "max_steps=6"), "--no-progress"]
    _train(tmp_path, "r", "max_steps=6")  # checkpoints at 3 and 6
    folder = tmp_path / "r" / "checkpoints" / "step_000006"
    (folder / "ema.safetensors").write_bytes((folder / "ema.safetensors").read_bytes()[:-50])
    assert main(args) == 2
    line = _one_line(capsys)
    assert "step_000006/ema.safetensors" in line and "pass --resume-previous" in line
    assert main(args + ["--no-resume", "--resume-previous"]) == 2
    assert "not both" in _one_line(capsys)
    assert main(args + ["--resume-previous"]) == 0
    assert "resuming from step_000003 as asked (--resume-previous)" in capsys.readouterr().out
    assert list((tmp_path / "r" / "checkpoints").glob("step_000006.damaged-*"))
    assert (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == "step_000006"  # retrained
