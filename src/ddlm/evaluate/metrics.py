"""Pure metrics of samples and bounds (MATH.md section 6): unigram entropy of samples, the fraction
of real words, and the unit conversions of an NLL bound."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from torch import Tensor

#: a word: letters, with apostrophes allowed inside (don't, o'er), never at either end
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def _entropy(counts: Iterable[int]) -> float:
    """Entropy (nats) of the histogram ``counts``: -sum_v p_v log p_v with p_v = c_v / sum c."""
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts) + 0.0


def _rows(ids) -> list[list[int]]:
    if isinstance(ids, Tensor):
        if ids.dim() != 2:
            raise ValueError(f"ids must be a (N, L) tensor or a list of id lists, got shape {tuple(ids.shape)}")
        return ids.tolist()
    rows = [r.tolist() if isinstance(r, Tensor) else list(r) for r in ids]
    for i, r in enumerate(rows):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in r):
            raise ValueError(f"ids[{i}] must hold integer token ids")
    return rows


def sample_entropy(ids: Tensor | Sequence[Sequence[int]]) -> dict:
    """Unigram entropy of samples, as in the papers: the entropy (nats) of each sample's token
    histogram, averaged over samples; plus the entropy of all tokens pooled.

    Args:
        ids: a (N, L) tensor, or a list of N id lists (lengths may differ), N >= 1, each non-empty.

    Returns:
        ``{"mean_entropy", "entropy_se", "entropies" (per sample), "pooled_entropy", "num_samples",
        "num_tokens"}``; ``entropy_se`` is the standard error of the mean over samples (sample standard
        deviation / sqrt(N); NaN for one sample).

    Raises:
        ValueError: no sample, an empty sample, or non-integer ids.
    """
    rows = _rows(ids)
    if not rows:
        raise ValueError("ids holds no sample, expected at least one")
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"ids[{i}] is an empty sample; the entropy of an empty histogram is undefined")
    entropies = [_entropy(Counter(r).values()) for r in rows]
    pooled = Counter()
    for r in rows:
        pooled.update(r)
    n = len(entropies)
    mean = sum(entropies) / n
    se = math.sqrt(sum((e - mean) ** 2 for e in entropies) / (n - 1) / n) if n > 1 else float("nan")
    return {"mean_entropy": mean, "entropy_se": se, "entropies": entropies,
            "pooled_entropy": _entropy(pooled.values()), "num_samples": len(rows),
            "num_tokens": sum(len(r) for r in rows)}


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``: runs of letters, split on anything else except an apostrophe
    between two letters ("don't" is one word, "'tis" is "tis")."""
    return WORD.findall(text.lower())


def known_word_fraction(texts: str | Sequence[str], reference_texts: str | Sequence[str]) -> dict:
    """How much of the samples is made of real words: the fraction of the samples' words (with
    repetition) that occur in the set of words of the reference text.

    Args:
        texts: the samples (a string or a list of strings).
        reference_texts: the reference (e.g. the training corpus), a string or a list of strings.

    Returns:
        ``{"known_fraction", "known_words", "total_words", "distinct_words", "distinct_known",
        "reference_vocabulary"}``; ``known_fraction`` is None when the samples hold no word.

    Raises:
        ValueError: the reference holds no word.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    refs = [reference_texts] if isinstance(reference_texts, str) else list(reference_texts)
    vocab = {w for t in refs for w in words(t)}
    if not vocab:
        raise ValueError("reference_texts holds no word, expected a non-empty reference text")
    sample_words = [w for t in texts for w in words(t)]
    known = sum(w in vocab for w in sample_words)
    distinct = set(sample_words)
    return {"known_fraction": known / len(sample_words) if sample_words else None, "known_words": known,
            "total_words": len(sample_words), "distinct_words": len(distinct),
            "distinct_known": len(distinct & vocab), "reference_vocabulary": len(vocab)}


def bound_summary(nats_per_token: float, se: float, chars_per_token: float | None) -> dict:
    """An NLL bound in every unit: nats/token and its standard error, bits/token (and SE), bits per
    character = nats_per_token / (chars_per_token ln 2) (its SE likewise), perplexity = exp(nats/token).

    Args:
        nats_per_token: the bound (or exact NLL) per token, in nats.
        se: its standard error (>= 0).
        chars_per_token: characters of decoded text per evaluated token (> 0), or None if unknown
            (then the per-character entries are None).

    Raises:
        ValueError: non-finite inputs, negative se, or chars_per_token <= 0.
    """
    for name, v in (("nats_per_token", nats_per_token), ("se", se)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if se < 0:
        raise ValueError(f"se must be >= 0, got {se!r}")
    if chars_per_token is not None and not (chars_per_token > 0 and math.isfinite(chars_per_token)):
        raise ValueError(f"chars_per_token must be a positive finite number or None, got {chars_per_token!r}")
    ln2 = math.log(2.0)
    per_char = None if chars_per_token is None else nats_per_token / chars_per_token / ln2
    per_char_se = None if chars_per_token is None else se / chars_per_token / ln2
    return {"nats_per_token": nats_per_token, "se": se, "bits_per_token": nats_per_token / ln2,
            "bits_per_token_se": se / ln2, "bits_per_char": per_char, "bits_per_char_se": per_char_se,
            "chars_per_token": chars_per_token, "perplexity": math.exp(nats_per_token)}
