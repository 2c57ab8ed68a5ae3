"""Is this process's broker consumer still consuming? The rule behind the ``consumer``
component of ``/healthy`` and behind the dispatcher's control-worker watchdog.

Why it exists: a Celery worker's health server and heartbeat run on their own threads, so they
keep answering while the worker's event loop — the one thread that takes messages off Redis —
is stuck. After a Redis restart we measured exactly that (kombu's pub/sub read blocked without
a timeout on a connection redis-py had silently reopened without its subscriptions): the
process looked healthy and never consumed again. The worker feeds this watch from inside the
event loop (``loop_alive``, a timer on the loop, every few seconds whether or not work is
queued), from the consumer's start and stop (``consuming`` / ``lost``), and from a side thread
that asks Redis for a PING (``broker_reachable``).

The verdict is unhealthy in two cases only, each after ``stall_after_s``:

* ``event_loop_stalled``: the consumer is connected but its loop has not ticked; an idle
  worker's loop ticks, and so does a busy one's (the pool child runs the task, not the loop).
* ``not_reconnected``: the consumer lost its connection and Redis has been answering PINGs for
  that long without the consumer coming back.

While Redis itself does not answer the consumer is reported as waiting, not as broken: a Redis
outage is no reason to recreate every worker (they would only come back to the same outage).
Domain code: no Celery import; the clock is injected so the rule is tested without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_STALL_AFTER_S = 60.0


@dataclass(frozen=True)
class ConsumerVerdict:
    """One look at the consumer: ``healthy`` decides ``/healthy``; ``state`` is a stable word
    for logs and the heartbeat (``starting``, ``consuming``, ``reconnecting``,
    ``waiting_for_broker``, ``event_loop_stalled``, ``not_reconnected``)."""

    healthy: bool
    state: str
    details: dict[str, Any] = field(default_factory=dict)


class ConsumerWatch:
    """Thread-safe: the event loop, the consumer's start/stop and a probe thread all write."""

    def __init__(
        self,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be positive")
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._connected = False
        self._ever_connected = False
        self._last_tick: float | None = None
        # not connected yet counts from creation: a consumer that never connects while Redis
        # answers is as stuck as one that never reconnects
        self._disconnected_since: float | None = clock()
        self._broker_ok_since: float | None = None
        self._last_error: str | None = None

    def consuming(self) -> None:
        """The consumer is connected and its loop is about to run."""
        with self._lock:
            now = self._clock()
            self._connected = True
            self._ever_connected = True
            self._disconnected_since = None
            self._last_tick = now

    def loop_alive(self) -> None:
        """A tick from inside the event loop: it is still turning."""
        with self._lock:
            if self._connected:
                self._last_tick = self._clock()

    def lost(self, reason: str = "") -> None:
        """The consumer stopped (connection lost, or shutting down)."""
        with self._lock:
            if self._connected or self._disconnected_since is None:
                self._disconnected_since = self._clock()
            self._connected = False
            if reason:
                self._last_error = reason

    def broker_reachable(self, ok: bool) -> None:
        """The result of a PING to Redis from a thread other than the event loop."""
        with self._lock:
            if not ok:
                self._broker_ok_since = None
            elif self._broker_ok_since is None:
                self._broker_ok_since = self._clock()

    def verdict(self) -> ConsumerVerdict:
        with self._lock:
            now = self._clock()
            limit = self.stall_after_s
            if self._connected:
                silent = now - (self._last_tick if self._last_tick is not None else now)
                if silent > limit:
                    return ConsumerVerdict(
                        False,
                        "event_loop_stalled",
                        {"silent_s": round(silent, 1), "limit_s": limit},
                    )
                return ConsumerVerdict(True, "consuming")
            down_since = self._disconnected_since if self._disconnected_since is not None else now
            details: dict[str, Any] = {"down_s": round(now - down_since, 1)}
            if self._last_error:
                details["last_error"] = self._last_error
            if self._broker_ok_since is None:
                return ConsumerVerdict(True, "waiting_for_broker", details)
            waited = now - max(down_since, self._broker_ok_since)
            if waited > limit:
                details.update(broker_answering_s=round(waited, 1), limit_s=limit)
                return ConsumerVerdict(False, "not_reconnected", details)
            return ConsumerVerdict(
                True, "reconnecting" if self._ever_connected else "starting", details
            )
