"""Training-step benchmark: tokens/s of a full step (forward, loss, backward, AdamW) on the tiny
preset for each objective, the loss's share of the step, and the memory the loss materialises.

    .venv/bin/python bench/training.py                       # char vocabulary (78), L = 64, batch 32
    .venv/bin/python bench/training.py --memory-vocab 50257  # loss memory at a GPT-2 vocabulary

The loss's share is (full step - step with a trivial loss on the same logits) / full step. Its
memory is measured in a fresh subprocess: the rise of peak RSS while computing the loss and its
backward on fixed logits, in units of one (B, L, K) float32 tensor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from ddlm import losses
from ddlm.models.diffusion import DiffusionModel

CASES = [  # (name, process, network output, objective)
    ("MDM ELBO", "mdm", "denoiser", "mdm_elbo"),
    ("MDM cross-entropy", "mdm", "denoiser", "cross_entropy"),
    ("UDM plug-in ELBO, LOO output", "udm", "loo", "udm_elbo"),
    ("UDM plug-in ELBO, denoiser output", "udm", "denoiser", "udm_elbo"),
    ("UDM cross-entropy, LOO output", "udm", "loo", "cross_entropy"),
    ("UDM cross-entropy, denoiser output", "udm", "denoiser", "cross_entropy"),
    ("UDM max-coupling ELBO", "udm", "denoiser", "max_coupling_elbo"),
    ("AUDM ELBO", "audm", "posterior", "audm_elbo"),
]


def _batch(process, vocab, batch, length, g):
    x0 = torch.randint(vocab, (batch, length), generator=g)
    t = torch.rand(batch, generator=g, dtype=torch.float64) * 0.999 + 0.001
    xt, noise = process.corrupt(x0, t, generator=g)
    alpha = process.alpha(t).unsqueeze(-1).float()
    dalpha = process.dalpha(t).unsqueeze(-1).float()
    return x0, xt, noise, t, alpha, dalpha


def step_times(case, vocab, batch, length, steps):
    name, proc_name, output, objective = case
    torch.manual_seed(0)
    model = DiffusionModel.build(proc_name, vocab, length, preset="tiny", output=output, hidden=128, blocks=4, heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    data = [_batch(model.process, vocab, batch, length, g) for _ in range(steps)]

    def step(batch, trivial: bool) -> float:
        x0, xt, noise, t, alpha, dalpha = batch
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(xt, t, noise)
        if trivial:
            loss = logits.float().mean()
        else:
            loss = losses.compute(objective, logits, output=output, x0=x0, xt=xt, alpha=alpha, dalpha=dalpha,
                                  noise=noise).mean()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for batch in data[:2]:  # warm-up
        step(batch, False), step(batch, True)
    # full and trivial steps alternate on the same batches, so that load drifts hit both alike
    full, trivial = [], []
    for batch in data:
        full.append(step(batch, False))
        trivial.append(step(batch, True))
    return statistics.median(full), statistics.median(trivial)


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux: "5" > /proc/self/clear_refs).
    ru_maxrss cannot be used: Linux carries it across fork + exec, so a child started by a large
    parent would report the parent's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    """Peak resident set size of this process since the last reset, in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def _memory_child(index, vocab, batch, length):
    name, proc_name, output, objective = CASES[index]
    from ddlm.processes import get_process

    process = get_process(proc_name, vocab)
    g = torch.Generator().manual_seed(0)
    x0, xt, noise, t, alpha, dalpha = _batch(process, vocab, batch, length, g)
    logits = torch.empty(batch, length, vocab).normal_(generator=g).requires_grad_(True)
    small = torch.randn(2, 3, vocab, requires_grad=True)  # warm up code paths on a tiny problem
    xs = xt[:2, :3]
    losses.compute(objective, small, output=output, x0=x0[:2, :3], xt=xs, alpha=alpha[:2], dalpha=dalpha[:2],
                   noise=None if noise is None else noise[:2, :3]).sum().backward()
    _reset_peak_rss()
    base = _peak_rss()
    loss = losses.compute(objective, logits, output=output, x0=x0, xt=xt, alpha=alpha, dalpha=dalpha, noise=noise)
    loss.mean().backward()
    peak = _peak_rss()
    # the gradient itself is one (B, L, K) tensor the caller needs; count what the loss adds beyond it
    return (peak - base) / (logits.numel() * 4) - 1.0


def memory(index, vocab, batch, length) -> float:
    code = (f"import sys, json; sys.path.insert(0, 'bench'); import training as b; "
            f"print(json.dumps(b._memory_child({index}, {vocab}, {batch}, {length})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=78, help="vocabulary of the speed runs (default: the char demo's)")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--memory-vocab", type=int, default=50257)
    p.add_argument("--memory-batch", type=int, default=4)
    p.add_argument("--memory-length", type=int, default=128)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; speed: DiT tiny (hidden 128, 4 blocks), "
          f"vocab {args.vocab}, L {args.length}, batch {args.batch}; memory: vocab {args.memory_vocab}, "
          f"L {args.memory_length}, batch {args.memory_batch}")
    header = f"| {'objective':<36} | {'tokens/s':>9} | {'loss share':>10} | {'loss memory, (B,L,K) tensors':>28} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for i, case in enumerate(CASES):
        full, trivial = step_times(case, args.vocab, args.batch, args.length, args.steps)
        share = max(0.0, (full - trivial) / full)
        mem = memory(i, args.memory_vocab, args.memory_batch, args.memory_length)
        print(f"| {case[0]:<36} | {args.batch * args.length / full:9.0f} | {100 * share:9.1f}% | {mem:28.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
