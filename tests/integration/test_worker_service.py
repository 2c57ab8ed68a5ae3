"""The seed's Phase 1 service tests in their Celery form: the worker process with a real
database and Redis — `/healthy`, the heartbeat, settings and remote from the database, start
and SIGTERM."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.local_servers import free_port
from tests.factories import make_remote, set_config
from tests.fixtures.stack import CLI, Stack, wait_until
from tests.integration.e2e_helpers import scalar, seed_station
from uploader.settings import UploaderServiceSettings


def _healthy(port: int) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthy", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def _add_remote(engine: Engine, slug: str, folder: Path) -> None:
    with Session(engine) as s:
        make_remote(s, slug, type="local", target_path=str(folder))
        s.commit()


def test_service_name_and_port(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    assert UploaderServiceSettings().health_port == 9500
    _add_remote(engine, "archive", tmp_path / "a")
    stack.start_worker("archive")
    client = redis.Redis.from_url(stack.redis_url)
    assert wait_until(lambda: client.get("silvasonic:status:archive") is not None, 15)
    payload = json.loads(client.get("silvasonic:status:archive") or b"{}")
    assert payload["service"] == "uploader"
    assert payload["meta"]["health_port"] == stack.health_ports["worker-archive"]


def test_uploader_starts_with_db(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    _add_remote(engine, "archive", tmp_path / "a")
    stack.start_worker("archive")
    port = stack.health_ports["worker-archive"]
    # 200 from the start ("starting up"), then the worker component once it consumes
    assert wait_until(lambda: "worker" in str((_healthy(port) or (0, {}))[1]), 30)
    status, body = _healthy(port) or (0, {})
    assert status == 200
    assert body["status"] == "ok"
    assert body["components"]["worker"]["healthy"] is True  # type: ignore[index]


def _listening(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port``, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(str(ipaddress.IPv4Address(raw[::-1])))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(str(ipaddress.IPv6Address(words)))
    return found


def test_healthy_listens_on_loopback_unless_told_otherwise(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    # given: two workers, one with the default and one told to listen everywhere
    _add_remote(engine, "archive", tmp_path / "a")
    _add_remote(engine, "public", tmp_path / "b")
    stack.start_worker("archive")
    stack.start_worker("public", SILVASONIC_HEALTH_HOST="0.0.0.0")
    default, wide = stack.health_ports["worker-archive"], stack.health_ports["worker-public"]
    # when
    assert wait_until(lambda: _healthy(default) is not None and _healthy(wide) is not None, 30)
    # then: /healthy tells remote state and errors: by default only loopback hears it
    assert _listening(default) == {"127.0.0.1"}
    assert _listening(wide) == {"0.0.0.0"}


def test_uploader_heartbeat_published(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    seed_station(
        engine,
        stack.workspace,
        recordings=2,
        remotes={"archive": {"type": "local", "target_path": str(tmp_path / "a")}},
    )
    stack.start_worker("archive")
    client = redis.Redis.from_url(stack.redis_url)
    assert wait_until(lambda: client.get("silvasonic:status:archive") is not None, 15)
    assert client.ttl("silvasonic:status:archive") >= 25
    meta = json.loads(client.get("silvasonic:status:archive") or b"{}")["meta"]
    assert {
        "pending_count",
        "uploaded_count",
        "failed_count",
        "last_upload_at",
        "current_remote_slug",
        "remote_state",
    } <= set(meta)
    assert meta["current_remote_slug"] == "archive"
    assert meta["pending_count"] == 2
    assert meta["remote_state"] == "ok"


def test_storage_remote_loaded_from_slug_variable(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """The slug comes from SILVASONIC_STORAGE_REMOTE_SLUG when --remote is not given."""
    archive = tmp_path / "a"
    seed_station(
        engine,
        stack.workspace,
        recordings=1,
        remotes={"archive": {"type": "local", "target_path": str(archive)}},
    )
    port = str(free_port())
    proc = stack._spawn(
        "env-worker",
        [*CLI, "worker"],
        stack.env(SILVASONIC_STORAGE_REMOTE_SLUG="archive", SILVASONIC_HEALTH_PORT=port),
    )
    stack.start_dispatcher()
    assert wait_until(lambda: scalar(engine, "SELECT count(*) FROM uploads WHERE success") == 1, 60)
    assert proc.poll() is None


def test_lifecycle_start_shutdown(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    _add_remote(engine, "archive", tmp_path / "a")
    proc = stack.start_worker("archive")
    port = stack.health_ports["worker-archive"]
    assert wait_until(lambda: (_healthy(port) or (0, {}))[0] == 200, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_settings_loaded_from_db(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    """The dispatcher leases exactly batch_size pairs, as read from system_config."""
    seed_station(
        engine,
        stack.workspace,
        recordings=8,
        remotes={"archive": {"type": "local", "target_path": str(tmp_path / "a")}},
        uploader={"batch_size": 3},
    )
    stack.start_dispatcher()  # no worker: leases stay live
    assert wait_until(lambda: scalar(engine, "SELECT count(*) FROM pair_state") == 3, 60)
    # a changed setting applies without restart
    with Session(engine) as s:
        set_config(s, "uploader", {"poll_interval": 1, "batch_size": 5})
        s.commit()
    assert wait_until(lambda: scalar(engine, "SELECT count(*) FROM pair_state") == 5, 60)


def test_worker_refuses_outdated_schema(empty_db_url: str, redis_url: str) -> None:
    from uploader.db import schema

    schema.upgrade(empty_db_url, "0001")
    result = subprocess.run(
        [sys.executable, "-m", "silvasonic_uploader", "worker", "--remote", "archive"],
        env={
            "SILVASONIC_DATABASE_URL": empty_db_url,
            "SILVASONIC_REDIS_URL": redis_url,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode != 0
    assert "db upgrade" in result.stderr


def _event_lines(log_text: str, event: str) -> list[str]:
    return [line for line in log_text.splitlines() if event in line]


def test_dispatcher_children_log_json_with_their_service_name(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """With development mode off (the stack's default), every line the dispatcher writes is
    JSON: the scheduler's and the control worker's events, named for the child, and Celery's
    records, minus its per-task lines and banner. The Controller's LogForwarder reads nothing
    else (other lines arrive as level "raw")."""
    seed_station(
        engine,
        stack.workspace,
        recordings=1,
        remotes={"archive": {"type": "local", "target_path": str(tmp_path / "a")}},
    )
    stack.start_dispatcher(loglevel="INFO")
    assert wait_until(lambda: bool(_event_lines(stack.logs("beat"), "dispatch.cycle_completed")))
    text = stack.logs("beat")
    seen = {}
    for event in (
        "supervisor.child_started",
        "uploader.worker_ready",
        "dispatch.cycle_completed",
        "beat: Acquired lock",  # redbeat, in the scheduler
        "uploader-control@",  # Celery's "<node> ready."
    ):
        lines = _event_lines(text, event)
        assert lines, f"no {event} in the dispatcher's log"
        records = [json.loads(line) for line in lines]  # a console line fails here
        seen[event] = {(r["service"], r.get("logger_name")) for r in records}
    assert seen == {
        "supervisor.child_started": {("uploader-beat", None)},
        "uploader.worker_ready": {("uploader-control-worker", None)},
        "dispatch.cycle_completed": {("uploader-control-worker", None)},
        "beat: Acquired lock": {("uploader-scheduler", "celery.beat")},
        "uploader-control@": {("uploader-control-worker", "celery.apps.worker")},
    }
    # Celery's "Task … received" / "succeeded in" lines: none, at INFO; no banner, and its
    # SecurityWarning (we run as root here, as in the container) is a JSON line as well
    assert "uploader.dispatch_pending[" not in text
    raw = []
    for line in filter(None, text.splitlines()):
        try:
            json.loads(line)
        except ValueError:
            raw.append(line)
    assert raw == []


def test_a_remotes_worker_writes_only_json_lines_and_no_per_task_lines(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """The worker container's output, at Celery's default INFO: what the LogForwarder gets."""
    seed_station(
        engine,
        stack.workspace,
        recordings=2,
        remotes={"archive": {"type": "local", "target_path": str(tmp_path / "a")}},
    )
    port = str(free_port())
    stack._spawn(
        "worker-info",
        [*CLI, "worker", "--remote", "archive"],  # --loglevel INFO, as the Controller runs it
        stack.env(SILVASONIC_HEALTH_PORT=port),
    )
    stack.start_dispatcher()
    assert wait_until(lambda: scalar(engine, "SELECT count(*) FROM uploads WHERE success") == 2, 60)
    assert wait_until(lambda: stack.logs("worker-info").count('"upload.completed"') == 2, 10)
    records = [json.loads(line) for line in filter(None, stack.logs("worker-info").splitlines())]
    celery_lines = [
        r["event"] for r in records if str(r.get("logger_name", "")).startswith("celery")
    ]
    assert any(str(e).endswith("ready.") for e in celery_lines)  # INFO from Celery does show
    assert not [e for e in celery_lines if str(e).startswith("Task uploader.")]
    assert {r["service"] for r in records} == {"uploader"}
