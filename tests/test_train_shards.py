"""Training from prepared shards (data.corpus=DIR): exact resume, the corpus fingerprint in checkpoints,
the paper-scale configs at reduced width under torchrun (DDP over gloo, checkpoint, resume), memory
independent of the corpus size, and ddlm eval on a prepared folder naming its convention and split."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ddlm.checkpoint import load_checkpoint
from ddlm.config import load_config
from ddlm.data.prepare_corpus import prepare_corpus
from ddlm.runs import latest_checkpoint, load
from ddlm.train import train

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from _corpus import documents, write_jsonl, write_paragraphs  # noqa: E402

SMALL = ["model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "eval_batches=2",
         "optim.warmup_steps=1", "log_every=1", "num_samples=1", "sample_nfe=4"]


def _prepare(tmp_path, name="p", n=120, **kw):
    if not (tmp_path / "c.txt").exists():
        write_paragraphs(tmp_path / "c.txt", documents(n))
    kw = {"tokenizer": "char", "split": "last:10", "shard_tokens": 500, "progress": False, "log": lambda *_: None, **kw}
    prepare_corpus(tmp_path / "c.txt", tmp_path / name, **kw)
    return tmp_path / name


def _cfg(tmp_path, run, corpus, *over):
    return load_config(None, [f"run_dir={tmp_path / run}", f"data.corpus={corpus}", "data.block_size=16",
                              "data.tokenizer=char", "max_steps=6", "eval_every=3", "save_every=3", *SMALL, *over])


def _same_weights(a, b, exact=True):
    for ema in (False, True):
        pa, pb = load(a, ema=ema)[0].state_dict(), load(b, ema=ema)[0].state_dict()
        for (name, p), q in zip(pa.items(), pb.values(), strict=True):
            assert (torch.equal(p, q) if exact else torch.allclose(p, q, atol=1e-5, rtol=1e-4)), name


@pytest.mark.parametrize("convention", ["wrap", "window", "pad"])
def test_resume_on_shards_is_exact(tmp_path, convention):
    corpus = _prepare(tmp_path, convention=convention, block_size=16 if convention == "pad" else None)
    full = train(_cfg(tmp_path, "full", corpus), progress=False, log=lambda *_: None)
    train(_cfg(tmp_path, "split", corpus), progress=False, log=lambda *_: None, stop_at=3)
    resumed = train(_cfg(tmp_path, "split", corpus), progress=False, log=lambda *_: None)
    assert resumed["step"] == full["step"] == 6 and resumed["val_nll"] == full["val_nll"]
    _same_weights(tmp_path / "full", tmp_path / "split")
    data = load_checkpoint(latest_checkpoint(tmp_path / "full")).data
    assert data["step"] == 6 and len(data["corpus_fingerprint"]) == 64
    named = json.loads((tmp_path / "full" / "data.json").read_text())  # what the validation bound is measured on
    assert named["convention"] == convention and named["split"] == "last:10" and named["split_part"] == "val"


def test_resume_refuses_a_corpus_prepared_again_differently(tmp_path):
    corpus = _prepare(tmp_path)
    train(_cfg(tmp_path, "r", corpus), progress=False, log=lambda *_: None, stop_at=3)
    import shutil

    shutil.rmtree(corpus)
    _prepare(tmp_path, split="last:20")
    with pytest.raises(ValueError, match="has fingerprint .* now but .* when the checkpoint was saved"):
        train(_cfg(tmp_path, "r", corpus), progress=False, log=lambda *_: None)


def test_eval_on_a_prepared_folder_names_convention_and_split(tmp_path, capsys):
    from ddlm.cli import main

    corpus = _prepare(tmp_path, tokenizer="gpt2")
    train(_cfg(tmp_path, "r", corpus, "max_steps=2", "data.tokenizer=gpt2"), progress=False, log=lambda *_: None)
    assert main(["eval", str(tmp_path / "r"), "--out", str(tmp_path / "own.json"), "--no-progress"]) == 0
    assert "convention wrap, split last:10" in capsys.readouterr().out
    own = json.loads((tmp_path / "own.json").read_text())["data"]
    assert own["convention"] == "wrap" and own["split"] == "last:10" and own["split_part"] == "val"
    # a zero-shot set prepared with its preset: every document is evaluated (split none)
    write_jsonl(tmp_path / "ptb.jsonl", [d.replace("1,234.5", "N") for d in documents(20, seed=5)], field="sentence")
    prepare_corpus(tmp_path / "ptb.jsonl", tmp_path / "ptb", tokenizer="gpt2", preset="ptb", progress=False,
                   log=lambda *_: None)
    assert main(["eval", str(tmp_path / "r"), "--data", str(tmp_path / "ptb"), "--out", str(tmp_path / "z.json"),
                 "--no-progress"]) == 0
    zero = json.loads((tmp_path / "z.json").read_text())
    assert zero["data"]["split"] == "none" and zero["data"]["split_part"] == "all" and zero["data"]["preset"] == "ptb"
    assert zero["data"]["detokenizer"] == "ptb" and zero["nats_per_token"] > 0
    # a folder made with another tokenizer is refused by name
    prepare_corpus(tmp_path / "ptb.jsonl", tmp_path / "ptb-char", tokenizer="char", preset="ptb", progress=False,
                   log=lambda *_: None)
    assert main(["eval", str(tmp_path / "r"), "--data", str(tmp_path / "ptb-char"), "--no-progress"]) == 2
    assert "the run's tokenizer is gpt2" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "ddlm", "train", config, *args, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", ["owt-mdm-small", "owt-udm-small", "lm1b-mdm-small"])
def test_paper_config_runs_on_shards_under_torchrun_and_resumes(tmp_path, config):
    """The packaged config at reduced width on a small prepared GPT-2 corpus: 2 gloo processes for 2
    steps, a second torchrun resumes to 4; the result matches one uninterrupted process."""
    pad = config.startswith("lm1b")
    write_jsonl(tmp_path / "c.jsonl", documents(60))
    prepare_corpus(tmp_path / "c.jsonl", tmp_path / "p", tokenizer="gpt2", split="last:6", shard_tokens=700,
                   convention="pad" if pad else None, block_size=32 if pad else None, progress=False,
                   log=lambda *_: None)
    over = [f"data.corpus={tmp_path / 'p'}", "data.tokenizer=gpt2", "data.block_size=32", "eval_every=2",
            "save_every=2", "optim.decay=constant", *SMALL]
    _torchrun(config, f"run_dir={tmp_path / 'ddp'}", "max_steps=2", *over)
    out = _torchrun(config, f"run_dir={tmp_path / 'ddp'}", "max_steps=4", *over)
    assert "resuming at step 2" in out.stdout + out.stderr and "2 processes (DDP)" in out.stdout + out.stderr
    train(load_config(config, [f"run_dir={tmp_path / 'one'}", "max_steps=4", *over]), progress=False,
          log=lambda *_: None)
    _same_weights(tmp_path / "one", tmp_path / "ddp", exact=False)
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["model"]["preset"] == "small" and cfg["data"]["corpus"] == str(tmp_path / "p")


_RSS_SCRIPT = """
import json, sys
from ddlm.config import load_config
from ddlm.train import train
cfg = load_config(None, sys.argv[2:])
train(cfg, progress=False, log=lambda *_: None)
peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({"peak_kb": int(peak)}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_training_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak RSS of a few training steps on a prepared corpus of N and of 4N tokens (N about 4M: the
    blocks in memory as int64 would take 32 MB and 128 MB)."""
    peaks = {}
    base = "\n".join(documents(2000, long_every=0)) + "\n"
    for name, n in (("n", 1), ("4n", 4)):
        (tmp_path / f"{name}.txt").write_text(base * (22 * n))
        prepare_corpus(tmp_path / f"{name}.txt", tmp_path / name, tokenizer="char", unit="line", split="last:100",
                       progress=False, log=lambda *_: None)
        args = [f"run_dir={tmp_path / ('run' + name)}", f"data.corpus={tmp_path / name}", "data.block_size=64",
                "max_steps=3", "eval_every=3", "save_every=3", *SMALL]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, "-", *args], capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_kb"] / 1024
        meta = json.loads((tmp_path / name / "ddlm-data.json").read_text())
        peaks[name + "_tokens"] = meta["tokens"]
    assert peaks["4n_tokens"] > 3.5 * peaks["n_tokens"] > 3.5 * 3e6
    assert abs(peaks["4n"] - peaks["n"]) < 20, peaks  # MB; holding the tokens as int64 would add ~100 MB
