"""The heartbeat gate: a worker whose Redis heartbeat (``silvasonic:status:<slug>``,
docs/design/0012-upstream.md §4) is missing, stale, unreadable or reports an error is recreated —
but only once it has had a start-up grace period, so a worker that is still importing Celery is not
killed in a loop (upstream has no grace: docs/design/0012-upstream.md §3).
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

import redis

STATUS_KEY = "silvasonic:status:{instance_id}"
# upstream's gate: older than 45 s is stale (3 missed 10 s heartbeats plus slack)
DEFAULT_STALE_AFTER_S = 45.0
# a worker gets this long after (re)start before its heartbeat is demanded: Celery boots in
# seconds, but a loaded 2-core machine starting several workers at once took 30 s in our tests
DEFAULT_GRACE_S = 90.0
HEALTHY_STATES = ("ok", "starting")


class HeartbeatProblem(StrEnum):
    missing = "heartbeat_missing"  # no key: never published, or expired (TTL ≥ 30 s)
    stale = "heartbeat_stale"  # timestamp older than the stale limit
    invalid = "heartbeat_invalid"  # not JSON, or no usable timestamp
    reports_error = "heartbeat_reports_error"  # health.status not ok/starting


def heartbeat_problem(
    client: redis.Redis[Any],
    instance_id: str,
    *,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    now: float | None = None,
) -> HeartbeatProblem | None:
    """What is wrong with ``instance_id``'s heartbeat, or None when it is fine.

    Raises ``redis.RedisError`` when Redis cannot be asked: the caller must then skip the gate
    (a Redis outage is no reason to recreate every worker).
    """
    raw = client.get(STATUS_KEY.format(instance_id=instance_id))
    if raw is None:
        return HeartbeatProblem.missing
    try:
        payload = json.loads(raw)
        timestamp = float(payload["timestamp"])
    except (ValueError, TypeError, KeyError):
        return HeartbeatProblem.invalid
    if (now if now is not None else time.time()) - timestamp > stale_after_s:
        return HeartbeatProblem.stale
    health = payload.get("health")
    status = health.get("status") if isinstance(health, dict) else None
    if status not in HEALTHY_STATES:
        return HeartbeatProblem.reports_error
    return None
