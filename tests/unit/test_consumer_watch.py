"""The consumer watch's rule (``uploader/ops/consumer_watch.py``) on an injected clock: a stuck
consumer is unhealthy after the stall window, an idle or busy one never is, and a Redis outage
is waited out rather than reported as a broken worker."""

from __future__ import annotations

import pytest

from tests.unit.fake_clock import Clock
from uploader.ops.consumer_watch import ConsumerWatch
from uploader.ops.health import HealthMonitor

STALL = 60.0


@pytest.fixture
def watch(clock: Clock) -> ConsumerWatch:
    return ConsumerWatch(STALL, clock=clock)


def _consuming(watch: ConsumerWatch) -> ConsumerWatch:
    watch.broker_reachable(True)
    watch.consuming()
    return watch


def test_an_idle_consumer_whose_loop_ticks_stays_healthy(
    watch: ConsumerWatch, clock: Clock
) -> None:
    _consuming(watch)
    for _ in range(100):  # far longer than the stall window, nothing queued
        clock.advance(5)
        watch.loop_alive()
        watch.broker_reachable(True)
        assert watch.verdict().healthy
    assert watch.verdict().state == "consuming"


def test_a_loop_that_stops_ticking_is_stalled_after_the_window(
    watch: ConsumerWatch, clock: Clock
) -> None:
    _consuming(watch)
    clock.advance(STALL)
    assert watch.verdict().healthy  # exactly at the limit: not yet
    clock.advance(1)
    verdict = watch.verdict()
    assert not verdict.healthy
    assert verdict.state == "event_loop_stalled"
    assert verdict.details == {"silent_s": 61.0, "limit_s": STALL}


def test_a_stalled_loop_is_reported_even_while_redis_is_down(
    watch: ConsumerWatch, clock: Clock
) -> None:
    # the loop is stuck whatever Redis does: a connected consumer must tick
    _consuming(watch)
    watch.broker_reachable(False)
    clock.advance(STALL + 1)
    assert watch.verdict().state == "event_loop_stalled"


def test_a_tick_brings_a_stalled_loop_back(watch: ConsumerWatch, clock: Clock) -> None:
    _consuming(watch)
    clock.advance(STALL + 5)
    assert not watch.verdict().healthy
    watch.loop_alive()
    assert watch.verdict().healthy


def test_a_consumer_that_reconnects_in_time_is_healthy_throughout(
    watch: ConsumerWatch, clock: Clock
) -> None:
    _consuming(watch)
    watch.lost("connection lost")
    clock.advance(3)
    verdict = watch.verdict()
    assert verdict.healthy
    assert verdict.state == "reconnecting"
    assert verdict.details["last_error"] == "connection lost"
    watch.consuming()
    assert watch.verdict().state == "consuming"


def test_lost_while_redis_answers_is_not_reconnected_after_the_window(
    watch: ConsumerWatch, clock: Clock
) -> None:
    _consuming(watch)
    watch.lost("connection lost")
    clock.advance(STALL + 1)
    watch.broker_reachable(True)
    verdict = watch.verdict()
    assert not verdict.healthy
    assert verdict.state == "not_reconnected"
    assert verdict.details["broker_answering_s"] == 61.0


def test_a_redis_outage_is_waited_out_not_reported(watch: ConsumerWatch, clock: Clock) -> None:
    """Redis down for ten minutes: every worker would be recreated into the same outage."""
    _consuming(watch)
    watch.lost("connection lost")
    for _ in range(120):
        clock.advance(5)
        watch.broker_reachable(False)
        verdict = watch.verdict()
        assert verdict.healthy
        assert verdict.state == "waiting_for_broker"
    # Redis is back: the consumer gets the full window from then on to reconnect ...
    watch.broker_reachable(True)
    clock.advance(STALL)
    assert watch.verdict().state == "reconnecting"
    # ... and is stuck only once Redis has answered for longer than that
    clock.advance(1)
    assert watch.verdict().state == "not_reconnected"


def test_one_failed_ping_restarts_the_window(watch: ConsumerWatch, clock: Clock) -> None:
    _consuming(watch)
    watch.lost()
    clock.advance(STALL - 10)
    watch.broker_reachable(False)  # Redis blipped: the consumer's retries start over
    watch.broker_reachable(True)
    clock.advance(STALL - 10)
    assert watch.verdict().healthy


def test_a_consumer_that_never_connects_while_redis_answers_is_stuck(
    watch: ConsumerWatch, clock: Clock
) -> None:
    watch.broker_reachable(True)
    clock.advance(10)
    assert watch.verdict().state == "starting"
    clock.advance(STALL)
    assert watch.verdict().state == "not_reconnected"


def test_ticks_before_the_first_connection_do_not_count(watch: ConsumerWatch, clock: Clock) -> None:
    watch.broker_reachable(True)
    watch.loop_alive()  # a timer left over from a lost connection must not look like consuming
    clock.advance(STALL + 1)
    assert watch.verdict().state == "not_reconnected"


def test_a_second_lost_keeps_the_first_time(watch: ConsumerWatch, clock: Clock) -> None:
    """stop() and shutdown() may both report the loss: the clock must not restart."""
    _consuming(watch)
    watch.lost("connection lost")
    clock.advance(STALL - 1)
    watch.lost("consumer stopped")
    clock.advance(2)
    assert watch.verdict().state == "not_reconnected"


def test_stall_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConsumerWatch(0)


# -- as the `consumer` component of /healthy -----------------------------------------------------


def test_a_check_is_evaluated_at_every_snapshot(watch: ConsumerWatch, clock: Clock) -> None:
    from uploader.ops.health import Component

    monitor = HealthMonitor()

    def component() -> Component:
        v = watch.verdict()
        return Component(v.healthy, {"state": v.state, **v.details})

    monitor.register_check("consumer", component)
    _consuming(watch)
    assert monitor.snapshot()["status"] == "ok"
    clock.advance(STALL + 1)  # nobody calls update_status: the snapshot asks the watch itself
    snap = monitor.snapshot()
    assert snap["status"] == "error"
    assert snap["components"]["consumer"]["details"]["state"] == "event_loop_stalled"
    watch.loop_alive()
    assert monitor.snapshot()["status"] == "ok"
    monitor.remove("consumer")
    assert "consumer" not in monitor.snapshot()["components"]
