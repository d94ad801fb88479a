"""Every objective against a plain cross-entropy on the same logits, forward + backward, at K = 50,257.

    .venv/bin/python bench/losses.py                       # 1,024 positions (batch 4 x L 256), 1 thread
    .venv/bin/python bench/losses.py --rows 2048 --threads 2

Rows: ``torch.nn.functional.cross_entropy`` (the reference cost), ddlm's objectives through
``ddlm.losses.compute`` with the network output each is trained with, and a direct implementation of
the UDM plug-in ELBO's formula (docs/maths.md §4.1 written out over the vocabulary with autograd, as
``tests/test_losses.py`` states it) so that the fused kernel's gain is visible. Times are medians of
``--repeats`` calls (after a warm-up), alternating the cases so that load changes hit all of them;
"x CE" is the ratio to the cross-entropy's median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddlm import losses
from ddlm.processes import get_process


def direct_plugin_elbo(logits, x0, xt, alpha, dalpha):
    """The UDM plug-in ELBO as written: every R_th(y), R(y) and term materialised (autograd backward)."""
    logr = torch.log_softmax(logits, -1)
    k = logr.shape[-1]
    a = alpha.unsqueeze(-1)
    xbar_th = k * a * logr.exp() + 1 - a
    r_th = xbar_th / xbar_th.gather(-1, xt.unsqueeze(-1))
    xbar = k * a * torch.nn.functional.one_hot(x0, k).to(logits.dtype) + 1 - a
    r = xbar / xbar.gather(-1, xt.unsqueeze(-1))
    term = (r_th - r - r * torch.log(r_th / r)).masked_fill(torch.nn.functional.one_hot(xt, k).bool(), 0.0)
    return -dalpha / alpha * term.sum(-1) / k


def cases(k: int, rows: int, g: torch.Generator):
    """(name, fn(logits) -> per-token losses) for every case, on one shared batch."""
    b = 4
    length = rows // b
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x0 = torch.randint(k, (b, length), generator=g)
    out = [("cross-entropy (torch.nn.functional)",
            lambda z: torch.nn.functional.cross_entropy(z.reshape(-1, k), x0.reshape(-1), reduction="none"))]
    for name, proc, output, objective in (
        ("UDM plug-in ELBO, LOO output (fused)", "udm", "loo", "udm_elbo"),
        ("UDM plug-in ELBO, denoiser output (fused)", "udm", "denoiser", "udm_elbo"),
        ("UDM cross-entropy, LOO output", "udm", "loo", "cross_entropy"),
        ("UDM cross-entropy, denoiser output", "udm", "denoiser", "cross_entropy"),
        ("UDM max-coupling ELBO", "udm", "denoiser", "max_coupling_elbo"),
        ("MDM ELBO", "mdm", "denoiser", "mdm_elbo"),
        ("MDM masked cross-entropy", "mdm", "denoiser", "masked_cross_entropy"),
        ("AUDM ELBO", "audm", "posterior", "audm_elbo"),
    ):
        process = get_process(proc, k)
        xt, noise = process.corrupt(x0, t, generator=g)
        alpha = process.alpha(t).unsqueeze(-1).float()
        dalpha = process.dalpha(t).unsqueeze(-1).float()
        out.append((name, lambda z, o=objective, p=output, xt=xt, n=noise, a=alpha, d=dalpha: losses.compute(
            o, z, output=p, x0=x0, xt=xt, alpha=a, dalpha=d, noise=n)))
        if objective == "udm_elbo" and output == "loo":
            out.append(("UDM plug-in ELBO, direct formula (autograd)",
                        lambda z, xt=xt, a=alpha, d=dalpha: direct_plugin_elbo(z, x0, xt, a.expand(xt.shape), d)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--rows", type=int, default=1024, help="positions (batch 4 x rows/4)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-direct", action="store_true", help="leave out the direct formula (slow, memory-heavy)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(4, args.rows // 4, args.vocab, generator=g)).requires_grad_(True)
    todo = [c for c in cases(args.vocab, args.rows, g) if not (args.skip_direct and "direct" in c[0])]
    times: dict = {name: {"fwd": [], "both": []} for name, _ in todo}

    def once(fn, backward: bool) -> float:
        logits.grad = None
        start = time.perf_counter()
        if backward:
            fn(logits).sum().backward()
        else:
            with torch.no_grad():
                fn(logits).sum()
        return time.perf_counter() - start

    for _, fn in todo:  # warm-up
        once(fn, True)
    for _ in range(args.repeats):
        for name, fn in todo:
            times[name]["fwd"].append(once(fn, False))
            times[name]["both"].append(once(fn, True))
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    ce = med[todo[0][0]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); K {args.vocab}, {args.rows} positions, "
          f"float32 logits; median of {args.repeats}")
    print("| objective | forward (ms) | x CE | forward + backward (ms) | x CE |")
    print("|---|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {1e3 * m['fwd']:.0f} | {m['fwd'] / ce['fwd']:.2f} | {1e3 * m['both']:.0f} | "
              f"{m['both'] / ce['both']:.2f} |")


if __name__ == "__main__":
    main()
