"""Atomic file writes: the one way ddlm writes a file that a reader or a crash must never see half written.

The data goes to a temporary file ``.<name>.tmp-<16 hex>`` beside the target, is flushed and fsynced,
then renamed over the target (``os.replace``) and the folder is fsynced: the path holds the old
complete file or the new one, never a partial one. With ``overwrite=False`` the temporary file is
hard-linked into place instead, which fails if the path exists, so a file that appeared meanwhile is
never clobbered (on file systems without hard links: checked, then renamed). The temporary file is
removed in every case.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (new and renamed files) to disk; nothing on Windows, where folders
    cannot be opened for fsync."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` at ``path`` atomically (see the module docstring); the parent folder is created.

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists (nothing is written).
    """
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{str(path)!r} already exists; not overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(8)}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the path appeared meanwhile
            except FileExistsError:
                raise FileExistsError(f"{str(path)!r} already exists; not overwritten") from None
            except OSError:  # file systems without hard links
                if os.path.lexists(path):
                    raise FileExistsError(f"{str(path)!r} already exists; not overwritten") from None
                os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` at ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (``indent``, NaN and infinity refused, a final newline) at ``path``
    atomically (see :func:`atomic_write_bytes`).

    Raises:
        ValueError: ``obj`` holds NaN or infinity (nothing is written).
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n", overwrite=overwrite)


def check_writable(path: str | os.PathLike, what: str = "output path") -> None:
    """Fail before any work if ``path`` could not be written: an existing folder must be writable
    (files go inside it); otherwise the nearest existing folder on the way to ``path`` must be a
    writable folder (files are written there by renaming, and missing folders are created there).
    Nothing is created.

    Raises:
        PermissionError: naming ``what``, the path and the folder that is in the way.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
    else:
        folder = path.absolute().parent
        while not os.path.lexists(folder):
            folder = folder.parent
        if not folder.is_dir():
            raise PermissionError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is a file, not a "
                                  "folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(path)!r} cannot be written: folder {str(folder)!r} is not writable; "
                              "choose another path or fix its permissions")
