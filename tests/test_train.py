import json
import math

import pytest
import torch

import ddlm
from ddlm.config import load_config
from ddlm.models.factory import build_model
from ddlm.runs import load
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


def _cfg(tmp_path, name, **over):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    base = [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", "data.block_size=16", "model.hidden=32",
            "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=6", "eval_every=3", "save_every=3",
            "eval_batches=2", "optim.warmup_steps=2", "log_every=1"]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("process", ["mdm", "udm", "audm", "ar"])
def test_train_runs_logs_and_loads(tmp_path, process):
    cfg = _cfg(tmp_path, process, process=process)
    metrics = train(cfg, progress=False, log=lambda *_: None)
    assert metrics["step"] == 6 and metrics["val_nll"] > 0
    lines = [json.loads(line) for line in (tmp_path / process / "metrics.jsonl").read_text().splitlines()]
    assert any("val_nll" in rec for rec in lines) and any("loss" in rec for rec in lines)
    samples = [json.loads(line) for line in (tmp_path / process / "samples.jsonl").read_text().splitlines()]
    assert samples[-1]["step"] == 6 and len(samples[-1]["samples"]) == 2
    assert all(isinstance(t, str) for t in samples[-1]["samples"])
    model, proc, tok = load(tmp_path / process)
    if process == "ar":
        assert proc is None
        x = model.generate(torch.full((2, 1), tok.bos_id), 16, generator=torch.Generator().manual_seed(0))
    else:
        assert proc.name == process
        x = ddlm.sample(model, proc, 2, 16, 4, prediction=model.prediction, generator=torch.Generator().manual_seed(0))
    assert isinstance(tok.decode(x[0].tolist()), str)


@pytest.mark.parametrize("process,scaling", [("mdm", "noise_level"), ("udm", "none")])
def test_sedd_runs_train_checkpoint_and_load(tmp_path, process, scaling):
    """A score network trained with score entropy (``demo-sedd``'s settings): the checkpoint rebuilds the
    same network, scaling included, and SEDD's samplers draw from it."""
    name = f"sedd-{process}"
    cfg = _cfg(tmp_path, name, process=process, objective="score_entropy", **{"model.output": "score",
                                                                             "model.score_scaling": scaling})
    metrics = train(cfg, progress=False, log=lambda *_: None)
    assert metrics["step"] == 6 and math.isfinite(metrics["val_nll"]) and metrics["val_nll"] > 0
    model, proc, tok = load(tmp_path / name)
    assert model.prediction == "score" and model.score_scaling == scaling
    built = build_model(cfg, tok.vocab_size, tok.bos_id)
    built.load_state_dict(model.state_dict())
    xt = torch.randint(proc.input_vocab_size, (2, 16))
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.equal(model(xt, t), built(xt, t))
    for sampler in ("sedd_euler", "sedd_tweedie", "ancestral"):
        x = ddlm.sample(model, proc, 2, 16, 4, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert isinstance(tok.decode(x[0].tolist()), str) and int(x.max()) < proc.vocab_size
    # the objective reaches the loop: the process's ELBO on the same score network logs other losses (not at
    # step 1, where a scaled network's zero output is a score with the exact mass: the two then agree, §10.2)
    other = _cfg(tmp_path, name + "-elbo", process=process, **{"model.output": "score", "model.score_scaling": scaling})
    train(other, progress=False, log=lambda *_: None, stop_at=2)

    def second_loss(run):
        return json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[1])["loss"]

    assert other.resolved_objective != "score_entropy" and second_loss(name) != second_loss(name + "-elbo")


def test_resume_is_exact(tmp_path):
    full = train(_cfg(tmp_path, "full"), progress=False, log=lambda *_: None)
    train(_cfg(tmp_path, "split"), progress=False, log=lambda *_: None, stop_at=3)
    resumed = train(_cfg(tmp_path, "split"), progress=False, log=lambda *_: None)
    assert resumed["step"] == full["step"] == 6
    for ema in (False, True):
        a, _, _ = load(tmp_path / "full", ema=ema)
        b, _, _ = load(tmp_path / "split", ema=ema)
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    raw, averaged = load(tmp_path / "full", ema=False)[0], load(tmp_path / "full", ema=True)[0]
    assert not torch.equal(raw.net.head.weight, averaged.net.head.weight)  # the EMA is a different model


def test_loss_decreases(tmp_path):
    cfg = _cfg(tmp_path, "learn", max_steps=300, **{"optim.lr": 3e-3, "eval_every": 300, "save_every": 300})
    train(cfg, progress=False, log=lambda *_: None)
    recs = [json.loads(r) for r in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines() if "loss" in r]
    first = sum(r["loss"] for r in recs[:10]) / 10
    last = sum(r["loss"] for r in recs[-10:]) / 10
    assert last < 0.8 * first


BASE = ["data.block_size=16", "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=6",
        "eval_every=3", "save_every=3", "eval_batches=2", "optim.warmup_steps=2", "log_every=1"]


def _free_port() -> int:
    """A TCP port free now (concurrent test runs must not share a fixed rendezvous port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, name, *over):
    """``torchrun --nproc-per-node 2 -m ddlm train`` with _cfg's settings (and ``over``) in run ``name``."""
    import subprocess
    import sys

    port = _free_port()
    args = [f"run_dir={tmp_path / name}", f"data.corpus={tmp_path / 'corpus.txt'}", *BASE, *over]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "ddlm", "train", "-", *args, "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _assert_same_weights(tmp_path, a, b, ema=False):
    p_a, _, _ = load(tmp_path / a, ema=ema)
    p_b, _, _ = load(tmp_path / b, ema=ema)
    for (name, p), q in zip(p_a.state_dict().items(), p_b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("process", ["mdm", "ar"])
def test_torchrun_two_processes_match_one(tmp_path, process):
    """DDP over 2 gloo processes with the same global batch reproduces the single-process run."""
    train(_cfg(tmp_path, "one", process=process), progress=False, log=lambda *_: None)
    _torchrun(tmp_path, "two", f"process={process}")
    _assert_same_weights(tmp_path, "one", "two")


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_across_modes(tmp_path):
    """FSDP over 2 gloo processes (weights, gradients, AdamW state and EMA sharded; gradient
    accumulation) gives the single-process run's weights and EMA; its checkpoints resume on one
    process, and a one-process checkpoint resumes under FSDP, with the same result."""
    from ddlm.runs import set_latest

    over = {"process": "audm", "model.blocks": 2}
    train(_cfg(tmp_path, "one", **over), progress=False, log=lambda *_: None)
    flags = [f"{k}={v}" for k, v in over.items()]
    out = _torchrun(tmp_path, "fsdp", "parallel=fsdp", "grad_accum=2", *flags)
    assert "2 processes (FSDP)" in out.stdout + out.stderr
    for ema in (False, True):
        _assert_same_weights(tmp_path, "one", "fsdp", ema=ema)
    # FSDP's step-3 checkpoint (full tensors) resumed by one process
    import shutil

    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp-then-one")
    ckpts = tmp_path / "fsdp-then-one" / "checkpoints"
    shutil.rmtree(ckpts / "step_000006")
    set_latest(tmp_path / "fsdp-then-one", ckpts / "step_000003")
    train(_cfg(tmp_path, "fsdp-then-one", **over), progress=False, log=lambda *_: None)
    # a one-process checkpoint resumed under FSDP
    train(_cfg(tmp_path, "one-then-fsdp", **over), progress=False, log=lambda *_: None, stop_at=3)
    _torchrun(tmp_path, "one-then-fsdp", "parallel=fsdp", *flags)
    for name in ("fsdp-then-one", "one-then-fsdp"):
        for ema in (False, True):
            _assert_same_weights(tmp_path, "one", name, ema=ema)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    train(_cfg(tmp_path, "big"), progress=False, log=lambda *_: None)
    train(_cfg(tmp_path, "accum", grad_accum=4), progress=False, log=lambda *_: None)
    a, _, _ = load(tmp_path / "big", ema=False)
    b, _, _ = load(tmp_path / "accum", ema=False)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name


def test_resume_refuses_a_different_run_and_never_overwrites(tmp_path):
    train(_cfg(tmp_path, "r"), progress=False, log=lambda *_: None, stop_at=3)
    before = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="config key 'model.hidden' is 64 now but 32 in the checkpoint"):
        train(_cfg(tmp_path, "r", **{"model.hidden": 64}), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="config key 'data.block_size' is 8 now but 16 in the checkpoint"):
        train(_cfg(tmp_path, "r", **{"data.block_size": 8}), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(_cfg(tmp_path, "r"), resume=False, progress=False, log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == before
    # changing only the budget is fine
    assert train(_cfg(tmp_path, "r", max_steps=6), progress=False, log=lambda *_: None)["step"] == 6


def test_corrupt_checkpoint_is_reported(tmp_path):
    from ddlm.checkpoint import CheckpointError

    train(_cfg(tmp_path, "c"), progress=False, log=lambda *_: None, stop_at=3)
    target = next((tmp_path / "c" / "checkpoints").glob("step_*")) / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        train(_cfg(tmp_path, "c"), progress=False, log=lambda *_: None)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(tmp_path / "c")


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_losses(tmp_path):
    import signal
    import subprocess
    import sys

    over = {"max_steps": 120, "save_every": 20, "eval_every": 1000}
    train(_cfg(tmp_path, "ref", **over), progress=False, log=lambda *_: None)
    corpus = tmp_path / "corpus.txt"
    args = [f"run_dir={tmp_path / 'killed'}", f"data.corpus={corpus}", "data.block_size=16", "model.hidden=32",
            "model.blocks=1", "model.heads=2", "batch_size=8", "eval_batches=2", "optim.warmup_steps=2",
            "log_every=1"] + [f"{k}={v}" for k, v in over.items()]
    cmd = [sys.executable, "-m", "ddlm", "train", "-", *args, "--no-progress"]
    # SIGKILL right after the step-40 checkpoint is written, from inside the run (a kill timed from outside
    # raced a fast machine, which could finish all 120 steps first)
    killer = ("import os, signal, sys\nimport ddlm.train as T\nfrom ddlm.cli import main\nsave = T.save_checkpoint\n"
              "def save_then_die(path, *a, step, **k):\n    out = save(path, *a, step=step, **k)\n"
              "    if step == 40:\n        os.kill(os.getpid(), signal.SIGKILL)\n    return out\n"
              "T.save_checkpoint = save_then_die\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", killer, *cmd[3:]], capture_output=True, text=True, timeout=300)
    ckpts = tmp_path / "killed" / "checkpoints"
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (ckpts / "step_000040").exists() and not (ckpts / "step_000060").exists()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # resume
    assert out.returncode == 0, out.stderr[-2000:]

    def losses(name):
        recs = [json.loads(r) for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if "loss" in r}  # the last record of a step wins

    ref, killed = losses("ref"), losses("killed")
    assert sorted(killed) == list(range(1, 121))
    assert all(ref[s] == killed[s] for s in ref), "losses differ after resuming"


def test_sudoku_corpus_trains(tmp_path):
    cfg = load_config("sudoku-mdm", [f"run_dir={tmp_path / 's'}", "data.num_puzzles=40", "model.hidden=32",
                                     "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=2",
                                     "eval_batches=1", "sample_nfe=4", "num_samples=1"])
    assert train(cfg, progress=False, log=lambda *_: None)["step"] == 2


def test_learning_rate_schedule():
    from ddlm.train import lr_lambda

    cfg = load_config(None, ["max_steps=110", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    g = lr_lambda(load_config(None, ["optim.decay=constant", "optim.warmup_steps=0"]))
    assert g(0) == g(500) == 1.0


def test_options_reach_the_run(tmp_path):
    from ddlm.models.factory import build_model
    from ddlm.schedules import CosineSchedule

    cfg = _cfg(tmp_path, "opts", schedule="cosine", **{"model.time_conditioning": False, "keep_checkpoints": 2,
                                                        "save_every": 1})
    model = build_model(cfg, 10)
    assert isinstance(model.process.schedule, CosineSchedule) and not model.net.config.time_conditioning
    train(cfg, progress=False, log=lambda *_: None)
    steps = sorted(p.name for p in (tmp_path / "opts" / "checkpoints").glob("step_*"))
    assert steps == ["step_000005", "step_000006"]  # keep_checkpoints = 2


def test_max_minutes_stops_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, "short", max_steps=100000, max_minutes=0.001)
    metrics = train(cfg, progress=False, log=lambda *_: None)
    assert 1 <= metrics["step"] < 100000 and "val_nll" in metrics
    model, _, _ = load(tmp_path / "short")  # the stop left a loadable checkpoint


class FakeClock:
    """A clock that advances 15 s (a quarter of a minute, exact in binary) at every reading: train reads
    it once when its loop starts and once per step."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return 15.0 * self.calls


def _lrs(run_dir) -> dict:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs if "lr" in r}


def test_time_budget_is_cumulative_and_resume_is_bit_identical(tmp_path):
    quiet = {"progress": False, "log": lambda *_: None}
    over = {"max_steps": 100, "max_minutes": 1.5}
    full = train(_cfg(tmp_path, "full", **over), clock=FakeClock(), **quiet)
    assert full["step"] == 7 and full["train_minutes"] == 1.75  # 0.25 minutes a step, stops once past 1.5
    train(_cfg(tmp_path, "split", **over), clock=FakeClock(), stop_at=3, **quiet)
    resumed = train(_cfg(tmp_path, "split", **over), clock=FakeClock(), **quiet)
    # the budget counts the minutes of both invocations: it stops at the same step, not 7 steps later
    assert resumed["step"] == 7 and resumed["train_minutes"] == 1.75
    for ema in (False, True):
        a, b = load(tmp_path / "full", ema=ema)[0], load(tmp_path / "split", ema=ema)[0]
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    assert {s: r["lr"] for s, r in _lrs(tmp_path / "full").items()} == {
        s: r["lr"] for s, r in _lrs(tmp_path / "split").items()}
    # once spent, running again trains nothing and says so
    lines = []
    again = train(_cfg(tmp_path, "split", **over), clock=FakeClock(), progress=False, log=lines.append)
    assert again["step"] == 7 and any("time budget max_minutes = 1.5 is spent" in line for line in lines)


def test_learning_rate_decays_over_the_time_budget_when_it_ends_the_run(tmp_path):
    quiet = {"progress": False, "log": lambda *_: None}
    over = {"max_steps": 1000, "max_minutes": 1.5, "optim.lr": 1e-3, "optim.min_lr_ratio": 0.1}
    train(_cfg(tmp_path, "timed", **over), clock=FakeClock(), **quiet)
    timed = _lrs(tmp_path / "timed")
    # the lr logged at step s is that of step s + 1, set from the minutes recorded after step s
    assert timed[6]["train_minutes"] == 1.5 and timed[6]["lr"] == pytest.approx(1e-4)  # the time budget is spent
    assert timed[4]["lr"] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 1.0 / 1.5)))
    train(_cfg(tmp_path, "steps", **over, **{"optim.time_decay": False}), clock=FakeClock(), **quiet)
    assert _lrs(tmp_path / "steps")[6]["lr"] > 0.99e-3  # over max_steps only: barely decayed


def test_learning_rate_follows_whichever_budget_ends_first():
    from ddlm.train import lr_lambda

    cfg = load_config(None, ["max_steps=110", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1", "max_minutes=10"])
    used = [0.0]
    f = lr_lambda(cfg, lambda: used[0])
    assert f(60) == pytest.approx(0.55)  # half the steps, no time used
    used[0] = 7.5
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)))  # 75% of the time used
    used[0] = 12.0
    assert f(20) == pytest.approx(0.1) and f(5) == pytest.approx(0.6)  # spent (warm-up is by steps)
    assert lr_lambda(cfg)(60) == pytest.approx(0.55)  # without a clock: steps only
    no_time = load_config(None, ["max_steps=110", "optim.warmup_steps=10", "max_minutes=10", "optim.time_decay=false"])
    assert lr_lambda(no_time, lambda: 12.0)(60) == pytest.approx(0.55)


def test_compile_option_compiles_the_forward_and_keeps_checkpoints(tmp_path, monkeypatch):
    """config key ``compile``: torch.compile wraps the training forward (spied here: compiling is slow on
    CPU); the run's weights keep their names, so the checkpoint loads as usual."""
    calls = []

    def spy(fn, *args, **kwargs):
        calls.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    train(_cfg(tmp_path, "plain", max_steps=2), progress=False, log=lambda *_: None)
    assert calls == []
    train(_cfg(tmp_path, "compiled", max_steps=2, compile="true"), progress=False, log=lambda *_: None)
    assert len(calls) == 1 and getattr(calls[0], "__name__", "") == "forward"
    model, _, _ = load(tmp_path / "compiled")
    assert set(model.state_dict()) == set(load(tmp_path / "plain")[0].state_dict())
