"""Stopping a training early: SIGINT/SIGTERM at a step boundary (checkpoint consistency), a second
signal, NaN/Inf (docs/reliability.md)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddlm.checkpoint import load_checkpoint
from ddlm.config import load_config
from ddlm.runs import load
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3
BASE = ["data.block_size=16", "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=6",
        "eval_every=3", "save_every=3", "eval_batches=2", "optim.warmup_steps=2", "log_every=1"]


def _args(tmp_path, name, **over):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    return [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", *BASE, *[f"{k}={v}" for k, v in over.items()]]


def _cfg(tmp_path, name, **over):
    return load_config(None, _args(tmp_path, name, **over))


def _quiet(*_):
    pass


def _assert_identical(tmp_path, a, b):
    for ema in (False, True):
        p_a, _, _ = load(tmp_path / a, ema=ema)
        p_b, _, _ = load(tmp_path / b, ema=ema)
        for (name, p), q in zip(p_a.state_dict().items(), p_b.state_dict().values(), strict=True):
            assert torch.equal(p, q), f"{name} differs (ema={ema})"


def _wrap_adamw_step(monkeypatch, at_call: int, action):
    """Run ``action`` right after the real AdamW.step of call number ``at_call``: the weights hold the
    new step while the scheduler, the EMA and the step counter do not yet (the dangerous window)."""
    real = torch.optim.AdamW.step
    calls = [0]

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == at_call:
            action()
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def _send_sigint():
    os.kill(os.getpid(), signal.SIGINT)


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("action", [_send_sigint, _raise_keyboard_interrupt], ids=["sigint", "keyboardinterrupt"])
def test_ctrl_c_inside_the_optimizer_step_resumes_bit_identically(tmp_path, monkeypatch, action):
    """SIGINT arriving inside optimizer.step() is honoured at the step boundary (a checkpoint of step 5
    holding step 5's weights, scheduler and EMA); a KeyboardInterrupt raised there saves nothing (the
    step-3 checkpoint stands). Either way the resumed run ends with the uninterrupted run's weights."""
    train(_cfg(tmp_path, "full"), progress=False, log=_quiet)
    _wrap_adamw_step(monkeypatch, 5, action)
    with pytest.raises(KeyboardInterrupt) as info:
        train(_cfg(tmp_path, "cut"), progress=False, log=_quiet)
    monkeypatch.undo()
    latest = (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip()
    resumed = train(_cfg(tmp_path, "cut"), progress=False, log=_quiet)
    assert resumed["step"] == 6
    _assert_identical(tmp_path, "full", "cut")
    from ddlm.stopping import Interrupted

    err = info.value
    assert isinstance(err, Interrupted) and err.signum == signal.SIGINT and err.exit_code == 130
    if action is _send_sigint:
        assert err.step == 5 and latest == "step_000005" and err.checkpoint.name == "step_000005"
        assert "stopped by SIGINT at step 5" in str(err)
    else:
        assert latest == "step_000003" and err.checkpoint is None
        assert "nothing more was saved" in str(err) and "step_000003, stands" in str(err)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_second_signal_stops_at_once_without_saving(tmp_path, monkeypatch):
    """The first SIGTERM is a request; a second one (here during the same step) interrupts at once."""
    def twice():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    _wrap_adamw_step(monkeypatch, 4, twice)
    with pytest.raises(KeyboardInterrupt, match="interrupted at once"):
        train(_cfg(tmp_path, "twice"), progress=False, log=_quiet)
    assert (tmp_path / "twice" / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert not (tmp_path / "twice" / "train.lock").exists()


def test_sigterm_in_process_saves_at_the_boundary(tmp_path, monkeypatch):
    _wrap_adamw_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    from ddlm.stopping import Interrupted

    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 2") as info:
        train(_cfg(tmp_path, "term"), progress=False, log=_quiet)
    assert info.value.exit_code == 143 and info.value.checkpoint.name == "step_000002"
    assert load_checkpoint(info.value.checkpoint).step == 2
    assert not (tmp_path / "term" / "train.lock").exists()


def test_a_signal_during_setup_stops_before_the_first_step_without_saving(tmp_path, monkeypatch):
    import ddlm.train as training
    from ddlm.stopping import Interrupted

    real = training.prepare_data

    def prepare_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(training, "prepare_data", prepare_then_signal)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 0: no checkpoint has been saved yet") as info:
        train(_cfg(tmp_path, "setup"), progress=False, log=_quiet)
    assert info.value.checkpoint is None and not (tmp_path / "setup" / "checkpoints").exists()
    monkeypatch.undo()
    train(_cfg(tmp_path, "setup"), progress=False, log=_quiet, stop_at=3)
    monkeypatch.setattr(training, "prepare_data", prepare_then_signal)
    with pytest.raises(Interrupted, match="at step 3: the last checkpoint, .*step_000003, stands") as info:
        train(_cfg(tmp_path, "setup"), progress=False, log=_quiet)
    assert info.value.checkpoint.name == "step_000003"


def _strict_json(line: str):
    def refuse(token):
        raise ValueError(f"bare {token} in metrics.jsonl")

    return json.loads(line, parse_constant=refuse)


def test_nan_stops_the_run_keeps_finite_checkpoints_and_valid_json(tmp_path):
    """optim.lr = 1e8: the loss overflows within a few steps. The run stops at the first non-finite
    loss with a named error, before applying that step; every checkpoint on disk is finite, and
    metrics.jsonl is valid JSON (the non-finite values as strings)."""
    from ddlm.stopping import NonFiniteError

    cfg = _cfg(tmp_path, "nan", **{"optim.lr": 1e8, "save_every": 1, "max_steps": 50, "eval_every": 1000})
    with pytest.raises(NonFiniteError, match=r"step \d+: the training loss or gradient norm is not finite: loss nan"
                                             r".*optim.lr = 1e\+08.*the last checkpoint, .*step_\d+, stands"):
        train(cfg, progress=False, log=_quiet)
    records = [_strict_json(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["loss"] == "nan" and last["stopped"] and last["step"] < 50
    steps = sorted((tmp_path / "nan" / "checkpoints").glob("step_*"))
    assert steps and int(steps[-1].name[5:]) == last["step"] - 1  # nothing saved after the last finite step
    for folder in steps:
        ckpt = load_checkpoint(folder)
        for state in (ckpt.model, ckpt.ema):
            assert all(torch.isfinite(t).all() for t in state.values()), folder
    assert not (tmp_path / "nan" / "train.lock").exists()
    # the diverged model's outputs are NaN: `ddlm sample` refuses instead of printing empty text
    from ddlm.cli import main

    assert main(["sample", str(tmp_path / "nan"), "--num-samples", "1", "--nfe", "4", "--no-progress"]) == 1


def test_sample_refuses_non_finite_weights(tmp_path, capsys):
    from ddlm.checkpoint import save_checkpoint
    from ddlm.cli import main

    train(_cfg(tmp_path, "ok", max_steps=3), progress=False, log=_quiet)
    ckpt = load_checkpoint(tmp_path / "ok" / "checkpoints" / "step_000003")
    ema = dict(ckpt.ema)
    name = next(iter(ema))
    ema[name] = ema[name].clone().fill_(float("nan"))
    save_checkpoint(tmp_path / "nanweights", step=3, config=ckpt.config, tokenizer=ckpt.tokenizer, model=ckpt.model,
                    ema=ema)
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "nanweights"), "--num-samples", "1", "--nfe", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"tensor {name!r} holds NaN or infinite values" in err and err.count("\n") == 1


def test_a_resumed_run_takes_the_new_learning_rate(tmp_path):
    """optim.* may change on resume (the hint after a NaN says so): the saved optimizer state used to
    bring back the first invocation's learning rate silently."""
    from ddlm.train import lr_lambda

    train(_cfg(tmp_path, "lr"), progress=False, log=_quiet, stop_at=3)
    cfg = _cfg(tmp_path, "lr", **{"optim.lr": 0.004, "optim.weight_decay": 0.01})
    train(cfg, progress=False, log=_quiet)
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "lr" / "metrics.jsonl").read_text().splitlines())
           if "lr" in r}
    f = lr_lambda(cfg)
    assert lrs[3] == pytest.approx(1e-3 * f(3)) and lrs[4] == pytest.approx(0.004 * f(4))
    # unchanged values resume bit-identically (also covered by test_train.test_resume_is_exact)
    train(_cfg(tmp_path, "a"), progress=False, log=_quiet)
    train(_cfg(tmp_path, "b"), progress=False, log=_quiet, stop_at=2)
    train(_cfg(tmp_path, "b"), progress=False, log=_quiet)
    _assert_identical(tmp_path, "a", "b")


def _ddlm(*args, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-m", "ddlm", *args], env=env, **popen)


def _wait_for_step(metrics, step: int, proc, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for _ in metrics.open()) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"training did not reach step {step} (exit status {proc.poll()})")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes_bit_identically(tmp_path):
    over = {"max_steps": 150, "save_every": 1000, "eval_every": 1000}
    train(_cfg(tmp_path, "ref", **over), progress=False, log=_quiet)
    args = ["train", "-", *_args(tmp_path, "killed", **over), "--no-progress"]
    proc = _ddlm(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(tmp_path / "killed" / "metrics.jsonl", 40, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("ddlm train: stopped by SIGTERM at step ") and "run the same command to resume" in line
    stopped = int(line.split("at step ")[1].split(":")[0])
    assert 40 <= stopped < 150
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:06d}"
    assert not (tmp_path / "killed" / "train.lock").exists()
    resume = _ddlm(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = resume.communicate(timeout=300)
    assert resume.returncode == 0, err[-2000:]
    assert f"resuming at step {stopped}" in out + err
    _assert_identical(tmp_path, "ref", "killed")


@pytest.mark.slow
def test_sigterm_under_torchrun_every_rank_stops_at_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to its workers; they agree on the step (any rank's request stops all),
    rank 0 saves, and the resumed run ends where the uninterrupted one does."""
    over = {"max_steps": 120, "save_every": 1000, "eval_every": 1000}
    train(_cfg(tmp_path, "one", **over), progress=False, log=_quiet)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "ddlm", "train", "-", *_args(tmp_path, "two", **over), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(tmp_path / "two" / "metrics.jsonl", 30, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stops = [line for line in err.splitlines() if "ddlm train: stopped by SIGTERM at step" in line]
    assert len(stops) == 1, err[-3000:]  # reported once (rank 0)
    stopped = int(stops[0].split("at step ")[1].split(":")[0])
    assert (tmp_path / "two" / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:06d}"
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / f"step_{stopped:06d}").step == stopped
    cmd[cmd.index("29531")] = "29533"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for ema in (False, True):
        a, _, _ = load(tmp_path / "one", ema=ema)
        b, _, _ = load(tmp_path / "two", ema=ema)
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name
