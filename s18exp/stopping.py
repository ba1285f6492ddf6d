"""Graceful stops: SIGTERM or Ctrl-C lets the current step finish, then the loop saves and stops.

A second signal while the first is being handled stops at once (KeyboardInterrupt), so a stuck
save can still be broken off.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Interrupted(Exception):
    """Training stopped on a signal after saving `checkpoints/last.pt`."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoints/last.pt holds the state to resume from")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Catches SIGTERM and SIGINT while active; `signum` is the first one received, or None."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
