"""Corpus sources for ``ddlm prepare``, read as a stream of document chunks that can be resumed.

A source is a text file, a JSONL file (one JSON object per line, the document in a field), a Parquet
or Arrow file (a string column), a folder of any of these (every supported file below it, sorted by
path; hidden files skipped), or a Hugging Face hub dataset name (needs ``datasets`` and the network).
``.gz``, ``.xz`` and ``.bz2`` text and JSONL files are read through the standard library.

Documents of a text file, by ``unit``: ``file`` (the whole file), ``paragraph`` (runs of non-blank
lines, joined with their line breaks, the last one dropped) or ``line`` (each line without its line
break, unless ``keep_line_end``). Text is read as bytes and decoded by the workers, so an invalid
byte is reported with its file and byte offset.

Reading yields :class:`Chunk` objects of about ``chunk_bytes`` of text each; the workers cut the
documents out of them (``ddlm.data.encoding.chunk_items`` and ``decode_item``). Every chunk carries
the source position after it (file index and byte offset, or row for tabular sources); reading again
from that position continues exactly after the chunk, which is how an interrupted preparation resumes.
Chunking depends only on the source, never on the number of workers.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: a single document larger than this (bytes of text) is refused rather than held in memory
MAX_DOC_BYTES = 1 << 28
COMPRESSION = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
KINDS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}
UNITS = ("auto", "file", "paragraph", "line")
PYARROW_PIP = "pip install pyarrow"


class SourceError(ValueError):
    """A source that cannot be read: a missing optional package, an unreachable hub, bad content."""


@dataclass
class ReadOptions:
    """How documents are cut from a source (see the module docstring)."""

    unit: str = "auto"
    field: str = "text"
    keep_empty: bool = False  # keep empty (whitespace-only) documents, e.g. WikiText's blank lines
    strip: bool = False  # strip surrounding whitespace from every document
    keep_line_end: bool = False  # unit "line": keep each line's line break in its document
    hub_split: str = "train"


@dataclass
class Chunk:
    """About ``chunk_bytes`` of the source as segments ``(path, offset, kind, unit, data)``: raw bytes of
    a text or JSONL file from byte ``offset`` (cut at a line boundary, and for paragraphs after a blank
    line), or a list of strings from row ``offset`` of a tabular source. Workers cut the documents out
    (:func:`chunk_items`), so the main process never touches single documents. ``position`` is where
    reading resumes after this chunk."""

    segments: list = field(default_factory=list)
    position: tuple = (0, 0)
    nbytes: int = 0


def file_kind(path: Path) -> tuple[str | None, str | None]:
    """(kind, compression suffix) from the file name, e.g. ``a.jsonl.gz`` -> ("jsonl", ".gz")."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    comp = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSION else None
    base = suffixes[-2] if comp and len(suffixes) == 2 else (suffixes[-1] if suffixes and not comp else None)
    kind = KINDS.get(base or "")
    if kind in ("parquet", "arrow") and comp:
        return None, None
    return kind, comp


def require_pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise SourceError(f"reading {what} needs the 'pyarrow' package, which is not installed: {PYARROW_PIP} "
                          "(or export the data as JSONL)") from None
    return pyarrow


def _hub_advice(name: str) -> str:
    return (f"on a machine with access to the hub, export it once, e.g. python -c \"import datasets; "
            f"datasets.load_dataset('{name}', split='train').to_json('{name.replace('/', '_')}.jsonl')\", copy "
            "the file here and pass its path as SOURCE")


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


class Source:
    """A corpus source (see the module docstring).

    Args:
        source: a path, or a hub dataset name (``name`` or ``owner/name``, ``:config`` optional).
        options: :class:`ReadOptions`.

    Raises:
        FileNotFoundError: no such path and not a hub name.
        SourceError: a folder without supported files; a hub name without ``datasets``; Parquet/Arrow
            without ``pyarrow``; an unsupported file type.
    """

    def __init__(self, source: str | os.PathLike, options: ReadOptions | None = None):
        self.options = options or ReadOptions()
        if self.options.unit not in UNITS:
            raise ValueError(f"unit is {self.options.unit!r}, expected one of {UNITS}")
        self.name = str(source)
        path = Path(source)
        self.hub = None
        if path.exists():
            self.root = path
            if path.is_dir():
                files = sorted((p for p in path.rglob("*") if p.is_file() and not any(
                    part.startswith(".") for part in p.relative_to(path).parts) and file_kind(p)[0]),
                    key=lambda p: p.relative_to(path).as_posix())
                if not files:
                    raise SourceError(f"folder {path} holds no supported file ({', '.join(sorted(KINDS))}, optionally "
                                      f"compressed with {', '.join(COMPRESSION)})")
            else:
                if file_kind(path)[0] is None and path.suffix.lower() in (".parquet", ".arrow", ".csv", ".json"):
                    raise SourceError(f"file {path}: unsupported type {path.suffix!r}; use text, JSONL, Parquet or "
                                      "Arrow")
                files = [path]
            self.files = files
            self.kinds = [file_kind(p) if file_kind(p)[0] else ("text", None) for p in files]
            if any(k in ("parquet", "arrow") for k, _ in self.kinds):
                require_pyarrow("Parquet/Arrow files")
            self.kind = "folder" if path.is_dir() else self.kinds[0][0]
        elif isinstance(source, str) and _HUB_NAME.match(source) and not source.endswith(tuple(KINDS)):
            try:
                import datasets  # noqa: F401
            except ImportError:
                raise SourceError(
                    f"SOURCE {source!r} is not a file or folder here. As a Hugging Face hub dataset it needs the "
                    "'datasets' package (pip install datasets) and network access to the hub; "
                    + _hub_advice(source)) from None
            self.root, self.files, self.kinds, self.kind = None, [], [], "hub"
            self.hub = source
        else:
            raise FileNotFoundError(f"SOURCE {str(source)!r}: no such file or folder")

    @property
    def sizes(self) -> list[int]:
        """Each file's size in bytes (read once)."""
        if not hasattr(self, "_sizes"):
            self._sizes = [p.stat().st_size for p in self.files]
        return self._sizes

    @property
    def total_bytes(self) -> int | None:
        """Bytes of the source's files (None for hub datasets, compressed or tabular files: the text size
        is unknown)."""
        if self.hub or any(c or k in ("parquet", "arrow") for k, c in self.kinds):
            return None
        return sum(self.sizes)

    def bytes_at(self, position) -> int | None:
        """Bytes of the source before ``position`` (None where the total is unknown: see ``total_bytes``)."""
        if self.total_bytes is None:
            return None
        if not hasattr(self, "_starts"):
            self._starts = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)]).tolist()
        i, offset = position
        return self._starts[i] + offset

    def describe(self) -> dict:
        """What the metadata records about the source (path, kind, files, bytes, reading options)."""
        o = self.options
        return {"path": os.path.abspath(self.name) if self.root else self.name, "kind": self.kind,
                "files": len(self.files), "bytes": self.total_bytes, "unit": self.unit_for("text"),
                "field": o.field, "keep_empty": o.keep_empty, "strip": o.strip, "keep_line_end": o.keep_line_end}

    def unit_for(self, kind: str) -> str | None:
        if kind != "text":
            return None
        if self.options.unit != "auto":
            return self.options.unit
        return "file" if self.kind == "folder" else "paragraph"

    def stat_fingerprint(self) -> str:
        """SHA-256 of every file's relative path, size and modification time (or the hub name)."""
        h = hashlib.sha256()
        if self.hub:
            h.update(f"hub:{self.hub}:{self.options.hub_split}".encode())
        for p in self.files:
            st = p.stat()
            rel = p.relative_to(self.root).as_posix() if self.root.is_dir() else p.name
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    # -- reading ----------------------------------------------------------------------------------
    def chunks(self, position=(0, 0), chunk_bytes: int = 1 << 20) -> Iterator[Chunk]:
        """Chunks of about ``chunk_bytes`` from ``position`` (file index, byte offset or row) to the end;
        a chunk may span files."""
        chunk = Chunk()
        for segment, size, after in self._segments(tuple(position), chunk_bytes):
            chunk.segments.append(segment)
            chunk.nbytes += size
            chunk.position = after
            if chunk.nbytes >= chunk_bytes:
                yield chunk
                chunk = Chunk()
        if chunk.segments:
            yield chunk

    def _segments(self, position: tuple, chunk_bytes: int) -> Iterator[tuple]:
        """(segment, its size, position after it) from ``position`` on."""
        if self.hub:
            yield from self._row_segments(0, None, position[1], chunk_bytes)
            return
        start_file, offset = position
        for i in range(start_file, len(self.files)):
            kind, comp = self.kinds[i]
            start = offset if i == start_file else 0
            if kind in ("parquet", "arrow"):
                yield from self._row_segments(i, kind, start, chunk_bytes)
            else:
                yield from self._byte_segments(i, kind, comp, start, chunk_bytes)

    def _byte_segments(self, i: int, kind: str, comp, offset: int, chunk_bytes: int) -> Iterator[tuple]:
        """Blocks of a text or JSONL file, each ending at a line boundary (for paragraphs: after a blank
        line or at the end of the file), so that no document is cut."""
        path, unit = self.files[i], self.unit_for(kind) if kind == "text" else "jsonl"
        opener = COMPRESSION[comp] if comp else open
        with opener(path, "rb") as f:
            if offset:
                f.seek(offset)
            if unit == "file":
                data = f.read(MAX_DOC_BYTES + 1)
                if len(data) > MAX_DOC_BYTES:
                    raise SourceError(f"{path}: a document of more than {MAX_DOC_BYTES} bytes; use --unit paragraph "
                                      "or line to cut it (it would be held in memory whole)")
                if data:
                    yield (str(path), offset, "text", unit, data), len(data), (i, offset + len(data))
                return
            while data := f.read(chunk_bytes):
                parts = [data]
                if not data.endswith(b"\n"):
                    parts.append(f.readline())
                if unit == "paragraph":  # go on to the end of the paragraph
                    last = b"".join(parts[-2:]).rsplit(b"\n", 2)
                    line = last[-2] if len(last) >= 2 else last[0]
                    extra = 0
                    while line.strip():
                        line = f.readline()
                        if not line:
                            break
                        parts.append(line)
                        extra += len(line)
                        if extra > MAX_DOC_BYTES:
                            raise SourceError(f"{path}, byte {offset}: a paragraph of more than {MAX_DOC_BYTES} "
                                              "bytes; use --unit line to cut it")
                elif len(parts[-1]) > MAX_DOC_BYTES:
                    raise SourceError(f"{path}, byte {offset}: a line of more than {MAX_DOC_BYTES} bytes")
                block = b"".join(parts)
                yield (str(path), offset, kind, unit, block), len(block), (i, offset + len(block))
                offset += len(block)

    def _row_segments(self, i: int, kind: str | None, row: int, chunk_bytes: int) -> Iterator[tuple]:
        name = self.hub if kind is None else str(self.files[i])
        values, size, first = [], 0, row
        for batch in self._columns(i, kind, row):
            for v in batch:
                if not isinstance(v, str):
                    raise SourceError(f"{name}, row {row}: field {self.options.field!r} is a {type(v).__name__}, "
                                      "not a string")
                values.append(v)
                size += len(v)
                row += 1
                if size >= chunk_bytes:
                    yield (name, first, "str", None, values), size, (i, row)
                    values, size, first = [], 0, row
        if values:
            yield (name, first, "str", None, values), size, (i, row)

    def _columns(self, i: int, kind: str | None, skip: int) -> Iterator[list]:
        """Lists of the field's values from row ``skip`` on."""
        fld = self.options.field
        if kind is None:
            yield from _hub_rows(self.hub, self.options.hub_split, fld, skip)
            return
        pa = require_pyarrow("Parquet/Arrow files")
        path = self.files[i]
        if kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            batches = pf.iter_batches(batch_size=4096, columns=[fld]) if fld in names else None
        else:
            try:
                reader = pa.ipc.open_file(path)
                names = reader.schema.names
                batches = (reader.get_batch(b) for b in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_stream(path)
                names, batches = reader.schema.names, iter(reader)
        if batches is None or fld not in names:
            raise SourceError(f"{path}: no column {fld!r} (columns: {names}); pass --field")
        seen = 0
        for batch in batches:
            n = batch.num_rows
            if seen + n > skip:
                column = batch.column(batch.schema.get_field_index(fld))
                yield column.slice(max(0, skip - seen)).to_pylist()
            seen += n


def _hub_rows(name: str, split: str, fld: str, skip: int) -> Iterator[list]:
    import datasets

    path, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(path, config or None, split=split, streaming=True)
        if skip:
            ds = ds.skip(skip)
        batch = []
        for record in ds:
            if fld not in record:
                raise SourceError(f"hub dataset {name!r}: no field {fld!r} (fields: {sorted(record)}); pass --field")
            batch.append(record[fld])
            if len(batch) == 1024:
                yield batch
                batch = []
        if batch:
            yield batch
    except SourceError:
        raise
    except Exception as e:  # datasets raises many kinds of connection errors
        raise SourceError(f"hub dataset {name!r} could not be read ({type(e).__name__}: {e}); this machine may be "
                          "offline: " + _hub_advice(path)) from None
