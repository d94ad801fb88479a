"""The ``ddlm`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from . import demo

    demo.run(vocab_size=args.vocab_size, length=args.length, alpha=args.alpha, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="exact-oracle demonstration on a random toy law")
    p.add_argument("--vocab-size", type=int, default=3, help="K, number of tokens (default 3)")
    p.add_argument("--length", type=int, default=3, help="L, sequence length (default 3)")
    p.add_argument("--alpha", type=float, default=0.5, help="clean-signal fraction at the noisy sequence")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"ddlm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
