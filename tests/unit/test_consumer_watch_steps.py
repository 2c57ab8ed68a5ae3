"""The Celery glue of the consumer watch (``tasks/worker_steps.py``): the consumer step feeds
the watch from a timer on a real kombu event loop, and the watchdog reports, and in the control
worker ends the process, only when the watch says the consumer is stuck. The integration side
(a real worker through a Redis restart) is in tests/integration/test_consumer_recovery.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from kombu.asynchronous import Hub

from tasks import worker_steps
from tests.unit.fake_clock import Clock
from uploader.ops.consumer_watch import ConsumerWatch


class Ping:
    """Stands in for the Redis client only to choose the PING branch."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def ping(self) -> bool:
        if not self.ok:
            raise redis.ConnectionError("refused")
        return True


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> ConsumerWatch:
    w = ConsumerWatch(20.0, clock=clock)
    monkeypatch.setattr(worker_steps, "_watch", w)
    monkeypatch.setattr(worker_steps, "_watch_armed", False)
    return w


def test_consumer_step_ticks_on_the_event_loop_and_stops_with_the_connection(
    watch: ConsumerWatch, clock: Clock
) -> None:
    hub = Hub()
    try:
        consumer = SimpleNamespace(hub=hub, steps=[])
        step = worker_steps.ConsumerWatchStep(consumer)
        assert step.include(consumer)
        assert worker_steps._watch_armed
        step.start(consumer)
        assert watch.verdict().state == "consuming"
        assert len(hub.timer.queue) == 1
        # the loop turning fires the tick: the watch sees the loop alive
        clock.now += 25
        entry = hub.timer.queue[0].entry
        entry()
        assert watch.verdict().healthy
        # a connection loss: the tick is cancelled, the watch counts the time down
        step.stop(consumer)
        assert entry.canceled
        assert watch.verdict().state == "waiting_for_broker"
        # reconnecting starts a fresh tick (and never leaves two behind)
        step.start(consumer)
        step.start(consumer)
        assert sum(not e.entry.canceled for e in hub.timer.queue) == 1
    finally:
        hub.close()


def test_consumer_step_is_left_out_without_an_event_loop(watch: ConsumerWatch) -> None:
    consumer = SimpleNamespace(hub=None, steps=[])
    assert not worker_steps.ConsumerWatchStep(consumer).include(consumer)
    # not armed: nothing feeds the watch, so nobody may judge by it
    assert not worker_steps._watch_armed


def _watchdog(monkeypatch: pytest.MonkeyPatch, *, exit_on_stall: bool, ok: bool) -> Any:
    if exit_on_stall:
        monkeypatch.setenv("SILVASONIC_EXIT_ON_CONSUMER_STALL", "1")
    else:
        monkeypatch.delenv("SILVASONIC_EXIT_ON_CONSUMER_STALL", raising=False)
    dog = worker_steps.ConsumerWatchdogStep(SimpleNamespace())
    dog._client = Ping(ok)
    return dog


def test_watchdog_ends_a_stuck_control_worker(
    monkeypatch: pytest.MonkeyPatch, watch: ConsumerWatch, clock: Clock
) -> None:
    ended: list[bool] = []
    monkeypatch.setattr(worker_steps, "_end_this_worker", lambda: ended.append(True))
    dog = _watchdog(monkeypatch, exit_on_stall=True, ok=True)
    watch.consuming()
    assert dog.check_once(watch).healthy
    assert ended == []
    clock.now += 21  # the loop stopped ticking
    assert dog.check_once(watch).state == "event_loop_stalled"
    assert ended == [True]


def test_watchdog_leaves_a_worker_alone_while_redis_is_down(
    monkeypatch: pytest.MonkeyPatch, watch: ConsumerWatch, clock: Clock
) -> None:
    ended: list[bool] = []
    monkeypatch.setattr(worker_steps, "_end_this_worker", lambda: ended.append(True))
    dog = _watchdog(monkeypatch, exit_on_stall=True, ok=False)
    watch.consuming()
    watch.lost("connection lost")
    for _ in range(10):
        clock.now += 30
        assert dog.check_once(watch).state == "waiting_for_broker"
    assert ended == []


def test_watchdog_of_a_remote_worker_only_reports(
    monkeypatch: pytest.MonkeyPatch, watch: ConsumerWatch, clock: Clock
) -> None:
    """A remote's worker is recreated by the Controller (via /healthy and the heartbeat),
    never ended by itself."""
    ended: list[bool] = []
    monkeypatch.setattr(worker_steps, "_end_this_worker", lambda: ended.append(True))
    dog = _watchdog(monkeypatch, exit_on_stall=False, ok=True)
    watch.consuming()
    watch.lost("connection lost")
    assert dog.check_once(watch).state == "reconnecting"  # Redis answers from now on
    clock.now += 21
    assert dog.check_once(watch).state == "not_reconnected"
    assert dog._last_state == "not_reconnected"
    assert ended == []
    watch.consuming()
    assert dog.check_once(watch).state == "consuming"


def test_consumer_component_follows_the_watch(watch: ConsumerWatch, clock: Clock) -> None:
    watch.consuming()
    assert worker_steps._consumer_component().healthy
    clock.now += 21
    component = worker_steps._consumer_component()
    assert not component.healthy
    assert component.required
    assert component.details["state"] == "event_loop_stalled"
