"""Predictor-corrector vs predictor alone on a toy law with the exact model, at equal predictor steps
and at equal NFE (forward passes). Prints TV distance to p_0 with its Monte-Carlo noise level.

    .venv/bin/python bench/corrector_toy.py                # K = 3, L = 3, 100,000 samples
    .venv/bin/python bench/corrector_toy.py --vocab 4 --samples 50000
"""

from __future__ import annotations

import argparse
import sys

import torch

import ddlm
from ddlm import exact


def tv(law, proc, nfe, corrector, samples, seed):
    model = exact.model(law, proc, "loo")
    x = ddlm.sample(model, proc, samples, law.length, nfe, prediction="loo", corrector=corrector,
                    generator=torch.Generator().manual_seed(seed))
    return exact.tv_distance(law, x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=3)
    p.add_argument("--length", type=int, default=3)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--law-seed", type=int, default=7)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    law = exact.random_law(args.vocab, args.length, seed=args.law_seed)
    proc = ddlm.UniformDiffusion(args.vocab, ddlm.LinearSchedule(eps=0.0))
    floor = exact.tv_distance(law, law.sample(args.samples, generator=torch.Generator().manual_seed(1)))
    print(f"K = {args.vocab}, L = {args.length}, {args.samples} samples; TV of {args.samples} iid draws "
          f"from p_0 (noise level): {floor:.4f}")
    print("| predictor steps | corrector | NFE | TV (predictor + corrector) | TV (predictor only, same NFE) "
          "| TV (predictor only, same steps) |")
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        same_steps = tv(law, proc, steps, None, args.samples, 0)
        for sel, k in (("random", 1), ("random", args.length), ("lowest_log_margin", 1)):
            corr = ddlm.GibbsCorrector(sweeps=2, k=k, selection=sel)
            nfe = steps + 2 * (steps - 1)
            with_corr = tv(law, proc, nfe, corr, args.samples, 0)
            same_nfe = tv(law, proc, nfe, None, args.samples, 0)
            print(f"| {steps} | Gibbs(2 sweeps, k={k}, {sel}) | {nfe} | {with_corr:.4f} | {same_nfe:.4f} "
                  f"| {same_steps:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
