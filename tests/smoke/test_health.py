"""The seed's smoke table in our form, through the worker's entrypoint as a container runs it
(the console script on PATH, environment only): it starts against a real database and Redis,
``GET /healthy`` answers 200, the heartbeat is in Redis within 15 s, SIGTERM ends it with 0.

"Within 15 s" is counted from the moment the process is up (its health server answers) and
then checked again in the steady state (a newer heartbeat within 15 s): on this shared 2-core
machine Python and Celery's imports alone took over 15 s at a load of 11, which is not what the
seed's bound is about."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.local_servers import free_port
from tests.factories import make_remote
from tests.fixtures.stack import wait_until
from tests.smoke.helpers import bare_env, kill_all_of, start, stop

SLUG = "smoke-health"
HEARTBEAT_KEY = f"silvasonic:status:{SLUG}"
HEARTBEAT_DEADLINE_S = 15.0  # the seed's table
# generous: Celery's start-up on a busy 2-core machine, not a timing claim
START_DEADLINE_S = 90.0


def _get_healthy(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthy", timeout=2) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def test_worker_entrypoint_is_healthy_and_publishes_its_heartbeat(
    engine: Engine, db_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given: a remote in the station database, and nothing else of ours in the environment
    with Session(engine) as s:
        make_remote(s, SLUG, type="local", target_path=str(tmp_path / "usb"))
        s.commit()
    port = free_port()
    env = bare_env(
        SILVASONIC_DATABASE_URL=db_url,
        SILVASONIC_REDIS_URL=redis_url,
        SILVASONIC_HEALTH_PORT=str(port),
        SILVASONIC_RECORDER_WORKSPACE=str(tmp_path / "workspace"),
        SILVASONIC_TEMP_DIR=str(tmp_path / "flac-tmp"),
    )
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    log = tmp_path / "worker.log"
    # when
    proc = start(["worker", "--remote", SLUG], env, log, tmp_path)
    try:
        # then: the process comes up (generous: start-up on a busy machine) …
        assert wait_until(lambda: _get_healthy(port) is not None, START_DEADLINE_S, 0.2), (
            log.read_text()
        )
        # … its heartbeat is in Redis within 15 s …
        assert wait_until(lambda: client.exists(HEARTBEAT_KEY) == 1, HEARTBEAT_DEADLINE_S), (
            f"no heartbeat within {HEARTBEAT_DEADLINE_S} s of /healthy answering\n{log.read_text()}"
        )
        payload = json.loads(client.get(HEARTBEAT_KEY) or b"{}")
        assert payload["service"] == "uploader"
        assert payload["instance_id"] == SLUG
        assert payload["meta"]["current_remote_slug"] == SLUG
        assert payload["meta"]["health_port"] == port
        assert (client.ttl(HEARTBEAT_KEY) or 0) > 0

        # … and stays fresh: a newer one within 15 s (the interval is 10 s)
        def newer() -> bool:
            current = json.loads(client.get(HEARTBEAT_KEY) or b"{}")
            return float(current.get("timestamp", 0)) > float(payload["timestamp"])

        assert wait_until(newer, HEARTBEAT_DEADLINE_S), log.read_text()

        # … and /healthy answers 200 once the worker consumes its queue
        def consuming() -> bool:
            return "worker" in str((_get_healthy(port) or (0, {}))[1])

        assert wait_until(consuming, START_DEADLINE_S, 0.2), log.read_text()
        status, body = _get_healthy(port) or (0, {})
        assert status == 200, body
        assert body["status"] == "ok"
        assert body["components"]["worker"]["healthy"] is True
        # SIGTERM: a clean, soft stop
        code, took = stop(proc, 30)
        assert code == 0, f"exit {code} after {took:.1f} s\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            kill_all_of(tmp_path)
        client.close()
