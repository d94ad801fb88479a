"""Sampler overhead benchmark: the time and memory a sampling step costs beyond the model's forward pass.

A stub model returns fixed random logits (no compute), so everything measured is the sampler's own
work: normalising, converting between views, choosing components and drawing tokens. It is reported
as a fraction of one forward pass of the DiT `small` preset at the same shape.

    .venv/bin/python bench/sampling.py                  # GPT-2 vocabulary, L = 128, batch 16
    .venv/bin/python bench/sampling.py --vocab 1000 --steps 8 --no-dit   # a quick look

Peak memory is measured in a fresh subprocess per configuration: the logits (1x) plus the rise
of ru_maxrss above the baseline taken once the logits exist, as a multiple of the logits' size.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import ddlm

CONFIGS = [  # (name, process, prediction, sampler, corrector)
    ("MDM ancestral", "mdm", "denoiser", "ancestral", None),
    ("MDM remdm (cap)", "mdm", "denoiser", "remdm", None),
    ("MDM confidence", "mdm", "denoiser", "confidence", None),
    ("UDM ancestral, LOO model", "udm", "loo", "ancestral", None),
    ("UDM ancestral, denoiser model", "udm", "denoiser", "ancestral", None),
    ("UDM x0 (D3PM)", "udm", "denoiser", "x0", None),
    ("UDM max coupling", "udm", "denoiser", "max_coupling", None),
    ("UDM ancestral + Gibbs(2, k=12)", "udm", "loo", "ancestral", "gibbs"),
    ("AUDM carry-over", "audm", "posterior", "ancestral", None),
    ("AUDM reaudm", "audm", "posterior", "reaudm", None),
]


def make_process(kind: str, vocab: int):
    from ddlm.processes import get_process

    return get_process(kind, vocab)


def stub_model(batch: int, length: int, vocab: int):
    logits = torch.empty(batch, length, vocab).normal_(generator=torch.Generator().manual_seed(0))

    def model(xt, t, noise=None):
        return logits if xt.shape[0] == batch else logits[: xt.shape[0]]

    return model, logits


def time_config(cfg, batch, length, vocab, steps, repeats):
    name, kind, pred, sampler, corr = cfg
    proc = make_process(kind, vocab)
    model, _ = stub_model(batch, length, vocab)
    corrector = ddlm.GibbsCorrector(sweeps=2, k=12) if corr else None
    nfe = steps if corrector is None else steps + 2 * (steps - 1)
    times = []
    ddlm.sample(model, proc, batch, length, 2, prediction=pred, sampler=sampler)  # warm-up
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        _, info = ddlm.sample(model, proc, batch, length, nfe, prediction=pred, sampler=sampler,
                              corrector=corrector, generator=g, return_info=True)
        times.append((time.perf_counter() - start) / info.nfe)
    return statistics.median(times)


def peak_memory(index, batch, length, vocab, steps) -> float:
    """Run one configuration in a subprocess; return the step's peak memory (logits included) as a multiple
    of the logits."""
    code = (
        "import sys, json; sys.path.insert(0, 'bench'); import sampling as b; "
        f"print(json.dumps(b._memory_child({index}, {batch}, {length}, {vocab}, {steps})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_child(index, batch, length, vocab, steps):
    cfg = CONFIGS[index]
    _, kind, pred, sampler, corr = cfg
    proc = make_process(kind, vocab)
    model, logits = stub_model(batch, length, vocab)
    corrector = ddlm.GibbsCorrector(sweeps=2, k=12) if corr else None
    # warm up allocator and code paths on a tiny problem, then take the baseline
    ddlm.sample(stub_model(2, 4, vocab)[0], proc, 2, 4, 2, prediction=pred, sampler=sampler)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ddlm.sample(model, proc, batch, length, steps, prediction=pred, sampler=sampler, corrector=corrector,
                generator=torch.Generator().manual_seed(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # the step's peak: the logits the model returned plus everything the sampler allocates
    return 1.0 + (peak - base) / (logits.numel() * logits.element_size())


def dit_forward_time(batch, length, vocab, repeats) -> float:
    from ddlm.models import DiT, DiTConfig

    net = DiT(DiTConfig.preset("small", vocab + 1, vocab, length)).eval()
    xt = torch.randint(vocab, (batch, length))
    sigma = torch.full((batch,), 0.5)
    times = []
    with torch.inference_mode():
        net(xt, sigma)
        for _ in range(repeats):
            start = time.perf_counter()
            net(xt, sigma)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=16, help="predictor steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-dit", action="store_true", help="skip the DiT small forward timing")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocab {args.vocab}, L {args.length}, "
          f"batch {args.batch}, {args.steps} steps, median of {args.repeats}")
    dit = None if args.no_dit else dit_forward_time(args.batch, args.length, args.vocab, args.repeats)
    if dit is not None:
        print(f"DiT small forward pass: {dit * 1e3:.0f} ms")
    header = f"| {'sampler':<32} | {'ms / step':>9} | {'% of DiT small':>14} | {'step peak / logits':>18} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for i, cfg in enumerate(CONFIGS):
        t = time_config(cfg, args.batch, args.length, args.vocab, args.steps, args.repeats)
        frac = f"{100 * t / dit:.1f}%" if dit else "-"
        steps = min(args.steps, 4)
        mem = "-" if args.no_memory else f"{peak_memory(i, args.batch, args.length, args.vocab, steps):.2f}x"
        print(f"| {cfg[0]:<32} | {t * 1e3:9.1f} | {frac:>14} | {mem:>18} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
