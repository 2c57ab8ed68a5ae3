"""Heartbeat payload and TTL in upstream's shape (docs/design/0012-upstream.md §4); a publish that cannot reach
Redis is logged, never raised. Publishing to a real Redis: tests/integration/test_heartbeat_redis.py."""

from __future__ import annotations

import socket
import time

import pytest
import redis
from structlog.testing import capture_logs

from uploader.ops.health import HealthMonitor
from uploader.ops.heartbeat import (
    MIN_TTL_S,
    STATUS_CHANNEL,
    STATUS_KEY,
    build_payload,
    heartbeat_ttl,
    publish,
    resources,
)


def test_payload_has_the_contract_shape() -> None:
    health = HealthMonitor().snapshot()
    before = time.time()
    payload = build_payload(
        "uploader",
        "nextcloud-main",
        health,
        {"pending_count": 3, "current_remote_slug": "nextcloud-main"},
    )
    assert set(payload) == {"service", "instance_id", "timestamp", "health", "activity", "meta"}
    assert payload["service"] == "uploader"
    assert payload["instance_id"] == "nextcloud-main"
    assert isinstance(payload["timestamp"], float)
    assert before - 0.001 <= payload["timestamp"] <= time.time() + 0.001
    assert payload["timestamp"] == round(payload["timestamp"], 3)
    assert payload["health"] == health
    assert payload["activity"] == "idle"
    assert payload["meta"]["pending_count"] == 3
    assert payload["meta"]["current_remote_slug"] == "nextcloud-main"
    assert set(payload["meta"]["resources"]) >= {"memory_mb", "num_threads"}


def test_activity_is_passed_through() -> None:
    payload = build_payload("uploader", "x", {}, {}, activity="uploading")
    assert payload["activity"] == "uploading"


def test_resources_are_numbers() -> None:
    res = resources()
    assert isinstance(res["memory_mb"], float) and res["memory_mb"] > 0
    assert isinstance(res["num_threads"], int) and res["num_threads"] >= 1


@pytest.mark.parametrize(("interval", "ttl"), [(10, 30), (0.5, 30), (9.9, 30), (11, 33), (60, 180)])
def test_ttl_is_three_intervals_and_at_least_thirty_seconds(interval: float, ttl: int) -> None:
    assert heartbeat_ttl(interval) == ttl
    assert heartbeat_ttl(interval) >= MIN_TTL_S == 30


def test_key_and_channel_names() -> None:
    assert STATUS_KEY.format(instance_id="nas") == "silvasonic:status:nas"
    assert STATUS_CHANNEL == "silvasonic:status"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_publish_to_an_unreachable_redis_is_logged_not_raised() -> None:
    client = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=1)
    payload = build_payload("uploader", "nas", {}, {})
    with capture_logs() as logs:
        assert publish(client, payload, 10) is False
    assert [e["event"] for e in logs] == ["heartbeat.publish_failed"]
    assert logs[0]["error"] == "ConnectionError"
