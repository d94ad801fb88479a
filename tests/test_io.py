import json
import os

import pytest

from ddlm import _io
from ddlm._io import atomic_write_bytes, atomic_write_json, atomic_write_text


def strays(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_writes_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "f.txt"
    assert atomic_write_text(path, "one") == path
    assert path.read_text() == "one"
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert strays(path.parent) == []


def test_no_overwrite_refuses_an_existing_file(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"x": 1}, overwrite=False)
    with pytest.raises(FileExistsError, match="already exists"):
        atomic_write_json(path, {"x": 2}, overwrite=False)
    assert json.loads(path.read_text()) == {"x": 1}
    assert strays(tmp_path) == []


def test_no_overwrite_never_clobbers_a_file_that_appears_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    real = os.link

    def racing(src, dst):
        path.write_text("theirs")  # another writer finishes first
        return real(src, dst)

    monkeypatch.setattr(_io.os, "link", racing)
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "ours", overwrite=False)
    assert path.read_text() == "theirs"
    assert strays(tmp_path) == []


def test_a_failed_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def failing(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(_io.os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert strays(tmp_path) == []


def test_json_format_and_nan_refused(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": [1, 2]})
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ]\n}\n'
    atomic_write_json(path, {"a": 1}, indent=None)
    assert path.read_text() == '{"a": 1}\n'
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "nan.json", {"a": float("nan")})
    assert not (tmp_path / "nan.json").exists()
