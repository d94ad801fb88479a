"""MAUVE between two text collections, on features from a judge (MATH.md section 6).

Both collections are embedded with :meth:`ddlm.evaluate.judge.Judge.features` (the judge's final
hidden state at each text's last token) and handed to ``mauve.compute_mauve`` as features, so the
``mauve`` package never loads its own featurizer (which would download GPT-2 Large). ``mauve``
quantises the union of the features into ``num_buckets`` k-means clusters (after PCA) and compares
the two histograms through the divergence frontier; MAUVE is 1 for identical histograms and falls
towards 0 as they separate. The score depends on the judge, the seed and the number of buckets:
report them with it (the returned dict holds them).
"""

from __future__ import annotations

from typing import Any

from .judge import EVAL_PIP, check_texts


def resolve_buckets(num_buckets: Any, num_p: int, num_q: int) -> int:
    """The number of k-means buckets MAUVE uses.

    ``"auto"`` is ``mauve``'s own rule, ``max(2, round(min(num_p, num_q) / 10))``.

    Raises:
        ValueError: ``num_buckets`` is neither ``"auto"`` nor an int >= 2, or exceeds the size of the
            smaller collection (each bucket needs at least one text of each).
    """
    if num_buckets == "auto":
        buckets = max(2, int(round(min(num_p, num_q) / 10)))
    elif isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 2:
        raise ValueError(f"num_buckets must be 'auto' or an int >= 2, got {num_buckets!r}")
    else:
        buckets = num_buckets
    if min(num_p, num_q) < buckets:
        raise ValueError(f"MAUVE with {buckets} buckets needs at least {buckets} texts in each collection; got "
                         f"{num_p} p_texts and {num_q} q_texts (use more texts or fewer num_buckets)")
    return buckets


def mauve_score(p_texts: list[str], q_texts: list[str], judge: Any, *, seed: int = 25, num_buckets: Any = "auto",
                batch_size: int = 8, progress: bool = False) -> dict:
    """MAUVE between ``p_texts`` (e.g. held-out text) and ``q_texts`` (e.g. samples) under ``judge``.

    Args:
        p_texts: First collection (non-empty texts).
        q_texts: Second collection (non-empty texts).
        judge: A :class:`~ddlm.evaluate.judge.Judge` (its ``features`` and ``name`` are used).
        seed: Seed of mauve's k-means.
        num_buckets: ``"auto"`` or the number of k-means buckets (see :func:`resolve_buckets`).
        batch_size: Texts per judge forward pass.
        progress: Show progress bars while computing features.

    Returns:
        ``{"mauve": float in [0, 1], "num_p": len(p_texts), "num_q": len(q_texts), "judge": judge.name,
        "seed": seed, "num_buckets": the resolved int}``.

    Raises:
        ValueError: a collection is empty or smaller than the number of buckets, or holds a text with
            no judge token.
        ImportError: the ``mauve-text`` package is missing (the pip command is named).
    """
    p_texts, q_texts = check_texts(p_texts, "p_texts"), check_texts(q_texts, "q_texts")
    for argument, texts in (("p_texts", p_texts), ("q_texts", q_texts)):
        if not texts:
            raise ValueError(f"{argument} is empty; MAUVE needs texts in both collections")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    buckets = resolve_buckets(num_buckets, len(p_texts), len(q_texts))
    try:
        import mauve
    except ImportError as e:
        raise ImportError(f"MAUVE needs the mauve-text package (and faiss, scikit-learn): {EVAL_PIP}") from e
    p = judge.features(p_texts, batch_size=batch_size, progress=progress).numpy()
    q = judge.features(q_texts, batch_size=batch_size, progress=progress).numpy()
    out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=buckets, device_id=-1, verbose=False,
                              seed=seed)
    return {"mauve": float(out.mauve), "num_p": len(p_texts), "num_q": len(q_texts), "judge": judge.name,
            "seed": seed, "num_buckets": buckets}
