"""The lock of a run folder: at most one training uses a ``run_dir`` at a time.

A training holds ``run_dir/train.lock`` from before it reads the folder's checkpoints until it
exits, on every path (finished, an error, Ctrl-C, SIGTERM); only SIGKILL or a crash leaves the file
behind. The file is created with ``O_CREAT | O_EXCL`` and holds one JSON object: the holder's
``pid``, ``host``, ``started`` (UTC, ISO 8601), ``command`` and a random ``token``. While it runs,
the holder also keeps an exclusive ``flock`` on the file, which the kernel drops when the process
dies, however it dies.

A second training on the folder fails with :class:`RunInUseError` naming the folder and the holder.

Stale rule: a lock left behind by a holder that is no longer running is taken over, with a message
saying so. A holder is known not to be running when nobody holds the file's ``flock`` (on file
systems without ``flock``: when the holder's host is this host and no process has its pid). A lock
held from another host, or one whose holder may still run, is never taken over; the message says
which file to delete once that training has stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the pid rule alone
    fcntl = None

LOCK_NAME = "train.lock"


class RunInUseError(RuntimeError):
    """The run folder is locked by another training (its holder is named)."""


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that is still writing its lock file"
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def pid_running(pid) -> bool:
    """Whether a process with this pid exists on this host (an unknown pid counts as running)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell
    return True


def _try_flock(fd: int) -> bool | None:
    """True: got the exclusive flock; False: someone holds it; None: the file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


class RunLock:
    """The lock of one run folder, held by this process; :meth:`release` (or ``with``) frees it."""

    def __init__(self, run_dir: Path, path: Path, fd: int, token: str, created_dir: bool):
        self.run_dir, self.path, self._fd, self.token, self._created_dir = run_dir, path, fd, token, created_dir

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the flock; removes the run folder too
        when this lock created it and nothing else was written into it. Idempotent."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino and (_read(self.path) or {}).get(
                        "token") == self.token:
                    os.unlink(self.path)  # before the flock goes: nobody can lock this inode meanwhile
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only if empty

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: str | os.PathLike, log=print) -> RunLock:
    """Lock ``run_dir`` for a training (created with its parents if missing).

    Raises:
        RunInUseError: another training holds the folder (it and the holder are named).
        PermissionError: the folder cannot be created or written (the path is named).
    """
    run_dir = Path(run_dir)
    created_dir = not os.path.lexists(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"run_dir {str(run_dir)!r} cannot be created ({e.strerror or type(e).__name__}); "
                              "choose a run_dir in a writable folder") from None
    if not run_dir.is_dir():
        raise PermissionError(f"run_dir {str(run_dir)!r} exists and is not a folder; choose another run_dir")
    path = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)[:300], "token": secrets.token_hex(8)}
    for _ in range(20):  # retried only when the file vanished or was replaced between two calls
        try:
            fd, fresh = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                fd, fresh = os.open(path, os.O_RDWR), False
            except FileNotFoundError:
                continue  # released meanwhile
        except OSError as e:
            raise PermissionError(f"run_dir {str(run_dir)!r} is not writable (cannot create {LOCK_NAME}: "
                                  f"{e.strerror or type(e).__name__}); choose a run_dir in a writable folder") from None
        try:
            locked = _try_flock(fd)
            holder = None if fresh else _read(path)
            if locked is False:
                raise RunInUseError(_in_use(run_dir, path, holder))
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError  # unlinked (released) or replaced meanwhile: start again
            if not fresh:
                elsewhere = holder is not None and holder.get("host") != me["host"]
                if locked is None:  # no flock here: only a holder on this host whose pid is gone is stale
                    if holder is None or elsewhere or pid_running(holder.get("pid")):
                        raise RunInUseError(_in_use(run_dir, path, holder))
                elif elsewhere:  # its flock is gone, but that host may not share our lock manager
                    raise RunInUseError(_in_use(run_dir, path, holder))
                if holder is not None:
                    log(f"run_dir {str(run_dir)!r}: taking over the lock of {_describe(holder)}, which is no "
                        "longer running (it was killed or crashed)")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
            os.fsync(fd)
            return RunLock(run_dir, path, fd, me["token"], created_dir)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
    raise RunInUseError(f"run_dir {str(run_dir)!r}: could not take {path} (it kept changing); is another "
                        "training starting on the same folder?")


def _in_use(run_dir: Path, path: Path, holder: dict | None) -> str:
    return (f"run_dir {str(run_dir)!r} is in use by another training ({_describe(holder)}); wait for it to "
            f"finish or stop it, or choose another run_dir; if no training is using the folder, delete {path}")


def acquire_on_rank0(run_dir: str | os.PathLike, d, log=print, then=None) -> RunLock | None:
    """:func:`acquire` for a training of ``d.world`` processes (a ``ddlm.parallel.Dist``): rank 0 takes
    the lock (and calls ``then()`` while holding it), every rank learns the outcome, so all fail
    together when the folder is in use. Returns the lock on rank 0, None elsewhere."""
    lock, error = None, None
    if d.main:
        try:
            lock = acquire(run_dir, log)
            if then is not None:
                then()
        except Exception as e:  # every rank must hear of it
            if lock is not None:
                lock.release()
            error = e
    if d.world > 1:
        import torch.distributed as dist

        shared = [None if error is None else (type(error).__name__, str(error))]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None and error is None:
            kind = {"RunInUseError": RunInUseError, "PermissionError": PermissionError}
            error = kind.get(shared[0][0], RuntimeError)(shared[0][1])
    if error is not None:
        raise error
    return lock
