"""External causal LMs ("judges") that score decoded text: generative perplexity and MAUVE features.

A judge retokenises each text with its own tokenizer into ``x_1 .. x_n`` and, when it has a BOS
token, scores every token given the text before it and BOS (MATH.md section 6):

    NLL_i = -log p(x_i | BOS, x_1 .. x_{i-1}),    i = 1 .. n.

Without a BOS token the first token has nothing to be conditioned on and is not scored (i = 2 .. n).
Generative perplexity is token-weighted over all texts, ``exp(sum of all NLL_i / number of scored
tokens)``. Features for MAUVE are the judge's final hidden state (after its final norm) at each
text's last token. Batches are right-padded: a causal model never attends from a real token to a
later padding position, so padding does not change any text's scores (tested).

This module scores: :class:`Judge` and its two kinds, a Hugging Face causal LM (:class:`HFJudge`) and
a ddlm autoregressive run (:class:`ARJudge`). Finding, converting, caching and loading a judge by name
(``"smollm2"``, a folder) is ``ddlm.evaluate.judge_loading.load_judge``.

Numbers from different judges are not comparable (and SmolLM2's are not comparable with the
GPT-2-Large generative perplexities of papers): report ``Judge.name`` with every number.
Heavy libraries (transformers, gguf) are imported inside functions only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: the pip command named by the errors of a judge that needs the evaluation extras
EVAL_PIP = "pip install 'ddlm[eval]'"
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
