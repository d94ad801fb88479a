"""The ``ddlm`` command line.

Start-up is kept short: this module imports neither torch nor the evaluation code. The commands of
``ddlm.evaluate`` register their own arguments (``add_command`` in each module); their module is
imported only when that command runs (or its ``--help`` is asked for), and ``ddlm --help`` lists them
from :data:`EXTERNAL` (``tests/test_cli.py`` checks that its help lines are the modules' own).

Errors (docs/reliability.md): every error ends the command with one line on stderr,
``ddlm COMMAND: error: ...``, that says what went wrong and what to do; no traceback unless
``--debug`` is given or ``DDLM_DEBUG=1`` is set. Exit status: 2 for bad input (a config value, an
argument, a missing or damaged file), 1 for other failures (a diverged run, a locked run folder, a
file that cannot be written, anything unexpected), 128 + the signal's number for a run stopped by
SIGINT (130) or SIGTERM (143).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

#: command -> (the module whose ``add_command`` registers it, its one-line help)
EXTERNAL = {
    "sample": ("ddlm.evaluate.generate", "draw samples from a run (unconditional, prefix prompts, infilling) and "
                                         "print them"),
    "eval": ("ddlm.evaluate.bound", "NLL bound of a run (nats/token, bits/token, bits/char, perplexity) on held-out "
                                    "text"),
    "frontier": ("ddlm.evaluate.frontier", "generative frontier sweep: gen-PPL under a judge against sample entropy "
                                           "(CSV + PNG)"),
    "probe": ("ddlm.evaluate.probe_cli", "LOO sensitivity probe of uniform-diffusion runs along the sampling "
                                         "trajectory"),
    "sudoku": ("ddlm.evaluate.sudoku", "solve generated test puzzles with a Sudoku run (clues fixed as a prompt)"),
    "prepare": ("ddlm.data.prepare_corpus", "tokenize a corpus of any size into token shards for training and "
                                            "evaluation"),
}


def _toy(args) -> int:
    from . import demo

    demo.run(vocab_size=args.vocab_size, length=args.length, alpha=args.alpha, seed=args.seed,
             progress=not args.no_progress)
    return 0


def _demo(args) -> int:
    from . import demo

    minutes = demo.DEMO_MINUTES if args.minutes is None else args.minutes
    demo.train_demo(minutes=minutes, run_dir=args.run_dir, progress=not args.no_progress)
    return 0


def _export(args) -> int:
    if args.format == "hf":
        from .pretrained.export_hf import export_hf

        path = export_hf(args.run, args.out, dtype=args.dtype, description=args.description,
                         train_minutes=args.train_minutes)
    else:
        from .runs import export

        path = export(args.run, args.out, description=args.description, train_minutes=args.train_minutes,
                      dtype=args.dtype)
    print(f"exported {path}")
    return 0


def _train(args) -> int:
    from .bound import final_bound_line
    from .config import load_config
    from .train import train

    if args.no_resume and args.resume_previous:
        raise ValueError("give --no-resume or --resume-previous, not both")
    cfg = load_config(None if args.config == "-" else args.config, args.overrides)
    metrics = train(cfg, resume="previous" if args.resume_previous else not args.no_resume,
                    progress=not args.no_progress)
    print(final_bound_line(metrics, cfg))
    return 0


def _config(args) -> int:
    from .config_docs import describe_text, markdown

    if args.markdown:
        if args.name is not None or args.overrides:
            raise ValueError("--markdown documents the defaults of every key; give no config NAME or overrides")
        sys.stdout.write(markdown())
        return 0
    sys.stdout.write(describe_text(args.name, args.overrides))
    return 0


def _builtin_commands(sub) -> None:
    p = sub.add_parser("demo", help="train the demo model for a few minutes, then sample from it and from the "
                                    "reference")
    p.add_argument("--minutes", type=float, default=None,
                   help="minutes of training to add to the run (default 3.5); a rerun trains on")
    p.add_argument("--run-dir", default="runs/demo-mdm", help="where the demo run is written")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    p = sub.add_parser("toy", help="exact-oracle demonstration on a random toy law")
    p.add_argument("--vocab-size", type=int, default=3, help="K, number of tokens (default 3)")
    p.add_argument("--length", type=int, default=3, help="L, sequence length (default 3)")
    p.add_argument("--alpha", type=float, default=0.5, help="clean-signal fraction at the noisy sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_toy)
    p = sub.add_parser("export", help="write a run's EMA weights, config and tokenizer as a small checkpoint")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("out", help="new checkpoint folder")
    p.add_argument("--description", default="", help="free text stored with the metrics")
    p.add_argument("--train-minutes", type=float, default=None, help="record the training time (if the run did not)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="storage type of the weights (half precision halves the size; loaded as float32)")
    p.add_argument("--format", default="ddlm", choices=("ddlm", "hf"),
                   help="ddlm: a ddlm checkpoint folder (default); hf: a Hugging Face style folder in the layout of "
                        "the released MDLM-family checkpoints, with a config.json stating its conventions "
                        "(docs/pretrained.md)")
    p.set_defaults(func=_export)
    p = sub.add_parser("train", help="train a model from a YAML config (resumes the run if it has checkpoints)",
                       description="Train (or resume) a run. Every config key, its type, default and meaning: "
                                   "`ddlm config NAME` or docs/configs.md.")
    p.add_argument("config", help="a packaged config name (e.g. demo-mdm) or a YAML file; - for the defaults")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4 max_steps=500 "
                                                "(every key: ddlm config NAME)")
    p.add_argument("--no-resume", action="store_true",
                   help="do not resume: fail if run_dir already has checkpoints (never overwrites them)")
    p.add_argument("--resume-previous", action="store_true",
                   help="if the latest checkpoint is damaged, move it aside and resume from the newest older one that "
                        "verifies (without this, a damaged latest checkpoint is an error)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)
    p = sub.add_parser("config", help="every training config key with its type, value, default and meaning",
                       description="Print every key of a training config (a packaged config such as demo-mdm, a "
                                   "YAML file, or the defaults) with its type, its value after the overrides, its "
                                   "default, its meaning and, where they are fixed, its allowed values.")
    p.add_argument("name", nargs="?", default=None,
                   help="a packaged config name or a YAML file (default: the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides to apply first, as for ddlm train")
    p.add_argument("--markdown", action="store_true", help="print the reference of every key as Markdown "
                                                           "(docs/configs.md is this output)")
    p.set_defaults(func=_config)


def build_parser(load: list[str] | tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The parser. ``load``: the commands of :data:`EXTERNAL` whose arguments are defined (their
    modules are imported); None defines them all. The others are listed with their help line only."""
    parser = argparse.ArgumentParser(prog="ddlm", description="Discrete diffusion language models.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment variable DDLM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _builtin_commands(sub)
    for name, (module, help_line) in EXTERNAL.items():
        if load is None or name in load:
            importlib.import_module(module).add_command(sub)  # ddlm sample, eval, frontier, probe, sudoku
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _one_line(text, limit: int = 600) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + " ..."


_OS_HINTS = {errno.EACCES: "check the permissions of that path, or choose another path",
             errno.EPERM: "check the permissions of that path, or choose another path",
             errno.EROFS: "that file system is read-only: choose another path",
             errno.ENOSPC: "the disk is full: free some space or choose a folder on another disk",
             getattr(errno, "EDQUOT", -1): "the disk quota is exceeded: free some space or choose another folder",
             errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
             errno.EISDIR: "that path is a folder, a file was expected: choose another path"}


def error_message(e: BaseException) -> tuple[str, int]:
    """The one line (without the ``ddlm COMMAND: error:`` prefix) and the exit status of an error."""
    from .runlock import RunInUseError
    from .stopping import Interrupted, NonFiniteError

    if isinstance(e, Interrupted):
        return _one_line(e.message), e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)", 130
    if isinstance(e, (ValueError, TypeError, FileNotFoundError, FileExistsError)):  # CheckpointError too
        return _one_line(e), 2
    if isinstance(e, (RunInUseError, NonFiniteError, ImportError)):  # messages that say what to do
        return _one_line(e), 1
    if isinstance(e, OSError):
        if e.strerror is None:  # one of ours: a full sentence
            return _one_line(e), 1
        where = f" ({e.filename})" if e.filename is not None else ""
        hint = _OS_HINTS.get(e.errno, "check that path and the disk")
        return _one_line(f"{e.strerror}{where}; {hint}"), 1
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return _one_line(f"out of memory ({type(e).__name__}); lower batch_size or raise grad_accum, or "
                         "use a smaller model or --batch-size", 300), 1
    return (f"{type(e).__name__}: {_one_line(e, 300)} (unexpected; --debug or DDLM_DEBUG=1 shows the traceback; "
            "please report it if it looks like a bug)"), 1


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    args = build_parser(load=[command] if command in EXTERNAL else []).parse_args(argv)
    debug = args.debug or os.environ.get("DDLM_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `ddlm sample ... | head`: not an error; keep the exit flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (Exception, KeyboardInterrupt) as e:
        if debug:
            raise
        message, code = error_message(e)
        if code < 128 or os.environ.get("RANK", "0") == "0":  # a stop is reported once under torchrun
            print(f"ddlm {args.command}: error: {message}" if code < 128 else f"ddlm {args.command}: {message}",
                  file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
