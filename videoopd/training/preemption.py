"""SIGTERM / SIGINT as a request to stop cleanly: the loop finishes its optimizer step, saves a
checkpoint and raises :class:`Preempted`; the command exits with ``128 + signal`` (143 for
SIGTERM, 130 for SIGINT), the codes schedulers read as "killed by a signal, retry". A second
SIGINT (Ctrl-C twice) stops at once; a repeated SIGTERM (a launcher passing its own on) does not."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__: list[str] = []  # nothing here is promised: docs/api.md


class Preempted(Exception):
    """The run stopped on a signal after saving ``checkpoint`` at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint} "
            "(continue with --resume-from-checkpoint auto)"
        )


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT set :attr:`signum` instead of killing
    the process. Handlers are installed only in the main thread (where Python delivers them)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGTERM:
            # launchers (torchrun's agent) pass their own SIGTERM on: keep finishing the step
            return
        if self.signum == signum:  # Ctrl-C twice: stop now, the way the process would have
            previous = self.previous.get(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        if self.announce:
            print(
                f"received {signal.Signals(signum).name}: finishing the current optimizer step, then saving a "
                "checkpoint" + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""),
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous.clear()
