"""How a training stops early: signals (SIGINT, SIGTERM) and non-finite numbers.

Signals. While :class:`StopRequests` is active, SIGINT (Ctrl-C) and SIGTERM (what ``kill``,
``docker stop``, SLURM and torchrun send) do not interrupt the code where it happens to be: the
handler only records the request, and the training loop honours it at the next step boundary,
where the model, optimizer, scheduler and EMA all hold the same step. There it saves a checkpoint
and raises :class:`Interrupted`, which the command line reports in one line (exit status 128 +
the signal's number: 130 for SIGINT, 143 for SIGTERM). A second signal stops at once: it raises
``KeyboardInterrupt`` where the code is, and nothing more is saved (the last checkpoint stands).
Handlers can only be installed from the main thread; elsewhere the process's own handling applies.

Non-finite numbers. :class:`NonFiniteError` stops a run at the first NaN or infinite loss,
gradient norm or validation bound, before the optimizer applies that step and before anything is
saved, so the last checkpoint on disk holds finite weights.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

from ._checks import NonFiniteError

__all__ = ["Interrupted", "NonFiniteError", "StopRequests", "require_finite", "signal_name"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (or a KeyboardInterrupt); ``checkpoint`` is what was saved (None:
    nothing, the last checkpoint on disk stands). A KeyboardInterrupt, so that code that catches
    Ctrl-C keeps working.

    Attributes:
        signum: the signal's number (SIGINT for a plain KeyboardInterrupt).
        step: the step the run stopped at.
        checkpoint: the checkpoint folder written on the way out, or None.
        exit_code: 128 + signum, the shell's convention for a process ended by that signal.
    """

    def __init__(self, message: str, signum: int, step: int, checkpoint: Path | None = None):
        super().__init__(message)
        self.message, self.signum, self.step, self.checkpoint = message, signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequests:
    """Context manager: SIGINT and SIGTERM become a request (:attr:`signum`) honoured at the next step
    boundary; a second one raises KeyboardInterrupt at once. The previous handlers come back on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: stop now, save nothing more
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def require_finite(what: str, values: dict[str, float], hint: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` and the values when any is NaN or infinite."""
    if all(math.isfinite(v) for v in values.values()):
        return
    shown = ", ".join(f"{k} {v}" for k, v in values.items())
    raise NonFiniteError(f"{what}: {shown}; {hint}")
