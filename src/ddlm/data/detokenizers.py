"""Detokenizers and ``ddlm prepare --preset`` settings for the standard zero-shot evaluation sets.

The zero-shot table of MDLM (and SEDD before it) scores a model trained on OpenWebText on PTB,
WikiText-2/103, LM1B, LAMBADA, AG News, PubMed and arXiv after undoing each set's tokenisation
("detokenizing") so that GPT-2's BPE sees ordinary text. The rules below are the ones MDLM's
``dataloader.py`` applies, written as ordered rewrite tables (literal replacements and regular
expressions, in order); quirks are kept on purpose (WikiText's ``/' [0-9]/`` rule matches that
literal text), since the published numbers were made with them. The raw files are the user's.

Each :class:`Preset` says which field holds the text (JSONL/Parquet/Arrow exports of the Hugging Face
datasets), how documents are cut from a raw text file, the detokenizer, and the defaults: every
document in one split ``all`` (``--split none``), convention ``wrap``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (kind, pattern, replacement): kind "s" is a literal replacement, "re" a regular expression
_WIKITEXT = [
    ("s", "s '", "s'"), ("re", r"/' [0-9]/", "/'[0-9]/"),
    ("s", " @-@ ", "-"), ("s", " @,@ ", ","), ("s", " @.@ ", "."),
    ("s", " : ", ": "), ("s", " ; ", "; "), ("s", " . ", ". "), ("s", " ! ", "! "), ("s", " ? ", "? "),
    ("s", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"), ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"), ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("s", "= = = =", "===="), ("s", "= = =", "==="), ("s", "= =", "=="),
    ("s", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"), ("s", " \n", "\n"), ("s", "\n ", "\n"),
    ("s", " N ", " 1 "), ("s", " 's", "'s"),
]
_PTB = [("s", " 's", "'s"), ("s", "s ' ", "s' "), ("s", " n't", "n't"), ("s", " \n ", "\n"), ("s", "\\/", "/")]
_PTB += [("s", " N ", " 1 ")] * 10  # repeated: each pass rewrites every other one of adjacent " N N "
_PTB += [("s", "$ 1", "$1"), ("s", "# 1", "#1"), ("s", "<unk>", "?")]
_LM1B = [
    ("s", "http : / / ", "http://"), ("s", "https : / / ", "https://"),
    ("re", r" '(\w+)", r"'\1"), ("re", r" (\w+) \. ", r" \1. "), ("re", r" (\w+) \.$", r" \1."),
    ("s", " ? ", "? "), ("re", r" \?$", "?"), ("s", " ! ", "! "), ("re", r" \!$", "!"),
    ("s", " , ", ", "), ("s", " : ", ": "), ("s", " ; ", "; "), ("s", " / ", "/"),
    ("re", r"\" ([^\"]+) \"", r'"\1"'), ("re", r"' ([^']+) '", r"'\1'"),
    ("re", r"\( ([^\(\)]+) \)", r"(\1)"), ("re", r"\[ ([^\[\]]+) \]", r"[\1]"),
    ("s", "$ ", "$"), ("s", "\N{POUND SIGN} ", "\N{POUND SIGN}"),
]


def _compile(table):
    return [(kind, re.compile(p) if kind == "re" else p, r) for kind, p, r in table]


def _apply(table, text: str) -> str:
    for kind, pattern, replacement in table:
        text = pattern.sub(replacement, text) if kind == "re" else text.replace(pattern, replacement)
    return text


_TABLES = {name: _compile(t) for name, t in (("wikitext", _WIKITEXT), ("ptb", _PTB), ("lm1b", _LM1B))}


def wikitext(text: str) -> str:
    """WikiText: ``@-@`` number separators, spaced punctuation and brackets, ``= =`` headings."""
    return _apply(_TABLES["wikitext"], text)


def ptb(text: str) -> str:
    """Penn Treebank: contractions, ``N`` (numbers) -> 1, ``<unk>`` -> ?, ``\\/`` -> /."""
    return _apply(_TABLES["ptb"], text)


def lm1b(text: str) -> str:
    """One Billion Word: spaced punctuation, quotes and brackets, URLs, currency signs."""
    return _apply(_TABLES["lm1b"], text)


def lambada(text: str) -> str:
    """LAMBADA: curly double quotes -> straight; stripped, with a line break in front."""
    return "\n" + text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace(
        "\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()


def scientific_papers(text: str) -> str:
    """PubMed and arXiv (the ``scientific_papers`` dataset): the WikiText rules, then LM1B's."""
    return lm1b(wikitext(text))


DETOKENIZERS = {"wikitext": wikitext, "ptb": ptb, "lm1b": lm1b, "lambada": lambada,
                "scientific_papers": scientific_papers}


@dataclass(frozen=True)
class Preset:
    """Settings of ``ddlm prepare --preset NAME`` (any of them can still be given explicitly)."""

    detokenizer: str | None
    field: str
    unit: str
    description: str
    keep_empty: bool = False
    strip: bool = False
    keep_line_end: bool = False
    split: str = "none"
    convention: str = "wrap"


PRESETS = {
    "ptb": Preset("ptb", "sentence", "line", "Penn Treebank (ptb_text_only): one sentence per line, stripped",
                  strip=True),
    "wikitext2": Preset("wikitext", "text", "line", "WikiText-2 (raw): every line with its line break, blank "
                        "lines kept, as the Hugging Face rows", keep_empty=True, keep_line_end=True),
    "wikitext103": Preset("wikitext", "text", "line", "WikiText-103 (raw): every line with its line break, "
                          "blank lines kept, as the Hugging Face rows", keep_empty=True, keep_line_end=True),
    "lm1b": Preset("lm1b", "text", "line", "One Billion Word: one sentence per line"),
    "lambada": Preset("lambada", "text", "line", "LAMBADA (OpenAI's lambada_test.jsonl): one passage per line"),
    "ag_news": Preset(None, "text", "line", "AG News: the 'text' field, no detokenizer"),
    "pubmed": Preset("scientific_papers", "article", "file", "PubMed (scientific_papers/pubmed): the 'article' "
                     "field, as MDLM uses it"),
    "arxiv": Preset("scientific_papers", "article", "file", "arXiv (scientific_papers/arxiv): the 'article' "
                    "field, as MDLM uses it"),
}


def detokenizer(name: str | None):
    """The detokenizer function of a name (None: no detokenizer).

    Raises:
        ValueError: an unknown name (the known ones are listed).
    """
    if name is None:
        return None
    if name not in DETOKENIZERS:
        raise ValueError(f"detokenizer is {name!r}, expected one of {sorted(DETOKENIZERS)}")
    return DETOKENIZERS[name]
