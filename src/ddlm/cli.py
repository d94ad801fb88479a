"""The ``ddlm`` command line."""

from __future__ import annotations

import argparse
import sys


def _toy(args) -> int:
    from . import demo

    demo.run(vocab_size=args.vocab_size, length=args.length, alpha=args.alpha, seed=args.seed)
    return 0


def _demo(args) -> int:
    from . import demo

    demo.train_demo(minutes=args.minutes, run_dir=args.run_dir)
    return 0


def _export(args) -> int:
    from .runs import export

    path = export(args.run, args.out, description=args.description, train_minutes=args.train_minutes,
                  dtype=args.dtype)
    print(f"exported {path}")
    return 0


def _train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(None if args.config == "-" else args.config, args.overrides)
    metrics = train(cfg, resume=not args.no_resume, progress=not args.no_progress)
    print(f"finished at step {metrics['step']}: validation bound {metrics.get('val_nll', float('nan')):.4f} "
          f"nats/token, unigram entropy {metrics['unigram_entropy']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train the demo model for a few minutes, then sample from it and from the "
                                    "reference")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget in minutes (default 4)")
    p.add_argument("--run-dir", default="runs/demo-mdm", help="where the demo run is written")
    p.set_defaults(func=_demo)
    p = sub.add_parser("toy", help="exact-oracle demonstration on a random toy law")
    p.add_argument("--vocab-size", type=int, default=3, help="K, number of tokens (default 3)")
    p.add_argument("--length", type=int, default=3, help="L, sequence length (default 3)")
    p.add_argument("--alpha", type=float, default=0.5, help="clean-signal fraction at the noisy sequence")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_toy)
    p = sub.add_parser("export", help="write a run's EMA weights, config and tokenizer as a small checkpoint")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("out", help="new checkpoint folder")
    p.add_argument("--description", default="", help="free text stored with the metrics")
    p.add_argument("--train-minutes", type=float, default=None, help="record the training time (if the run did not)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="storage type of the weights (half precision halves the size; loaded as float32)")
    p.set_defaults(func=_export)
    p = sub.add_parser("train", help="train a model from a YAML config (resumes the run if it has checkpoints)")
    p.add_argument("config", help="a packaged config name (e.g. demo-mdm) or a YAML file; - for the defaults")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4 max_steps=500")
    p.add_argument("--no-resume", action="store_true",
                   help="do not resume: fail if run_dir already has checkpoints (never overwrites them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)
    from .evaluate import bound, frontier, generate, probe_cli, sudoku

    for module in (generate, bound, frontier, probe_cli, sudoku):  # ddlm sample, eval, frontier, probe, sudoku
        module.add_command(sub)
    from .data import prepare_corpus  # ddlm prepare

    prepare_corpus.add_command(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"ddlm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
