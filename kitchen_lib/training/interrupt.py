"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (kill, SLURM, torchrun passing one on).

While `Trainer.fit` runs, `stop_signals()` replaces the handlers of both signals by one that
only notes the signal; the loop reads the note after each optimizer step (agreed among the
ranks, so all stop after the same step), saves latest.pt and raises `TrainingInterrupted`.
A second signal while the run stops does not wait: Ctrl-C raises KeyboardInterrupt at once,
SIGTERM ends the process as it would have without us. The old handlers come back after.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """The signal that asked the run to stop, if one has."""

    signum: int = 0

    def flags(self) -> list[bool]:
        """One flag per stop signal (STOP_SIGNALS' order): what a rank tells the others."""
        return [self.signum == s for s in STOP_SIGNALS]


def signal_from_flags(flags: list[bool]) -> int:
    """The signal the ranks' agreed flags stand for (Ctrl-C first), 0 if none."""
    return next((int(s) for s, up in zip(STOP_SIGNALS, flags, strict=True) if up), 0)


class TrainingInterrupted(Exception):
    """A signal stopped the run after an optimizer step; latest.pt holds it. The CLI exits 128 + signum."""

    def __init__(self, signum: int, step: int, epoch: int, resume_command: str) -> None:
        self.signum, self.step, self.epoch, self.resume_command = signum, step, epoch, resume_command
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {epoch}, optimizer step {step}; "
                         f"latest.pt is saved. Resume with:\n  {resume_command}")

    def __reduce__(self):  # travels between ranks and processes whole
        return type(self), (self.signum, self.step, self.epoch, self.resume_command)


@contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Note SIGINT and SIGTERM in the StopRequest yielded, for the block; the old handlers after.
    Outside the main thread (where Python runs no handlers) the request stays empty."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def note(signum: int, frame) -> None:
        if not request.signum:
            request.signum = signum
            return
        restore()  # asked twice: stop now, as without us
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)

    # None: a handler set outside Python; the default is the nearest we can put back
    previous = {s: signal.getsignal(s) or signal.SIG_DFL for s in STOP_SIGNALS}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    for s in STOP_SIGNALS:
        if previous[s] is not signal.SIG_IGN:  # a run started with the signal ignored (nohup, `cmd &`) keeps it so
            signal.signal(s, note)
    try:
        yield request
    finally:
        restore()
