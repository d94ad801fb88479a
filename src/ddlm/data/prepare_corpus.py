"""``ddlm prepare``: a corpus of any size into token shards, streaming, in parallel, resumably.

    ddlm prepare SOURCE --tokenizer gpt2 --out DIR [--workers N] [--split last:100000] [--convention wrap]

The main process reads the source in chunks of about 1 MB (``ddlm.data.sources``), tokenizes every
N-th chunk itself and hands the others to N - 1 forked workers (``ddlm.data.encoding``), keeps at
most 2N chunks in flight, and appends the results in source order to append-only streams
(``ddlm.data.shards``): memory is bounded by the chunks in flight, whatever the corpus size, and the
output is byte-identical for any number of workers. With the split
rule ``fraction`` the documents go to two streams, ``train`` and ``val``; otherwise one stream
``all`` holds every document and the split is a document range of it.

Every few seconds (and at the end) the streams are fsynced and ``.progress.json`` records the
source position and the committed lengths; rerunning the same command after an interruption (a
kill, a crash, Ctrl-C) cuts the files back to that state and continues to the same bytes. The last
step checksums every shard, counts token frequencies per split, builds the ``pad`` block index,
then writes ``ddlm-data.json``: a folder without it is never read as a prepared corpus.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import deque
from pathlib import Path

import numpy as np

from .._io import atomic_write_json
from . import encoding
from .conventions import CONVENTIONS, check_convention, parse_split, split_name
from .detokenizers import PRESETS
from .finish_corpus import finish
from .shards import (
    META,
    PROGRESS,
    TOKENIZER_FILE,
    PreparedDataError,
    StreamWriter,
    token_dtype,
)
from .sources import UNITS, ReadOptions, Source

DEFAULT_SHARD_TOKENS = 1 << 27  # 256 MB of uint16 per shard
DEFAULT_SPLIT = "fraction:0.01"
CHUNK_BYTES = 1 << 20


def _resolve(preset, split, convention, field, unit, keep_empty) -> dict:
    """The reading and splitting settings: explicit values, else the preset's, else the defaults."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset is {preset!r}, expected one of {sorted(PRESETS)}")
    p = PRESETS.get(preset)
    settings = {
        "split": split or (p.split if p else DEFAULT_SPLIT),
        "convention": convention or (p.convention if p else "wrap"),
        "field": field or (p.field if p else "text"), "unit": unit or (p.unit if p else "auto"),
        "keep_empty": keep_empty if keep_empty is not None else (p.keep_empty if p else False),
        "strip": p.strip if p else False, "keep_line_end": p.keep_line_end if p else False,
        "detokenizer": p.detokenizer if p else None, "preset": preset,
    }
    if settings["unit"] not in UNITS:
        raise ValueError(f"unit is {settings['unit']!r}, expected one of {UNITS}")
    return settings


def _build_tokenizer(spec: str):
    from .tokenizers import BPETokenizer

    if spec == "gpt2":
        return BPETokenizer.gpt2()
    if Path(spec).is_file():
        return BPETokenizer.from_file(spec)
    raise ValueError(f"tokenizer is {spec!r}, expected 'gpt2', 'char' or a tokenizers JSON file")


def _pool(workers: int, init_args):
    """The tokenizing processes: this one (always) and ``workers - 1`` forked ones (fork where
    available: nothing is re-imported); None when this process is the only one."""
    encoding.init_worker(*init_args)
    if workers == 1:
        return None
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(workers - 1, initializer=encoding.init_worker, initargs=init_args)


def _ordered(pool, fn, chunks, workers: int):
    """(chunk, fn(chunk)) in source order. Every ``workers``-th chunk is done here, the others by the
    pool, with at most 2 x workers chunks in flight (memory bounded by that, not by the corpus)."""
    pending = deque()
    for j, c in enumerate(chunks):
        local = pool is None or j % workers == 0
        pending.append((c, None if local else pool.apply_async(fn, (c,))))
        if len(pending) >= 2 * workers:
            c0, r0 = pending.popleft()
            yield c0, fn(c0) if r0 is None else r0.get()
    while pending:
        c0, r0 = pending.popleft()
        yield c0, fn(c0) if r0 is None else r0.get()


def _char_tokenizer(source: Source, settings: dict, workers: int, progress: bool, chunk_bytes: int):
    """The character tokenizer of a source: one reading pass collects its characters."""
    from tqdm.auto import tqdm

    from .tokenizers import CharTokenizer

    pool = _pool(workers, (None, _read_options(settings), settings["detokenizer"], None, "<u2"))
    chars: set[str] = set()
    try:
        with tqdm(total=source.total_bytes, unit="B", unit_scale=True, desc="characters", disable=not progress) as bar:
            for chunk, (found, _, _) in _ordered(pool, encoding.scan_chunk, source.chunks((0, 0), chunk_bytes),
                                                 workers):
                chars.update(found)
                bar.update(chunk.nbytes)
    finally:
        if pool is not None:
            pool.terminate()
    if not chars:
        raise ValueError(f"source {source.name!r} holds no non-empty document")
    return CharTokenizer(sorted(chars))


def _read_options(s: dict) -> ReadOptions:
    return ReadOptions(unit=s["unit"], field=s["field"], keep_empty=s["keep_empty"], strip=s["strip"],
                       keep_line_end=s["keep_line_end"])


def prepare_corpus(source, out, *, tokenizer: str = "gpt2", workers: int = 1, convention: str | None = None,
                   block_size: int | None = None, split: str | None = None, field: str | None = None,
                   unit: str | None = None, preset: str | None = None, keep_empty: bool | None = None,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, chunk_bytes: int = CHUNK_BYTES, progress: bool = True,
                   log=print,
                   commit_seconds: float = 5.0, _hook=None) -> dict:
    """Prepare ``source`` into the folder ``out`` (see the module docstring); returns its metadata.

    Args:
        source: text file, folder, JSONL, Parquet/Arrow file, or a hub dataset name (``ddlm.data.sources``).
        out: the prepared folder (created; an interrupted preparation there is resumed).
        tokenizer: "gpt2", "char" (the source's characters, found in a first pass) or a tokenizers JSON file.
        workers: tokenizing processes.
        convention: "wrap" (default), "window" or "pad" (``ddlm.data.conventions``).
        block_size: blocks of convention "pad" (required for it; wrap and window blocks are cut at
            read time at the run's ``data.block_size``).
        split: "fraction:F" (default ``fraction:0.01``), "last:N" or "none".
        field: JSONL/Parquet/Arrow field holding the text (default "text").
        unit: text files: "auto" (a folder's files are documents, a single file's paragraphs), "file",
            "paragraph" or "line".
        preset: a zero-shot set of ``ddlm.data.detokenizers.PRESETS`` (its detokenizer and defaults).
        keep_empty: keep empty documents (default False; the WikiText presets keep them).
        shard_tokens: tokens per shard file.
        chunk_bytes: text per chunk handed to a worker (the unit of progress and of resuming).
        progress: progress bar (bytes read, tokens/s).
        log: where the summary lines go.
        commit_seconds: how often the progress is made durable.

    Raises:
        ValueError: bad options (named), a split that leaves a side empty, a folder holding another
            preparation; ``SourceError`` for unreadable sources; FileNotFoundError, FileExistsError.
    """
    s = _resolve(preset, split, convention, field, unit, keep_empty)
    split_rule = parse_split(s["split"])
    if s["convention"] == "pad":
        check_convention("pad", block_size)
    elif s["convention"] in CONVENTIONS and block_size is not None:
        raise ValueError(f"block_size is {block_size!r}: only convention 'pad' fixes it at preparation; wrap and "
                         "window blocks are cut when read, at the run's data.block_size")
    else:
        check_convention(s["convention"], 3)
    for name, value, low in (("workers", workers, 1), ("shard_tokens", shard_tokens, 2),
                             ("chunk_bytes", chunk_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} is {value!r}, expected an integer >= {low}")
    src = Source(source, _read_options(s))
    out = Path(out)
    options = {"tokenizer": tokenizer, "block_size": block_size, "shard_tokens": shard_tokens,
               "chunk_bytes": chunk_bytes, **s, "split": split_name(split_rule)}
    fingerprint = src.stat_fingerprint()
    if (out / META).exists():
        meta = json.loads((out / META).read_text())
        if meta.get("options") == options and meta["source"].get("stat_fingerprint") == fingerprint:
            log(f"{out} is already prepared from this source with these options; nothing to do")
            return meta
        raise PreparedDataError(f"--out {out} already holds a prepared corpus made from another source or with other "
                                "options; choose another --out or remove that folder")
    state = _load_progress(out, options, fingerprint)
    if state is None:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--out {out} exists and is not empty (and is no ddlm preparation); choose a new "
                                  "folder")
        out.mkdir(parents=True, exist_ok=True)
        state = {"options": options, "stat_fingerprint": fingerprint, "phase": "reading", "position": [0, 0],
                 "chunks": 0, "bytes": 0, "digest": "", "skipped": 0, "characters": 0, "streams": {}}
        atomic_write_json(out / PROGRESS, state)  # from now on the folder is this preparation's
    if not (out / TOKENIZER_FILE).exists():
        if tokenizer == "char":
            tok = _char_tokenizer(src, s, workers, progress, chunk_bytes)
        else:
            tok = _build_tokenizer(tokenizer)
        tok.save(out / TOKENIZER_FILE)
    from .tokenizers import load_tokenizer

    tok = load_tokenizer(out / TOKENIZER_FILE)
    dtype = token_dtype(tok.vocab_size)
    names = ("train", "val") if split_rule["rule"] == "fraction" else ("all",)
    writers = {n: StreamWriter(out / n, dtype, shard_tokens, **state["streams"].get(n, {})) for n in names}
    fraction = split_rule.get("fraction")
    if state["phase"] == "reading":
        _read(src, out, state, writers, tok, s, fraction, dtype, workers, progress, commit_seconds, _hook, chunk_bytes)
    meta = finish(out, state, writers, tok, src, s, split_rule, options, block_size, shard_tokens, dtype)
    t = {n: meta["splits"][n]["tokens"] for n in meta["splits"]}
    log(f"prepared {out}: {meta['documents']} documents, {meta['tokens']} tokens ("
        + ", ".join(f"{n} {v}" for n, v in t.items()) + f"), {dtype.name}, convention {s['convention']}, split "
        f"{split_name(split_rule)}; tokenizer {meta['tokenizer']['name']} via {meta['encoder']}")
    return meta


def _load_progress(out: Path, options: dict, fingerprint: str) -> dict | None:
    path = out / PROGRESS
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    for key, now in (("options", options), ("stat_fingerprint", fingerprint)):
        if state.get(key) != now:
            what = "options" if key == "options" else "source files (paths, sizes or modification times)"
            diff = ""
            if key == "options":
                diff = "; " + ", ".join(f"{k}: {state[key].get(k)!r} then, {v!r} now" for k, v in now.items()
                                        if state[key].get(k) != v)
            raise PreparedDataError(f"--out {out} holds an interrupted preparation with other {what}{diff}; rerun "
                                    "it with the same source and options to finish it, or remove the folder")
    return state


def _commit(out: Path, state: dict, writers: dict) -> None:
    state["streams"] = {n: w.commit() for n, w in writers.items()}
    atomic_write_json(out / PROGRESS, state)


def _read(src, out, state, writers, tok, s, fraction, dtype, workers, progress, commit_seconds, hook,
          chunk_bytes) -> None:
    from tqdm.auto import tqdm

    state.setdefault("encoder", encoding.make_encoder(tok)[1])  # what the workers will run (the same code)
    pool = _pool(workers, (tok.to_dict(), _read_options(s), s["detokenizer"], fraction, dtype))
    start, tokens, last = time.time(), 0, time.time()
    bar = tqdm(total=src.total_bytes, initial=state["bytes"], unit="B", unit_scale=True, desc="prepare",
               disable=not progress)
    try:
        chunks = src.chunks(tuple(state["position"]), chunk_bytes)
        for chunk, r in _ordered(pool, encoding.encode_chunk, chunks, workers):
            if r["val"] is None:
                writers["all"].append(r["tokens"], r["lengths"])
            else:
                per_token = np.repeat(r["val"], r["lengths"])
                writers["val"].append(r["tokens"][per_token], r["lengths"][r["val"]])
                writers["train"].append(r["tokens"][~per_token], r["lengths"][~r["val"]])
            state["position"], state["chunks"] = list(chunk.position), state["chunks"] + 1
            done = src.bytes_at(chunk.position)
            step = chunk.nbytes if done is None else done - state["bytes"]
            state["bytes"] += step
            state["digest"] = hashlib.sha256(bytes.fromhex(state["digest"]) + r["digest"]).hexdigest()
            state["skipped"] += r["skipped"]
            state["characters"] += r["chars"]
            tokens += len(r["tokens"])
            bar.update(step)
            bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.time() - start):.3g}")
            if hook is not None:
                hook("appended", state)
            if time.time() - last >= commit_seconds:
                _commit(out, state, writers)
                last = time.time()
                if hook is not None:
                    hook("committed", state)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    state["phase"] = "finishing"
    _commit(out, state, writers)


def _handler(args) -> int:
    prepare_corpus(args.source, args.out, tokenizer=args.tokenizer, workers=args.workers, convention=args.convention,
                   block_size=args.block_size, split=args.split, field=args.field, unit=args.unit, preset=args.preset,
                   keep_empty=True if args.keep_empty else None, shard_tokens=args.shard_tokens,
                   chunk_bytes=args.chunk_bytes, progress=not args.no_progress)
    return 0


def add_command(subparsers) -> None:
    """Register ``ddlm prepare``."""
    p = subparsers.add_parser(
        "prepare", help="tokenize a corpus of any size into token shards for training and evaluation",
        description="Stream a corpus (text file, folder, JSONL, Parquet/Arrow, or a hub dataset name) through a "
                    "tokenizer into token shards with document boundaries and metadata; parallel, "
                    "deterministic and resumable (rerun the same command after an interruption).")
    p.add_argument("source", help="text file, folder, .jsonl, .parquet/.arrow file, or a Hugging Face dataset name")
    p.add_argument("--out", required=True, help="the prepared folder to write (or resume)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), char, or a tokenizers JSON file")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="tokenizing processes (default: CPU count - 1)")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default=None,
                   help="how blocks are made: wrap (default, MDLM), window (nanoGPT), pad (one document per block)")
    p.add_argument("--block-size", type=int, default=None, help="block length; convention pad only")
    p.add_argument("--split", default=None,
                   help=f"fraction:F (hash of each document's text), last:N (MDLM's OpenWebText: last:100000) or "
                        f"none (default {DEFAULT_SPLIT}; presets: none)")
    p.add_argument("--field", default=None, help="JSONL/Parquet/Arrow field holding the text (default text)")
    p.add_argument("--unit", choices=UNITS, default=None,
                   help="documents of text files: auto (a folder's files, a single file's paragraphs), file, "
                        "paragraph, line")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a standard zero-shot set: its detokenizer, field and defaults (split none, convention wrap)")
    p.add_argument("--keep-empty", action="store_true", help="keep empty documents (an EOS each)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES,
                   help="text per chunk handed to a worker: the unit of resuming (default 1 MiB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler)
