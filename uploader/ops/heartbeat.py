"""The Redis heartbeat, in upstream's shape (docs/design/0012-upstream.md §4):
``SET silvasonic:status:<id>`` with a TTL of at least 30 s, then ``PUBLISH silvasonic:status``.
Fire and forget: a publish error is logged, never raised (a Redis outage must not stop uploads)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog

STATUS_KEY = "silvasonic:status:{instance_id}"
STATUS_CHANNEL = "silvasonic:status"
MIN_TTL_S = 30

log = structlog.get_logger(__name__)


def heartbeat_ttl(interval_s: float) -> int:
    return max(MIN_TTL_S, int(interval_s * 3))


def resources() -> dict[str, Any]:
    """What upstream's ResourceCollector reports that we can read without psutil."""
    try:
        with open("/proc/self/status") as fh:
            rss_kb = next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
    except OSError:
        rss_kb = 0
    return {"memory_mb": round(rss_kb / 1024, 1), "num_threads": threading.active_count()}


def build_payload(
    service: str,
    instance_id: str,
    health: dict[str, Any],
    meta: dict[str, Any],
    activity: str = "idle",
) -> dict[str, Any]:
    return {
        "service": service,
        "instance_id": instance_id,
        "timestamp": round(time.time(), 3),
        "health": health,
        "activity": activity,
        "meta": {"resources": resources(), **meta},
    }


def publish(client: redis.Redis[Any], payload: dict[str, Any], interval_s: float) -> bool:
    """One heartbeat; True when it reached Redis."""
    data = json.dumps(payload, default=str)
    try:
        client.set(
            STATUS_KEY.format(instance_id=payload["instance_id"]),
            data,
            ex=heartbeat_ttl(interval_s),
        )
        client.publish(STATUS_CHANNEL, data)
        return True
    except redis.RedisError as exc:
        log.warning("heartbeat.publish_failed", error=type(exc).__name__)
        return False


class Heartbeat:
    """Publishes ``make_payload()`` every ``interval_s`` on a daemon thread, the first at once."""

    def __init__(
        self,
        client: redis.Redis[Any],
        interval_s: float,
        make_payload: Callable[[], dict[str, Any]],
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.make_payload = make_payload
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                publish(self.client, self.make_payload(), self.interval_s)
            except Exception as exc:  # a heartbeat must never kill the worker
                log.warning("heartbeat.build_failed", error=type(exc).__name__, pid=os.getpid())
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)
