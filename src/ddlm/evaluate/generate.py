"""Samples from a run: ``ddlm sample``.

Conditions. A prompt is encoded with the run's tokenizer, preceded by BOS (as every document starts
in the packed training stream; ``bos=False`` leaves it out), placed at the start of the sequence and
held fixed for the whole trajectory (``prompt``/``prompt_mask`` of ``ddlm.sample``). An infilling
template is text with gaps written ``[[N]]`` (N free tokens): ``"ROMEO:[[40]]JULIET:"`` fixes BOS,
"ROMEO:", then leaves 40 tokens free, then fixes "JULIET:"; the positions after the template are free
too. Infilling needs a diffusion run; an autoregressive run takes prefix prompts only.

Each condition (or the unconditional draw) gets ``num_samples`` samples from one
``ddlm.evaluate.options.draw`` call with the given settings, so a condition's samples do not depend
on the other conditions.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from .options import SamplerSettings, add_sampler_options, check_ar_args, draw, resolve_sampler, settings_from_args

GAP = re.compile(r"\[\[(\d+)\]\]")


def parse_infill(template: str) -> list[str | int]:
    """Split an infilling template into fixed text pieces (str) and gap sizes (int), in order.

    Raises:
        ValueError: a gap of 0 tokens, or no gap at all.
    """
    parts: list[str | int] = []
    pos = 0
    for m in GAP.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        n = int(m.group(1))
        if n < 1:
            raise ValueError(f"infill template {template!r}: gap [[{n}]] must hold at least 1 token")
        parts.append(n)
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if not any(isinstance(p, int) for p in parts):
        raise ValueError(f"infill template {template!r} has no gap; write gaps as [[N]] (N free tokens), "
                         "or use a prompt for prefix prompting")
    return parts


def condition_tokens(tokenizer, length: int, *, prompt: str | None = None, infill: str | None = None,
                     bos: bool = True) -> tuple[Tensor, Tensor] | tuple[None, None]:
    """``(prompt, prompt_mask)`` of shape (length,) for a prefix prompt or an infilling template
    (``(None, None)`` for neither).

    Raises:
        ValueError: both given; text the tokenizer cannot encode; more fixed tokens than ``length``.
    """
    if prompt is not None and infill is not None:
        raise ValueError("give a prompt or an infill template, not both")
    if prompt is None and infill is None:
        return None, None
    ids: list[int] = [tokenizer.bos_id] if bos else []
    fixed: list[bool] = [True] * len(ids)
    for part in parse_infill(infill) if infill is not None else [prompt]:
        if isinstance(part, int):
            ids += [0] * part
            fixed += [False] * part
        else:
            enc = tokenizer.encode(part)
            ids += enc
            fixed += [True] * len(enc)
    what = f"prompt {prompt!r}" if prompt is not None else f"infill template {infill!r}"
    if len(ids) > length or (prompt is not None and len(ids) >= length):
        raise ValueError(f"{what} takes {len(ids)} tokens{' with BOS' if bos else ''}, too many for samples of "
                         f"length {length}" + (" (nothing left to generate)" if len(ids) == length else ""))
    if not any(fixed):
        raise ValueError(f"{what} fixes no token (empty prompt without BOS)")
    pad = length - len(ids)
    return (torch.tensor(ids + [0] * pad, dtype=torch.long), torch.tensor(fixed + [False] * pad))


def generate_samples(run, settings: SamplerSettings, *, num_samples: int = 4, length: int | None = None,
                     prompts: list[str] | None = None, infills: list[str] | None = None, bos: bool = True,
                     batch_size: int = 32, device=None, progress: bool = False) -> list[dict]:
    """Draw and decode samples of a loaded run (``ddlm.evaluate.results.load_run``).

    Args:
        run: a ``LoadedRun``.
        settings: sampler settings.
        num_samples: samples per condition (per prompt, per template, or unconditional).
        length: tokens per sample (default: the run's block size, the longest it accepts).
        prompts: prefix prompts (text), or None.
        infills: infilling templates (``[[N]]`` gaps), or None.
        bos: start prompts and templates with BOS.
        batch_size, device, progress: as for :func:`ddlm.evaluate.options.draw`.

    Returns:
        One record per sample: ``index``, ``condition`` (index of the prompt/template, or None),
        ``prompt``, ``infill``, ``text`` (decoded, BOS/EOS dropped), ``completion`` (the text after
        a prefix prompt, else None), ``ids``, and ``settings`` (run, sampler settings, resolved
        sampler, length, batch size, bos, ddlm version): everything needed to remake the sample.

    Raises:
        ValueError: both prompts and infills, a length beyond the run's block size, bad prompts,
            inapplicable options.
    """
    from .. import __version__

    if prompts is not None and infills is not None:
        raise ValueError("give prompts or infill templates, not both")
    max_len = run.sample_length
    length = max_len if length is None else length
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= max_len:
        what = "its context, BOS included" if run.autoregressive else "the run's block size"
        raise ValueError(f"length must be an integer in [1, {max_len}] ({what}), got {length!r}")
    if run.autoregressive and length < 2:
        raise ValueError(f"length must be >= 2 for an autoregressive run (BOS + 1 token), got {length}")
    conditions = ([(p, None) for p in prompts] if prompts is not None else
                  [(None, t) for t in infills] if infills is not None else [(None, None)])
    if not conditions:
        raise ValueError("prompts/infills is an empty list, expected at least one")
    common = {"command": "sample", "run": run.info, "sampler": settings.to_dict(),
              "resolved_sampler": "ancestral" if run.autoregressive else resolve_sampler(settings, run.process),
              "process": run.info["process"], "num_samples": num_samples, "length": length,
              "batch_size": batch_size, "bos": bos, "ddlm_version": __version__}
    tok, records = run.tokenizer, []
    for j, (prompt, infill) in enumerate(conditions):
        p, m = condition_tokens(tok, length, prompt=prompt, infill=infill, bos=bos)
        x = draw(run.model, run.process, tok, settings, num_samples, length, prompt=p, prompt_mask=m,
                 batch_size=batch_size, device=device, progress=progress)
        if p is not None and not bool((x[:, m] == p[m]).all()):
            raise RuntimeError("a fixed prompt token changed during sampling (a bug in the sampler)")
        n_prefix = int(m.sum()) if prompt is not None else None
        for row in x.tolist():
            records.append({
                "index": len(records), "condition": None if p is None else j, "prompt": prompt, "infill": infill,
                "text": tok.decode(row), "completion": tok.decode(row[n_prefix:]) if n_prefix is not None else None,
                "ids": row, "settings": dict(common, prompt=prompt, infill=infill)})
    return records


def _read_prompt_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    try:
        lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:  # the offset only: error messages never quote a file's content
        raise ValueError(f"prompt file {path!r} is not UTF-8 text (an invalid byte at offset {e.start})") from None
    if not lines:
        raise ValueError(f"prompt file {path!r} holds no prompt (one prompt per non-empty line)")
    return lines


def _handler(args) -> int:
    from .results import check_out, load_run, write_jsonl

    check_out(args.out, args.overwrite)
    settings = settings_from_args(args)
    run = load_run(args.run, device=args.device, weights=args.weights, tokenizer=args.tokenizer)
    if run.autoregressive:
        check_ar_args(args)
    prompts = _read_prompt_file(args.prompt_file) if args.prompt_file is not None else args.prompt
    records = generate_samples(run, settings, num_samples=args.num_samples, length=args.length, prompts=prompts,
                               infills=args.infill, bos=not args.no_bos, batch_size=args.batch_size,
                               progress=not args.no_progress)
    for r in records:
        head = f"--- sample {r['index']}" + (f" (prompt {r['condition']})" if r["condition"] is not None else "")
        print(head + " ---")
        print(r["text"])
    if args.out is not None:
        write_jsonl(args.out, records, overwrite=args.overwrite)
        print(f"wrote {len(records)} samples to {args.out}")
    return 0


def add_command(subparsers) -> None:
    """Register ``ddlm sample``."""
    from .results import add_model_options

    p = subparsers.add_parser(
        "sample", help="draw samples from a run (unconditional, prefix prompts, infilling) and print them",
        description="Draw samples from a run's EMA model with any sampler; prompts are held fixed at the start "
                    "of the sequence; infill templates fix text around [[N]] gaps of N free tokens.")
    p.add_argument("run", help="run folder (its latest checkpoint), checkpoint folder, or released checkpoint (a "
                               "Hugging Face style folder, a Lightning .ckpt, a SEDD checkpoint.pth)")
    add_sampler_options(p)
    add_model_options(p)
    p.add_argument("--num-samples", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--length", type=int, default=None, help="tokens per sample (default: the run's block size)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--prompt", nargs="+", default=None, metavar="TEXT", help="prefix prompt(s)")
    cond.add_argument("--prompt-file", default=None, metavar="FILE", help="one prefix prompt per non-empty line")
    cond.add_argument("--infill", nargs="+", default=None, metavar="TEMPLATE",
                      help="infilling template(s): text with [[N]] gaps of N free tokens (diffusion runs)")
    p.add_argument("--no-bos", action="store_true", help="do not start prompts/templates with BOS")
    p.add_argument("--out", default=None, metavar="FILE.jsonl", help="write one JSON record per sample")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=32, help="samples per sampling call (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler)
