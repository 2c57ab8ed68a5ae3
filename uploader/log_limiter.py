"""At most one log line per (event, remote) per period for failures that repeat.

A remote that fails the same way for hours (a wrong password, a dead server) must not fill a
station's SD card: the first occurrence is logged as it happens, later ones within
:data:`PERIOD_S` are only counted, and the first one after the period is logged with
``repeated=N`` (how many were held back). Thread-safe; the clock can be injected for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: one line per event and remote per this many seconds
PERIOD_S = 60.0


class RepeatLimiter:
    """Decides whether a repeated log line is written now, and with which count."""

    def __init__(self, period_s: float = PERIOD_S, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def admit(self, event: str, key: str) -> int | None:
        """None: do not log now (counted). Else log, with this many held back since the last
        line (0 for the first)."""
        now = self._clock()
        with self._lock:
            last = self._last.get((event, key))
            if last is not None and now - last < self.period_s:
                self._held[(event, key)] = self._held.get((event, key), 0) + 1
                return None
            self._last[(event, key)] = now
            return self._held.pop((event, key), 0)

    def reset(self, key: str) -> None:
        """The remote worked again: its next failure is news, logged at once."""
        with self._lock:
            for entry in [k for k in self._last if k[1] == key]:
                self._last.pop(entry, None)
                self._held.pop(entry, None)


_LIMITER = RepeatLimiter()


def log_limited(emit: Callable[..., Any], event: str, key: str, **fields: Any) -> None:
    """``emit(event, **fields)`` unless the same event for ``key`` was logged within the
    period; a line after held-back ones carries ``repeated=N``."""
    held = _LIMITER.admit(event, key)
    if held is None:
        return
    if held:
        fields["repeated"] = held
    emit(event, **fields)


def clear() -> None:
    """Forget everything held back (a new process, or a test)."""
    global _LIMITER
    _LIMITER = RepeatLimiter()


def reset(key: str) -> None:
    """Forget ``key``'s held-back lines (its remote recovered)."""
    _LIMITER.reset(key)
