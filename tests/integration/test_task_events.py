"""Celery task events (what Flower shows) follow ``SILVASONIC_TASK_EVENTS``: on by default, off
when a station switches them off, and on again when a monitor asks at run time (Flower's
``enable_events``). Watched on the real Redis, as Flower receives them."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.factories import make_recording_with_wav
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import seed_station, success_rows

WORKER = "uploader-archive@"


class EventTap:
    """Every Celery event published on this Redis database (kombu's fanout is PUBLISH)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("*celeryev*")
        self.events: list[dict[str, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if msg is None:
                continue
            envelope = json.loads(msg["data"])
            body = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            decoded = json.loads(body)  # one event, or a buffered batch of them
            self.events.extend(decoded if isinstance(decoded, list) else [decoded])

    def task_events_from(self, prefix: str) -> list[str]:
        return [
            str(e["type"])
            for e in list(self.events)
            if str(e.get("type", "")).startswith("task-")
            and str(e.get("hostname", "")).startswith(prefix)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()


@pytest.fixture
def tap(stack: Stack) -> Iterator[EventTap]:
    t = EventTap(stack.redis_url)
    yield t
    t.close()


def _archive(tmp_path: Path) -> dict[str, object]:
    folder = tmp_path / "archive"
    folder.mkdir()
    return {"type": "local", "target_path": str(folder)}


def test_a_worker_sends_task_events_by_default(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    seed_station(engine, stack.workspace, recordings=2, remotes={"archive": _archive(tmp_path)})
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == 2, 90)
    assert wait_until(lambda: "task-succeeded" in tap.task_events_from(WORKER), 10)
    assert "task-received" in tap.task_events_from(WORKER)


def test_switched_off_a_worker_sends_none_until_a_monitor_asks(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    # given a worker with task events switched off
    ids = seed_station(
        engine, stack.workspace, recordings=2, remotes={"archive": _archive(tmp_path)}
    )
    stack.start_worker("archive", SILVASONIC_TASK_EVENTS="0")
    stack.start_dispatcher()
    # then its pairs are uploaded without a single task event
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 90)
    assert tap.task_events_from(WORKER) == []
    # when a monitor asks for events at run time (what Flower does, periodically)
    app = Celery(broker=stack.redis_url)
    try:
        assert wait_until(
            lambda: any(
                r
                for r in app.control.enable_events(reply=True, timeout=1.0) or []
                if any(k.startswith(WORKER) for k in r)
            ),
            30,
        )
        # then the next pairs are reported
        with Session(engine) as session:
            for _ in range(2):
                make_recording_with_wav(session, stack.workspace, seconds=1.0)
            session.commit()
        assert wait_until(lambda: "task-succeeded" in tap.task_events_from(WORKER), 90)
    finally:
        app.close()


def test_a_step_that_ends_early_reaches_a_final_state_in_flower(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    """A stale lease ends the chain at its first step: Flower must see the task finish (it
    raised Ignore before, and stayed STARTED for good), with an outcome and no path."""
    ids = seed_station(
        engine, stack.workspace, recordings=1, remotes={"archive": _archive(tmp_path)},
        uploader={"enabled": False},
    )  # fmt: skip
    stack.start_worker("archive")
    app = Celery(broker=stack.redis_url)
    try:
        stale = "00000000-0000-0000-0000-000000000001"
        app.send_task("uploader.encode", args=[ids[0], "archive", stale], queue="upload.archive")
        assert wait_until(lambda: "task-succeeded" in tap.task_events_from(WORKER), 60)
    finally:
        app.close()
    succeeded = [e for e in tap.events if e.get("type") == "task-succeeded"]
    assert "outcome" in str(succeeded[0].get("result")) and "/" not in str(succeeded[0]["result"])
