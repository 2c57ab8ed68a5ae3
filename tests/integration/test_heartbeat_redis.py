"""The heartbeat against a real Redis: the status key with its TTL, the status channel, and
the background publisher (first beat at once, survives a failing payload builder)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from uploader.ops.health import HealthMonitor
from uploader.ops.heartbeat import STATUS_CHANNEL, Heartbeat, build_payload, publish

# Other suites may publish on the shared channel: every test filters by its own instance id.


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def instance_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _wait_for_message(pubsub: Any, instance_id: str, timeout_s: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if msg and msg["type"] == "message":
            data = json.loads(msg["data"])
            if data.get("instance_id") == instance_id:
                return dict(data)
    raise AssertionError(f"no heartbeat for {instance_id} within {timeout_s} s")


def test_publish_sets_the_key_with_ttl_and_publishes(
    client: redis.Redis[bytes], instance_id: str
) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(STATUS_CHANNEL)
    try:
        payload = build_payload(
            "uploader", instance_id, HealthMonitor().snapshot(), {"pending_count": 0}
        )

        assert publish(client, payload, interval_s=10) is True

        stored = client.get(f"silvasonic:status:{instance_id}")
        assert stored is not None and json.loads(stored) == payload
        assert 25 <= client.ttl(f"silvasonic:status:{instance_id}") <= 30
        assert _wait_for_message(pubsub, instance_id) == payload
    finally:
        pubsub.close()


def test_long_interval_gives_three_intervals_of_ttl(
    client: redis.Redis[bytes], instance_id: str
) -> None:
    publish(client, build_payload("uploader", instance_id, {}, {}), interval_s=60)
    assert 170 <= client.ttl(f"silvasonic:status:{instance_id}") <= 180


def test_heartbeat_thread_publishes_at_once_and_keeps_going(
    client: redis.Redis[bytes], instance_id: str
) -> None:
    monitor = HealthMonitor()
    beats = 0

    def make() -> dict[str, Any]:
        nonlocal beats
        beats += 1
        return build_payload("uploader", instance_id, monitor.snapshot(), {"beat": beats})

    pubsub = client.pubsub()
    pubsub.subscribe(STATUS_CHANNEL)
    hb = Heartbeat(client, interval_s=0.2, make_payload=make)
    try:
        hb.start()
        first = _wait_for_message(pubsub, instance_id)
        assert first["meta"]["beat"] == 1
        second = _wait_for_message(pubsub, instance_id)
        assert second["meta"]["beat"] > 1
    finally:
        hb.stop()
        pubsub.close()
    assert not hb._thread.is_alive()


def test_failing_payload_builder_does_not_stop_the_heartbeat(
    client: redis.Redis[bytes], instance_id: str
) -> None:
    calls = 0

    def make() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database gone")
        return build_payload("uploader", instance_id, {}, {})

    hb = Heartbeat(client, interval_s=0.1, make_payload=make)
    with capture_logs() as logs:
        hb.start()
        try:
            deadline = time.monotonic() + 15
            while client.get(f"silvasonic:status:{instance_id}") is None:
                assert time.monotonic() < deadline, "heartbeat stopped after a failing builder"
                time.sleep(0.05)
        finally:
            hb.stop()
    assert "heartbeat.build_failed" in [e["event"] for e in logs]
