"""The run-folder lock: one training per run_dir, a clear message, the stale-lock rule, release on
every exit path (docs/reliability.md)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ddlm.config import load_config
from ddlm.runlock import LOCK_NAME, RunInUseError, acquire
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3
BASE = ["data.block_size=16", "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "eval_batches=2",
        "optim.warmup_steps=2", "log_every=1"]


def _args(tmp_path, name, *over):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    return [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", *BASE, *over]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_with_the_folder_and_the_holder(tmp_path):
    run = tmp_path / "run"
    lock = acquire(run, log=lambda *_: None)
    holder = json.loads((run / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with pytest.raises(RunInUseError, match=f"run_dir '{run}' is in use by another training \\(pid {os.getpid()} "
                                            f"on host '{socket.gethostname()}', started .*delete {run / LOCK_NAME}"):
        acquire(run, log=lambda *_: None)
    lock.release()
    assert not (run / LOCK_NAME).exists()
    lock.release()  # idempotent
    with acquire(run, log=lambda *_: None):  # free again
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "then"}))
    said = []
    with acquire(run, log=said.append):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"taking over the lock of pid {dead}" in said[0] and "no longer running" in said[0]


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "then"}))
    with pytest.raises(RunInUseError, match="pid 1 on host 'elsewhere.example'"):
        acquire(run, log=lambda *_: None)
    assert json.loads((run / LOCK_NAME).read_text())["host"] == "elsewhere.example"  # left alone


def test_without_flock_the_pid_rule_decides(tmp_path, monkeypatch):
    import ddlm.runlock as runlock

    monkeypatch.setattr(runlock, "fcntl", None)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):  # alive: held
        acquire(run, log=lambda *_: None)
    (run / LOCK_NAME).write_text("{not json")
    with pytest.raises(RunInUseError, match="still writing its lock file"):  # unreadable: never taken over
        acquire(run, log=lambda *_: None)
    (run / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}))
    with acquire(run, log=lambda *_: None):  # dead on this host: stale
        pass


def test_training_on_a_locked_folder_fails_before_touching_it(tmp_path):
    cfg = load_config(None, _args(tmp_path, "busy", "max_steps=2"))
    with acquire(tmp_path / "busy", log=lambda *_: None):
        with pytest.raises(RunInUseError, match="busy' is in use by another training"):
            train(cfg, progress=False, log=lambda *_: None)
        assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [LOCK_NAME]


def test_the_lock_is_released_on_errors_and_a_new_empty_folder_removed(tmp_path):
    cfg = load_config(None, _args(tmp_path, "new", "max_steps=2", f"data.corpus={tmp_path / 'missing.txt'}"))
    with pytest.raises(FileNotFoundError, match="corpus path not found"):
        train(cfg, progress=False, log=lambda *_: None)
    assert not (tmp_path / "new").exists()  # created for the lock, nothing else written: removed
    train(load_config(None, _args(tmp_path, "ok", "max_steps=2")), progress=False, log=lambda *_: None)
    assert (tmp_path / "ok" / "checkpoints").is_dir() and not (tmp_path / "ok" / LOCK_NAME).exists()


def test_an_unwritable_run_dir_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = load_config(None, _args(tmp_path, "file/run", "max_steps=2"))
    with pytest.raises(PermissionError, match="run_dir '.*file/run' cannot be created"):
        train(cfg, progress=False, log=lambda *_: None)


def _start(tmp_path, name):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    args = _args(tmp_path, name, "max_steps=100000", "save_every=100000", "eval_every=100000")
    return subprocess.Popen([sys.executable, "-m", "ddlm", "train", "-", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 3.0], ids=["together", "3s-apart"])
def test_two_trainings_on_one_folder(tmp_path, delay):
    """Started together or 3 s apart, exactly one trains; the other fails at once with one line naming
    the folder and the holder; the holder's metrics are one process's (no interleaving)."""
    first = _start(tmp_path, "shared")
    time.sleep(delay)
    second = _start(tmp_path, "shared")
    procs = [first, second]
    try:
        deadline = time.time() + 240
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = procs[1 - procs.index(loser)]
        _, err = loser.communicate(timeout=60)
        assert loser.returncode == 1, err[-2000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ddlm train: error: run_dir ")
        assert f"'{tmp_path / 'shared'}' is in use by another training (pid {winner.pid} on host" in lines[0]
        metrics = tmp_path / "shared" / "metrics.jsonl"
        deadline = time.time() + 120
        while (not metrics.exists() or metrics.stat().st_size == 0) and time.time() < deadline:
            time.sleep(0.05)
        winner.send_signal(signal.SIGTERM)
        _, err = winner.communicate(timeout=120)
        assert winner.returncode == 143, err[-2000:]
    finally:
        for p in procs:
            p.kill()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer
    assert not (tmp_path / "shared" / LOCK_NAME).exists()
