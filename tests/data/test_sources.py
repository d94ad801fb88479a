"""Corpus sources for ddlm prepare (ddlm.data.sources): documents per unit and kind, resumable positions,
named errors for unreadable sources."""

import builtins
import gzip
import importlib.util

import pytest
from _corpus import documents, write_jsonl, write_paragraphs

from ddlm.data import sources
from ddlm.data.encoding import chunk_items, decode_item
from ddlm.data.sources import ReadOptions, Source, SourceError


def _docs(src: Source, position=(0, 0), chunk_bytes=200) -> list[str]:
    out = []
    for chunk in src.chunks(position, chunk_bytes):
        for item, kind, where in chunk_items(chunk, src.options):
            text = decode_item(item, kind, where, src.options)
            if text is not None:
                out.append(text)
    return out


def _items(src, chunks):
    return [it for c in chunks for it, _, _ in chunk_items(c, src.options)]


def test_every_chunk_position_resumes_exactly(tmp_path):
    docs = documents(40)
    write_paragraphs(tmp_path / "a.txt", docs[:20])
    write_jsonl(tmp_path / "b.jsonl", docs[20:])
    src = Source(tmp_path, ReadOptions(unit="paragraph"))
    chunks = list(src.chunks((0, 0), 300))
    assert len(chunks) > 5 and _docs(src) == docs
    items = _items(src, chunks)
    for k, chunk in enumerate(chunks):
        rest = _items(src, src.chunks(chunk.position, 300))
        assert rest == items[len(_items(src, chunks[: k + 1])):]


def test_units_of_a_text_file(tmp_path):
    (tmp_path / "t.txt").write_text("a b\nc\n\n\n  \nd e\r\nf\n\nlast", encoding="utf-8")
    src = lambda unit, **kw: Source(tmp_path / "t.txt", ReadOptions(unit=unit, **kw))  # noqa: E731
    assert _docs(src("auto")) == _docs(src("paragraph")) == ["a b\nc", "d e\r\nf", "last"]
    assert _docs(src("line")) == ["a b", "c", "d e", "f", "last"]
    assert _docs(src("line", keep_empty=True)) == ["a b", "c", "", "", "  ", "d e", "f", "", "last"]
    assert _docs(src("line", keep_line_end=True, keep_empty=True))[:3] == ["a b\n", "c\n", "\n"]
    assert _docs(src("line", strip=True, keep_empty=True))[4] == ""
    assert _docs(src("file")) == ["a b\nc\n\n\n  \nd e\r\nf\n\nlast"]
    assert Source(tmp_path).unit_for("text") == "file"  # a folder's text files are documents


def test_jsonl_field_compressed_files_and_folder_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", ["two", "three"], field="body")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write("one")
    (tmp_path / ".hidden.txt").write_text("never")
    (tmp_path / "notes.md").write_text("not a corpus file")
    src = Source(tmp_path, ReadOptions(field="body"))
    assert [p.name for p in src.files] == ["a.txt.gz", "b.jsonl"] and src.total_bytes is None
    assert _docs(src) == ["one", "two", "three"]
    with pytest.raises(SourceError, match="no field 'text'; pass --field"):
        _docs(Source(tmp_path / "b.jsonl"))


def test_named_errors(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\nbad \xff byte\n")
    with pytest.raises(SourceError, match=r"bad.txt, byte 10: not UTF-8 text"):
        _docs(Source(tmp_path / "bad.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 3}\nnot json\n')
    with pytest.raises(SourceError, match=r"bad.jsonl, byte 15: field 'text' is a int, not a string"):
        _docs(Source(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        Source(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no supported file"):
        Source(tmp_path / "empty")


def test_a_document_too_large_to_hold_is_refused(tmp_path, monkeypatch):
    """Reading holds at most a chunk plus one document: a longer document is refused, not loaded."""
    monkeypatch.setattr(sources, "MAX_DOC_BYTES", 10)
    (tmp_path / "t.txt").write_text("short\n\nthis paragraph\nis long and longer\n\nend\n")
    with pytest.raises(SourceError, match="a paragraph of more than 10 bytes; use --unit line"):
        _docs(Source(tmp_path / "t.txt"), chunk_bytes=9)
    with pytest.raises(SourceError, match="a document of more than 10 bytes; use --unit"):
        _docs(Source(tmp_path / "t.txt", ReadOptions(unit="file")))
    with pytest.raises(SourceError, match="a line of more than 10 bytes"):
        _docs(Source(tmp_path / "t.txt", ReadOptions(unit="line")), chunk_bytes=4)


def test_hub_name_offline_error(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(SourceError, match="not a file or folder here. As a Hugging Face hub dataset it needs"):
        Source("openwebtext")
    with pytest.raises(SourceError, match=r"load_dataset\('Skylion007/openwebtext', split='train'\).to_json"):
        Source("Skylion007/openwebtext")


def test_parquet_without_pyarrow_is_a_named_error(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(SourceError, match="needs the 'pyarrow' package, which is not installed: pip install pyarrow"):
        Source(tmp_path / "d.parquet")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_and_arrow_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(30)
    table = pa.table({"text": docs, "n": list(range(30))})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=7)
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=5)
    for name in ("d.parquet", "d.arrow"):
        src = Source(tmp_path / name)
        assert _docs(src) == docs
        chunks = list(src.chunks((0, 0), 300))
        assert _docs(src, chunks[1].position) == docs[len(_items(src, chunks[:2])):]
    with pytest.raises(SourceError, match="no column 'body'"):
        _docs(Source(tmp_path / "d.parquet", ReadOptions(field="body")))
