"""The NLL bound of a run on held-out text (MATH.md section 6): ``ddlm eval``.

The estimator is the training loop's own ``ddlm.bound.validation_bound``: for a diffusion model,
the Monte-Carlo ELBO of the process (``mdm_elbo``, ``udm_elbo`` or ``audm_elbo``; for a network that
outputs the concrete score, SEDD's score entropy ``score_entropy``, docs/maths.md §10) with times
antithetic and stratified over each batch, t = t_min + (1 - t_min) ((U + j/B) mod 1), token-weighted;
for the autoregressive baseline, its exact NLL per predicted token. Here it is called one batch at a
time, batch ``b`` with the seed ``batch_seed(seed, b)``, so that a progress bar can follow and every
per-batch value is kept. The standard error is that of the mean of the per-batch values (it contains
both the Monte-Carlo noise of t and x_t and the spread of the text across batches).

Units. nats/token is the mean loss per scored token (every position of a block for diffusion,
positions 1..L-1 for the autoregressive model). Bits per character = total nats / total characters
of the decoded text of the scored tokens / ln 2, where the text is decoded with the run's tokenizer
(BOS/EOS decode to nothing, so for a character tokenizer it is bits/token times tokens/characters,
slightly above bits/token; their nats are charged to the characters). Perplexity = exp(nats/token).

Every result names its data (``data``): the corpus, the convention that made its blocks (``packed``
for ddlm's in-memory corpora, or a prepared folder's ``wrap``, ``window`` or ``pad``) and the split.

With the run's own validation split, the bound uses the run's ``t_min`` and schedule exactly as the
validation numbers in ``metrics.jsonl`` (which leave out the prior term at t = 1 and the interval
[0, t_min]; both are negligible for eps = t_min = 1e-3). With ``eps = t_min = 0`` and an exact model
the estimator is unbiased for -log p_0 per token (tested with ``ddlm.exact``).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from .._checks import check_tokens
from ..bound import validation_bound
from ..config import is_autoregressive
from .metrics import bound_summary
from .options import batch_seed


class CallableModel(nn.Module):
    """Any ``model(xt, t, noise=None) -> logits`` (e.g. ``ddlm.exact.model``) with the attributes the
    bound and ``draw`` need: ``process``, ``output`` (= ``prediction``) and a device.

    Args:
        fn: the callable.
        process: its process.
        output: what it predicts ("denoiser", "loo", "score", "posterior").
        device: where its inputs go.
    """

    def __init__(self, fn, process, output: str, device: str | torch.device = "cpu"):
        super().__init__()
        self.fn, self.process, self.output = fn, process, output
        self._anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    @property
    def prediction(self) -> str:
        return self.output

    def forward(self, xt: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.fn(xt, t) if noise is None else self.fn(xt, t, noise)


def _check_blocks(blocks: Tensor, vocab_size: int | None) -> None:
    from ..data.conventions import BlockSet

    if isinstance(blocks, BlockSet):  # a prepared corpus: its ids were checked against its tokenizer on opening
        return
    if not isinstance(blocks, Tensor) or blocks.dim() != 2 or blocks.dtype != torch.long or blocks.numel() == 0:
        got = (f"shape {tuple(blocks.shape)} dtype {blocks.dtype}" if isinstance(blocks, Tensor)
               else type(blocks).__name__)
        raise ValueError(f"blocks must be a non-empty (N, L) int64 tensor, got {got}")
    if vocab_size is not None:
        check_tokens("blocks", blocks, vocab_size)


def model_bound(model, blocks: Tensor, *, batch_size: int = 32, num_batches: int | None = None, seed: int = 0,
                t_min: float = 0.0, tokenizer=None, progress: bool = False) -> dict:
    """NLL bound (nats/token) of a model on token blocks, with its standard error and every unit.

    Args:
        model: a ``DiffusionModel`` (or a :class:`CallableModel`), or an ``ARTransformer`` (exact NLL).
        blocks: (N, L) int64 held-out blocks; batch ``b`` scores rows ``b*B .. (b+1)*B - 1`` (mod N).
        batch_size: B, rows per batch.
        num_batches: batches to average (default: ceil(N / B), every block scored at least once;
            at least 2 so that a standard error exists).
        seed: seed of the Monte-Carlo draws (times and corruption); batch b uses ``batch_seed(seed, b)``.
        t_min: lower end of the times, as in training (``cfg.t_min``).
        tokenizer: decodes the scored tokens to count characters (bits/char); None leaves it out.
        progress: progress bar over batches.

    Returns:
        :func:`ddlm.evaluate.metrics.bound_summary` entries plus ``estimator`` ("elbo" or
        "exact_nll"), ``per_batch`` (nats/token of each batch), ``num_batches``, ``batch_size``,
        ``seed``, ``t_min``, ``blocks`` (N), ``block_size``, ``scored_tokens``, ``characters``,
        ``total_nats``.
    """
    ar = is_autoregressive(model)
    vocab = model.config.vocab_size if ar else model.process.vocab_size
    _check_blocks(blocks, vocab)
    n, length = blocks.shape
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if num_batches is None:
        num_batches = max(2, math.ceil(n / batch_size))
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    first_scored = int(ar and model.config.start_id is None)  # without a block-start token, x[0] is context
    if ar and length < 1 + first_scored:
        raise ValueError(f"this autoregressive model needs blocks of >= {1 + first_scored} tokens, got {length}")
    batches = range(num_batches)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="NLL bound", unit="batch")
    per_batch, characters = [], 0
    scored = length - first_scored
    for b in batches:
        x0 = blocks[torch.arange(b * batch_size, (b + 1) * batch_size) % n]
        mean, _ = validation_bound(model, x0, len(x0), 1, batch_seed(seed, b), t_min)
        per_batch.append(mean)
        if tokenizer is not None:
            characters += sum(len(tokenizer.decode(row[first_scored:])) for row in x0.tolist())
    mean = sum(per_batch) / len(per_batch)
    if not math.isfinite(mean):
        from .._checks import NonFiniteError

        raise NonFiniteError(f"the NLL bound is {mean}: the model's outputs are not finite (its weights have "
                             "diverged or overflow); evaluate an earlier checkpoint of the run")
    var = sum((v - mean) ** 2 for v in per_batch) / max(1, len(per_batch) - 1)
    se = math.sqrt(var / len(per_batch)) if len(per_batch) > 1 else float("nan")
    tokens = num_batches * batch_size * scored
    if tokenizer is not None and characters == 0:
        raise ValueError("the scored blocks decode to no character: bits per character is undefined")
    chars_per_token = characters / tokens if tokenizer is not None else None
    out = bound_summary(mean, se if math.isfinite(se) else 0.0, chars_per_token)
    if not math.isfinite(se):
        out["se"] = out["bits_per_token_se"] = out["bits_per_char_se"] = None
    out.update(estimator="exact_nll" if ar else "elbo", per_batch=per_batch, num_batches=num_batches,
               batch_size=batch_size, seed=seed, t_min=None if ar else t_min, blocks=n, block_size=length,
               scored_tokens=tokens, characters=characters if tokenizer is not None else None,
               total_nats=mean * tokens)
    return out


def corpus_blocks(source: str | os.PathLike, tokenizer, block_size: int) -> tuple[Tensor, int]:
    """Every document of a corpus (``ddlm.data.corpora.load_corpus``: text file, folder of .txt,
    .jsonl) encoded with ``tokenizer`` and packed into blocks as in training (BOS + text + EOS).

    Returns:
        ``(blocks, num_documents)``.

    Raises:
        FileNotFoundError: no such path.
        ValueError: empty corpus; a character the tokenizer cannot encode (document and position
            named); fewer tokens than one block.
    """
    from ..data.corpora import encode_documents, load_corpus, pack

    docs = load_corpus(source)
    ids = encode_documents(tokenizer, docs, f"corpus {str(source)!r}")
    blocks = pack(ids, block_size, tokenizer.bos_id, tokenizer.eos_id)
    if blocks.shape[0] == 0:
        total = sum(len(x) + 2 for x in ids)
        raise ValueError(f"corpus {str(source)!r} has {total} tokens (with BOS/EOS), fewer than one block of "
                         f"{block_size}")
    return blocks, len(docs)


#: the convention of ddlm's in-memory corpora (``ddlm.data.corpora.pack``), named in results
PACKED = "packed"


def run_blocks(run, data: str | os.PathLike | None) -> tuple[Tensor, dict]:
    """The blocks to evaluate a loaded run on, and a description of them that names the data convention
    and split: the run's own validation split rebuilt from its config (``data`` None), a prepared folder
    at ``data`` (its validation split, or ``all`` for an evaluation set prepared with ``--split none``),
    or a corpus at ``data`` (every document, packed as in training). The description of a split or
    corpus also holds the unigram entropy (nats/token) of the training split (``data`` None, as
    training reports it) or of the corpus's own blocks: the bound of a model that ignores context."""
    from ..data.corpora import unigram_entropy
    from ..data.prepare import blocks_entropy, describe_data, prepare_data
    from ..data.prepared import is_prepared, open_prepared

    cfg = run.config
    if data is None and run.imported:
        raise ValueError(f"{run.info['run']!r} is an imported checkpoint: ddlm has no validation split for it; pass "
                         "--data PATH (a prepared folder, a text file, a folder of .txt files or a .jsonl corpus)")
    if data is not None and is_prepared(data):
        corpus = open_prepared(data)
        corpus.check_tokenizer(run.tokenizer, "the run's tokenizer")
        blocks = corpus.blocks(corpus.eval_split, run.block_size)
        return blocks, blocks.describe
    vocab = run.tokenizer.vocab_size
    if data is None:
        try:
            _, train, val = prepare_data(cfg, run.tokenizer)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"cannot rebuild the validation split of run {run.info['run']!r} ({e}); "
                                    "pass --data PATH to evaluate on another corpus") from None
        return val, {**describe_data(cfg, val), "unigram_entropy": blocks_entropy(train, vocab),
                     "unigram_entropy_of": "training split"}
    blocks, docs = corpus_blocks(data, run.tokenizer, run.block_size)
    return blocks, {"source": "corpus", "corpus": str(data), "documents": docs, "convention": PACKED,
                    "block_size": run.block_size, "split": "none (every document)",
                    "unigram_entropy": unigram_entropy(blocks, vocab), "unigram_entropy_of": "evaluated corpus"}


def nll_bound(run_or_path, data: str | os.PathLike | None = None, *, num_batches: int | None = None,
              passes: int | None = None, batch_size: int | None = None, seed: int = 0, device: str | None = "cpu",
              progress: bool = False, weights: str = "ema", tokenizer=None) -> dict:
    """NLL bound of a run's EMA model on its validation split (default) or on a corpus.

    Args:
        run_or_path: a run folder, a checkpoint folder, an imported checkpoint (``ddlm.pretrained``), or a
            ``LoadedRun``.
        data: None (the run's validation split, the same split as training, rebuilt from its config),
            or a text file / folder / JSONL corpus tokenized with the run's tokenizer.
        num_batches: batches to average (default: every block once, see :func:`model_bound`).
        passes: instead of ``num_batches``: ``passes * ceil(N / batch_size)`` batches, i.e. every block
            scored ``passes`` times with fresh draws (an autoregressive run's exact NLL needs one pass).
        batch_size: rows per batch (default: the run's batch size per accumulation step).
        seed: seed of the Monte-Carlo draws.
        device: where the model runs.
        progress: progress bar.
        weights, tokenizer: as for :func:`ddlm.evaluate.results.load_run`.

    Returns:
        The :func:`model_bound` record plus ``run`` (:func:`ddlm.evaluate.results.run_info`) and
        ``data`` (what was evaluated); for an imported checkpoint also ``bound_convention`` (the
        family's bound: process, K, schedule, times; ``ddlm.pretrained.bound_convention``).
    """
    from .results import LoadedRun, load_run

    run = run_or_path if isinstance(run_or_path, LoadedRun) else load_run(run_or_path, device=device,
                                                                           weights=weights, tokenizer=tokenizer)
    blocks, described = run_blocks(run, data)
    if batch_size is None:
        batch_size = run.eval_batch_size
    if passes is not None:
        if num_batches is not None:
            raise ValueError("give num_batches or passes, not both")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be an integer >= 1, got {passes!r}")
        num_batches = max(2, passes * math.ceil(blocks.shape[0] / batch_size))
    result = model_bound(run.model, blocks, batch_size=batch_size, num_batches=num_batches, seed=seed,
                         t_min=run.t_min, tokenizer=run.tokenizer, progress=progress)
    record = {"command": "eval", "run": run.info, "data": described, "passes": passes, **result}
    if run.imported:
        from ..pretrained import bound_convention

        record["bound_convention"] = bound_convention(run.model, run.process, run.t_min)
    return record


def format_bound(r: dict) -> str:
    """Lines for the terminal: the bound in nats/token, nats/char and bits/char (and bits/token), its
    perplexity and batches; what it was measured on (the data and its convention); and, when known,
    the unigram entropy in the same units."""
    from ..bound import in_units

    what = "exact NLL" if r["estimator"] == "exact_nll" else "NLL bound"
    cpt = r.get("chars_per_token")
    lines = [f"{what}: {in_units(r['nats_per_token'], cpt, r['se'])}, {r['bits_per_token']:.4f} bits/token, "
             f"perplexity {r['perplexity']:.3f} ({r['num_batches']} batches of {r['batch_size']} blocks)"]
    data = r.get("data")
    if data and "convention" in data:
        lines[0] += f"; convention {data['convention']}, split {data['split']}"
    if data and ("val_fraction" in data or "documents" in data):  # a split or corpus
        if "val_fraction" in data:
            where = (f"the validation split of corpus {data['corpus']!r} (val_fraction {data['val_fraction']}, "
                     f"split seed {data['split_seed']})")
        elif data.get("source") == "validation split":
            where = f"the validation split of prepared corpus {data.get('corpus')!r} ({data.get('split')})"
        else:
            where = f"corpus {data.get('corpus')!r} ({data['documents']} documents)"
        passes = r["num_batches"] * r["batch_size"] / r["blocks"]
        context = ("; the first token of each block is context, not scored"
                   if r["scored_tokens"] < r["num_batches"] * r["batch_size"] * r["block_size"] else "")
        lines.append(f"measured on {where}: {r['blocks']} blocks of {r['block_size']} tokens (documents packed as "
                     f"BOS + text + EOS and cut into blocks), each scored {passes:.3g} times on average{context}; "
                     "per character: over the decoded text, where BOS and EOS are no characters")
        if data.get("unigram_entropy") is not None:
            entropy = in_units(data["unigram_entropy"], cpt)
            lines.append(f"unigram entropy of the {data['unigram_entropy_of']}: {entropy} (the bound of a model that "
                         "ignores context)")
    return "\n".join(lines)


def _handler(args) -> int:
    from .results import check_out, write_out

    check_out(args.out, args.overwrite)
    if args.passes is not None and args.batches is not None:
        raise ValueError("give --batches or --passes, not both")
    result = nll_bound(args.run, args.data, num_batches=args.batches, passes=args.passes, batch_size=args.batch_size,
                       seed=args.seed, device=args.device, progress=not args.no_progress, weights=args.weights,
                       tokenizer=args.tokenizer)
    print(format_bound(result))
    write_out(args.out, result, overwrite=args.overwrite)
    return 0


def add_command(subparsers) -> None:
    """Register ``ddlm eval``."""
    from .results import add_model_options

    p = subparsers.add_parser(
        "eval", help="NLL bound of a run (nats/token, bits/token, bits/char, perplexity) on held-out text",
        description="Monte-Carlo NLL bound (ELBO, antithetic times) of a run's EMA model on its validation "
                    "split or on a corpus; the exact NLL for an autoregressive run.")
    p.add_argument("run", help="run folder (its latest checkpoint), checkpoint folder, or released checkpoint (a "
                               "Hugging Face style folder, a Lightning .ckpt, a SEDD checkpoint.pth)")
    p.add_argument("--data", default=None,
                   help="a folder made by ddlm prepare (e.g. a zero-shot set: --preset), or a text file, folder of "
                        ".txt files or .jsonl corpus (default: the run's validation split; required for a released "
                        "checkpoint)")
    p.add_argument("--batches", type=int, default=None, help="batches to average (default: every block once)")
    p.add_argument("--passes", type=int, default=None,
                   help="score every block this many times with fresh Monte-Carlo draws (default 1); the ELBO's "
                        "per-batch values are heavy-tailed, several passes steady the estimate")
    p.add_argument("--batch-size", type=int, default=None, help="blocks per batch (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(func=_handler)
