"""The nudge: ``PUBLISH silvasonic:nudge "reconcile"`` after a change to remotes or uploader
settings makes the controller reconcile now instead of at its next interval (ADR-0017,
contract "must match" 12). Upstream's ``NudgeSubscriber``: only that payload counts, and a lost
connection is retried every 5 s for as long as the controller runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
import structlog

NUDGE_CHANNEL = "silvasonic:nudge"
NUDGE_PAYLOAD = "reconcile"
RECONNECT_DELAY_S = 5.0

log = structlog.get_logger("controller")


def send_nudge(client: redis.Redis[Any]) -> int:
    """Ask every listening controller to reconcile now; returns how many heard it."""
    return int(client.publish(NUDGE_CHANNEL, NUDGE_PAYLOAD))


class NudgeSubscriber:
    """Calls ``on_nudge`` for each ``reconcile`` message, on a daemon thread."""

    def __init__(
        self,
        redis_url: str,
        on_nudge: Callable[[], None],
        *,
        reconnect_delay_s: float = RECONNECT_DELAY_S,
    ) -> None:
        self._url = redis_url
        self._on_nudge = on_nudge
        self._delay = reconnect_delay_s
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nudge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._delay + 2)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            client = redis.Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(NUDGE_CHANNEL)
                self.subscribed.set()
                if failing:
                    log.info("controller.nudge_reconnected")
                    failing = False
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    text = data.decode(errors="replace") if isinstance(data, bytes) else data
                    if text == NUDGE_PAYLOAD:
                        log.debug("controller.nudge_received")
                        self._on_nudge()
            except redis.RedisError as exc:
                self.subscribed.clear()
                if not failing:
                    log.warning("controller.nudge_unavailable", error=type(exc).__name__)
                    failing = True
                self._stop.wait(self._delay)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except redis.RedisError:
                    pass
