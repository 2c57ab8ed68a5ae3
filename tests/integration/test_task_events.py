"""Celery task events (what Flower shows) follow ``SILVASONIC_TASK_EVENTS``: off by default,
on when a station switches them on, and on again when a monitor asks at run time (Flower's
``enable_events``, every 5 s): a real Flower started against workers that began without events
fills its dashboard within seconds. Watched on the real Redis, as Flower receives them."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.flower import FlowerCredentials, flower_argv, flower_env
from silvasonic_uploader.cli.local_servers import free_port
from tests.factories import make_recording_with_wav
from tests.fixtures.celery_events import EventTap
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import seed_station, success_rows

WORKER = "uploader-archive@"


@pytest.fixture
def tap(stack: Stack) -> Iterator[EventTap]:
    t = EventTap(stack.redis_url)
    yield t
    t.close()


def _archive(tmp_path: Path) -> dict[str, object]:
    folder = tmp_path / "archive"
    folder.mkdir()
    return {"type": "local", "target_path": str(folder)}


def test_a_worker_sends_task_events_when_switched_on(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    seed_station(engine, stack.workspace, recordings=2, remotes={"archive": _archive(tmp_path)})
    stack.start_worker("archive", SILVASONIC_TASK_EVENTS="1")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == 2, 90)
    assert wait_until(lambda: "task-succeeded" in tap.task_events_from(WORKER), 10)
    assert "task-received" in tap.task_events_from(WORKER)


def test_by_default_a_worker_sends_none_until_a_monitor_asks(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    # given a worker started with the defaults
    ids = seed_station(
        engine, stack.workspace, recordings=2, remotes={"archive": _archive(tmp_path)}
    )
    stack.start_worker("archive")
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


def _flower_tasks(url: str, auth: str) -> set[str]:
    request = urllib.request.Request(f"{url}/api/tasks")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return set()
    return {str(t.get("name")) for t in body.values()} if isinstance(body, dict) else set()


def test_flower_fills_its_dashboard_within_seconds_against_workers_without_events(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    """What an operator sees: workers run with the default (no events); Flower is started
    later, as `run --flower` or the compose service does, and shows the tasks soon after."""
    # given a worker draining with the defaults: no events on Redis at all
    seed_station(engine, stack.workspace, recordings=2, remotes={"archive": _archive(tmp_path)})
    stack.start_worker("archive")
    stack.start_dispatcher()
    assert wait_until(lambda: success_rows(engine, "archive") == 2, 90)
    assert tap.task_events_from(WORKER) == []
    # and recordings keep arriving, one a second, as a recorder writes them
    stop = threading.Event()

    def record() -> None:
        while not stop.wait(1.0):
            with Session(engine) as session:
                make_recording_with_wav(session, stack.workspace, seconds=1.0)
                session.commit()

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    try:
        # when Flower starts, read-only and behind basic auth, as `run --flower` starts it
        creds = FlowerCredentials("silvasonic", "flower-test-password")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack._spawn(
            "flower",
            flower_argv(),
            stack.env(**{**flower_env(creds, port, tmp_path / "flower"), "FLOWER_PERSISTENT": "0"}),
        )
        assert wait_until(lambda: _answers(f"{url}/healthcheck"), 60), stack.logs("flower")
        up = time.monotonic()
        # then its dashboard shows the pipeline's tasks within seconds (Flower enables events
        # every 5 s; the bound here is generous for a loaded machine, the figure is printed)
        assert wait_until(lambda: "uploader.audit" in _flower_tasks(url, creds.basic_auth), 60)
        print(f"Flower showed the first audit {time.monotonic() - up:.1f} s after it answered")
        assert "task-succeeded" in tap.task_events_from(WORKER)
    finally:
        stop.set()
        recorder.join(5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def test_a_step_that_ends_early_reaches_a_final_state_in_flower(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    """A stale lease ends the chain at its first step: Flower must see the task finish (it
    raised Ignore before, and stayed STARTED for good), with an outcome and no path."""
    ids = seed_station(
        engine, stack.workspace, recordings=1, remotes={"archive": _archive(tmp_path)},
        uploader={"enabled": False},
    )  # fmt: skip
    stack.start_worker("archive", SILVASONIC_TASK_EVENTS="1")
    app = Celery(broker=stack.redis_url)
    try:
        stale = "00000000-0000-0000-0000-000000000001"
        app.send_task("uploader.encode", args=[ids[0], "archive", stale], queue="upload.archive")
        assert wait_until(lambda: "task-succeeded" in tap.task_events_from(WORKER), 60)
    finally:
        app.close()
    succeeded = [e for e in tap.events if e.get("type") == "task-succeeded"]
    assert "outcome" in str(succeeded[0].get("result")) and "/" not in str(succeeded[0]["result"])
