"""The evaluator against a real database (seed Phase 2 integration table, and the rules of
``active_remotes`` as the controller sees them), the nudge and the queue purge against a real
Redis."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
import structlog
from sqlalchemy.orm import Session

from controller_ext.evaluator import UploaderEvaluator
from controller_ext.nudge import NudgeSubscriber, send_nudge
from controller_ext.queues import purge_queue_keys
from tests.conftest import TEST_LOCAL_REMOTE_ROOTS
from tests.factories import make_remote, set_config
from uploader.db.models import StorageRemote


@pytest.fixture(autouse=True)
def controller_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("SILVASONIC_", "POSTGRES_")) and not name.startswith(
            "SILVASONIC_TEST_"
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SILVASONIC_WORKSPACE_PATH", str(tmp_path / "workspace"))
    monkeypatch.setenv("SILVASONIC_LOCAL_REMOTE_ROOTS", TEST_LOCAL_REMOTE_ROOTS)  # tmp_path


def local_remote(session: Session, slug: str, tmp: Path, **kw: object) -> None:
    make_remote(session, slug, type="local", target_path=str(tmp / slug), **kw)  # type: ignore[arg-type]


def test_active_remote_produces_spec(session: Session, tmp_path: Path) -> None:
    local_remote(session, "usb-archive", tmp_path)

    specs = UploaderEvaluator().evaluate(session)

    assert [s.name for s in specs] == ["silvasonic-uploader-usb-archive"]
    assert specs[0].environment["SILVASONIC_STORAGE_REMOTE_SLUG"] == "usb-archive"


def test_deactivated_remote_disappears(session: Session, tmp_path: Path) -> None:
    local_remote(session, "usb-archive", tmp_path)
    evaluator = UploaderEvaluator()
    assert len(evaluator.evaluate(session)) == 1

    remote = session.get_one(StorageRemote, "usb-archive")
    remote.is_active = False
    session.flush()

    assert evaluator.evaluate(session) == []
    assert evaluator.required_slugs == frozenset()  # retired for good: its queue may go


def test_global_pause_produces_no_specs_but_keeps_remotes_required(
    session: Session, tmp_path: Path
) -> None:
    local_remote(session, "a", tmp_path)
    set_config(session, "uploader", {"enabled": False})
    evaluator = UploaderEvaluator()

    assert evaluator.evaluate(session) == []
    assert evaluator.required_slugs == frozenset({"a"})


def test_max_uploaders_cut_in_created_at_then_slug_order(session: Session, tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    local_remote(session, "zz-oldest", tmp_path, created_at=t0)
    local_remote(session, "b-same", tmp_path, created_at=t0 + timedelta(days=1))
    local_remote(session, "a-same", tmp_path, created_at=t0 + timedelta(days=1))
    local_remote(session, "newest", tmp_path, created_at=t0 + timedelta(days=2))
    set_config(session, "system", {"max_uploaders": 3})

    specs = UploaderEvaluator().evaluate(session)

    assert [s.device_id for s in specs] == ["zz-oldest", "a-same", "b-same"]


def test_misconfigured_remote_skipped_with_one_warning(session: Session, tmp_path: Path) -> None:
    local_remote(session, "good", tmp_path)
    make_remote(session, "bad-dav", type="webdav", config={"url": "https://dav.example"})
    evaluator = UploaderEvaluator()

    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            specs = evaluator.evaluate(session)

    assert [s.device_id for s in specs] == ["good"]
    warnings = [e for e in logs if e["event"] == "controller.remote_misconfigured"]
    assert len(warnings) == 1 and warnings[0]["remote"] == "bad-dav"
    assert "user" in warnings[0]["detail"]  # says what to fix


def test_nudge_wakes_the_subscriber(redis_url: str) -> None:
    woken = threading.Event()
    subscriber = NudgeSubscriber(redis_url, woken.set, reconnect_delay_s=0.2)
    subscriber.start()
    try:
        assert subscriber.subscribed.wait(10)
        client = redis.Redis.from_url(redis_url)
        client.publish("silvasonic:nudge", "something else")
        time.sleep(0.3)
        assert not woken.is_set()  # only "reconcile" counts

        assert send_nudge(client) >= 1  # pub/sub spans Redis databases: others may listen
        assert woken.wait(5)
    finally:
        subscriber.stop()


def test_purge_removes_every_key_kombu_made_for_the_queue(redis_url: str) -> None:
    # given: queue upload.gone as Celery's Redis transport lays it out, with priorities
    k: Any = kombu  # kombu ships no type hints
    with k.Connection(redis_url) as conn:
        for name in ("upload.gone", "upload.kept"):
            queue = k.Queue(name, k.Exchange(name), routing_key=name, max_priority=9)
            producer = conn.Producer()
            for priority in (0, 3, 9):
                producer.publish({"n": priority}, exchange=queue.exchange, routing_key=name,
                                 declare=[queue], priority=priority)  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    before = {k.decode() for k in client.keys("*upload.gone*")}
    assert "upload.gone" in before and len(before) >= 4

    # when
    deleted = purge_queue_keys(client, "gone")

    # then
    assert deleted == len(before)
    assert client.keys("*upload.gone*") == []
    assert client.keys("*upload.kept*") != []
