"""Broker consumers through Redis restarts, on the real stack (``worker`` and ``beat``
subprocesses, a private Redis this test may kill).

The race behind the old intermittent hang is made certain here: every process of the stack is
frozen (SIGSTOP) while Redis restarts empty, so each consumer first sees its dead connections
when the new Redis already answers. Before ``retry_on_timeout`` was turned off in
``celeryconfig.py`` the first such restart hung the worker's event loop (py-spy: kombu's
pub/sub read, reopened by redis-py without its subscriptions, blocked with no timeout) in 2 of
2 runs; the consumers must now resume every time. ``/healthy``'s ``consumer`` component is
checked through the same real events: idle, Redis down for longer than the stall window, back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from silvasonic_uploader.cli.local_servers import LocalRedis
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import early_flags, seed_station, success_rows

STALL_S = "4"  # the consumer watch's window in these workers (ticks and probes every 1 s)
RETRY_LINE = re.compile(r"Trying again in (\d+(?:\.\d+)?) seconds")  # Celery's reconnect log


def _health(stack: Stack, name: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{stack.health_ports[name]}/healthy"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def _consumer_state(stack: Stack, name: str) -> str | None:
    _, body = _health(stack, name)
    consumer = body.get("components", {}).get("consumer")
    return None if consumer is None else str(consumer["details"]["state"])


def _restart_redis_under_frozen_stack(stack: Stack, redis_server: LocalRedis) -> None:
    groups = [p.pid for p in stack.procs.values() if p.poll() is None]
    for pgid in groups:
        os.killpg(pgid, signal.SIGSTOP)
    try:
        redis_server.kill()
        redis_server.start()  # same port, empty
    finally:
        for pgid in groups:
            os.killpg(pgid, signal.SIGCONT)


def test_consumers_resume_after_redis_restarts_empty_under_them(
    engine: Engine, stack: Stack, tmp_path: Path, private_redis: LocalRedis
) -> None:
    stack.redis_url = private_redis.url(0)
    archive = tmp_path / "archive"
    archive.mkdir()
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=40,
        seconds=1,
        remotes={"archive": {"type": "local", "target_path": str(archive)}},
        uploader={"bandwidth_limit": "200k", "batch_size": 6},
    )
    stack.start_worker("archive", SILVASONIC_CONSUMER_STALL_S="30")
    stack.start_dispatcher()
    done = 0
    for restart in range(3):
        # between restarts, work must flow: the worker and the control worker both consume
        assert wait_until(lambda n=done: success_rows(engine, "archive") > n, 120), (
            f"no upload after restart {restart}: a consumer did not resume"
        )
        done = success_rows(engine, "archive")
        if done == len(ids):
            break
        _restart_redis_under_frozen_stack(stack, private_redis)
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 180)
    assert early_flags(engine) == 0
    assert wait_until(lambda: _consumer_state(stack, "worker-archive") == "consuming", 30)
    assert "consumer.stalled" not in stack.logs("worker-archive")
    assert "consumer.stalled" not in stack.logs("beat")


def _wait_for_retry_of_at_least(stack: Stack, name: str, seconds: float, timeout_s: float) -> bool:
    """Wait for Celery to log a reconnect attempt that sleeps at least ``seconds`` next."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waits = RETRY_LINE.findall(stack.logs(name))
        if waits and float(waits[-1]) >= seconds:
            return True
        time.sleep(0.05)
    return False


def test_healthy_tells_idle_and_outage_from_a_consumer_that_does_not_come_back(
    engine: Engine, stack: Stack, tmp_path: Path, private_redis: LocalRedis
) -> None:
    """Nothing queued for many stall windows: 200. Redis gone for many stall windows: still
    200 (waiting for the broker; recreating the worker would not bring Redis back). Redis back
    while the consumer sleeps a long reconnect back-off: Redis answers and the consumer does
    not, so 503 (``not_reconnected``) — real events, only the window is shorter than in
    production (4 s here, 60 s by default: above Celery's longest back-off, 30 s, so a live
    consumer never trips it). Then the consumer reconnects: 200, and new work is done."""
    stack.redis_url = private_redis.url(0)
    archive = tmp_path / "archive"
    archive.mkdir()
    seed_station(
        engine,
        stack.workspace,
        recordings=0,
        remotes={"archive": {"type": "local", "target_path": str(archive)}},
    )
    stack.start_worker("archive", SILVASONIC_CONSUMER_STALL_S=STALL_S)
    assert wait_until(lambda: _consumer_state(stack, "worker-archive") == "consuming", 60)
    # idle for three stall windows: the loop's own timer keeps the verdict healthy
    deadline = time.monotonic() + 3 * float(STALL_S)
    while time.monotonic() < deadline:
        status, body = _health(stack, "worker-archive")
        assert status == 200, body
        time.sleep(0.5)
    # Redis down until Celery backs off 10 s between attempts (about 30 s, many windows)
    private_redis.kill()
    assert wait_until(lambda: _consumer_state(stack, "worker-archive") == "waiting_for_broker", 30)
    outage_ok: list[int] = []

    def _retry_long_enough() -> bool:
        status, _ = _health(stack, "worker-archive")
        outage_ok.append(status)
        return _wait_for_retry_of_at_least(stack, "worker-archive", 10.0, 0.5)

    assert wait_until(_retry_long_enough, 90)
    assert set(outage_ok) == {200}, outage_ok
    # back (empty) right after that attempt: the consumer sleeps ~10 s, Redis answers
    private_redis.start()
    assert wait_until(lambda: _health(stack, "worker-archive")[0] == 503, 10, every_s=0.1)
    assert _consumer_state(stack, "worker-archive") == "not_reconnected"
    # its next attempt succeeds: consuming, 200
    assert wait_until(lambda: _consumer_state(stack, "worker-archive") == "consuming", 60)
    assert _health(stack, "worker-archive")[0] == 200
    assert '"consumer.stalled"' in stack.logs("worker-archive")
    assert wait_until(lambda: '"consumer.recovered"' in stack.logs("worker-archive"), 10)
    # and it consumes: new work is done
    stack.start_dispatcher()
    from sqlalchemy.orm import Session

    from tests.factories import make_recording_with_wav

    with Session(engine) as s:
        make_recording_with_wav(s, stack.workspace, seconds=0.5)
        s.commit()
    assert wait_until(lambda: success_rows(engine, "archive") == 1, 90)
    assert _health(stack, "worker-archive")[0] == 200


def test_a_stuck_control_worker_is_restarted_by_the_dispatchers_supervisor(
    engine: Engine, stack: Stack, tmp_path: Path, private_redis: LocalRedis
) -> None:
    """The control worker has no /healthy: when its consumer has not come back while Redis
    answers (the same real events as above, window shortened), it ends itself and ``beat``'s
    supervisor starts a new one, which dispatches again."""
    stack.redis_url = private_redis.url(0)
    archive = tmp_path / "archive"
    archive.mkdir()
    seed_station(
        engine,
        stack.workspace,
        recordings=1,
        seconds=0.5,
        remotes={"archive": {"type": "local", "target_path": str(archive)}},
    )
    stack.start_dispatcher(loglevel="WARNING", SILVASONIC_CONSUMER_STALL_S=STALL_S)
    stack.start_worker("archive")
    assert wait_until(lambda: success_rows(engine, "archive") == 1, 90)
    private_redis.kill()
    assert _wait_for_retry_of_at_least(stack, "beat", 10.0, 90)
    private_redis.start()
    assert wait_until(lambda: "consumer.stalled_exit" in stack.logs("beat"), 15)
    assert wait_until(lambda: '"child": "control-worker", "code": -9' in stack.logs("beat"), 15), (
        stack.logs("beat")[-2000:]
    )
    # the new control worker dispatches: new work is done
    from sqlalchemy.orm import Session

    from tests.factories import make_recording_with_wav

    with Session(engine) as s:
        make_recording_with_wav(s, stack.workspace, seconds=0.5)
        s.commit()
    assert wait_until(lambda: success_rows(engine, "archive") == 2, 120)
