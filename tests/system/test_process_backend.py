"""The process backend through the real controller command: the same lifecycle as the Podman
tests (start, stop on deactivation with the queue purged, restart after a kill, adoption
across a controller restart, recreation on drift), with workers as local processes. Needs
no Podman."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.orm import Session

from controller_ext.process_backend import ProcessBackend, _pid_alive
from tests.factories import make_remote
from tests.system.helpers import (
    REAL_WORKER_AVAILABLE,
    STANDIN,
    ControllerProcess,
    base_environment,
    heartbeat,
    nudge,
    running_controller,
    wait_for,
)
from uploader.db.models import StorageRemote

NAME = "silvasonic-uploader-usb-a"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The workers' state folder; every worker left in it is ended after the test."""
    path = tmp_path / "workers"
    yield path
    ProcessBackend(path).stop_all(timeout_s=5)


@pytest.fixture
def process_env(state_dir: Path, db_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "workspace" / "recorder").mkdir(parents=True)
    return {
        **base_environment(),
        "SILVASONIC_CONTROLLER_BACKEND": "process",
        "SILVASONIC_PROCESS_STATE_DIR": str(state_dir),
        "SILVASONIC_PROCESS_WORKER_COMMAND": f"{sys.executable} {STANDIN} worker --remote {{slug}}",
        "SILVASONIC_WORKSPACE_PATH": str(tmp_path / "workspace"),
        "SILVASONIC_DATABASE_URL": db_url,
        "SILVASONIC_REDIS_URL": redis_url,
        "SILVASONIC_RECONCILE_INTERVAL_S": "1",
        "SILVASONIC_UPLOADER_HEARTBEAT_GRACE_S": "90",
        "SILVASONIC_UPLOADER_STOP_TIMEOUT_S": "15",
        "SILVASONIC_HEARTBEAT_INTERVAL_S": "2",
        "SILVASONIC_DEVELOPMENT_MODE": "false",
    }


def worker(state_dir: Path) -> Any | None:
    instance = ProcessBackend(state_dir).get(NAME)
    return instance if instance is not None and instance.is_running else None


def pid_of(instance: Any) -> int:
    return int(instance.id.split(":")[0])


def add_remote(session: Session, tmp_path: Path) -> None:
    make_remote(session, "usb-a", type="local", target_path=str(tmp_path / "remote-a"))
    session.commit()


def test_process_worker_started_with_translated_environment(
    process_env: dict[str, str], state_dir: Path, session: Session, redis_url: str, tmp_path: Path
) -> None:
    add_remote(session, tmp_path)

    with running_controller(process_env, tmp_path / "controller.log") as controller:
        instance = wait_for("the worker process", lambda: worker(state_dir))
        beat = wait_for("its heartbeat", lambda: heartbeat(redis_url, "usb-a"), timeout_s=15)
        port = ProcessBackend(state_dir).health_port(NAME)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthy", timeout=5) as response:
            status = response.status
        controller.wait_event("controller.container_started")

    assert status == 200
    assert instance.labels["io.silvasonic.service"] == "uploader"
    env = beat["meta"]["env"]
    # container paths and host names as this machine sees them
    assert env["SILVASONIC_RECORDER_WORKSPACE"] == str(tmp_path / "workspace" / "recorder")
    assert env["SILVASONIC_DB_HOST"] == env["POSTGRES_HOST"] == "127.0.0.1"
    assert env["POSTGRES_DB"] == db_name(process_env["SILVASONIC_DATABASE_URL"])
    assert env["SILVASONIC_HEALTH_PORT"] == str(port)
    assert env["SILVASONIC_INSTANCE_ID"] == "usb-a"
    # the controller exited; the worker, like a container, keeps running
    assert worker(state_dir) is not None


def db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_process_worker_stopped_when_remote_disabled(
    process_env: dict[str, str], state_dir: Path, session: Session, redis_url: str, tmp_path: Path
) -> None:
    add_remote(session, tmp_path)
    client = redis.Redis.from_url(redis_url)
    client.rpush("upload.usb-a", "queued")

    with running_controller(process_env, tmp_path / "controller.log"):
        pid = pid_of(wait_for("the worker", lambda: worker(state_dir)))
        session.get_one(StorageRemote, "usb-a").is_active = False
        session.commit()
        nudge(redis_url)
        wait_for("the worker gone", lambda: ProcessBackend(state_dir).get(NAME) is None)

    assert not _pid_alive(pid, None)
    assert client.exists("upload.usb-a") == 0


def test_process_worker_restarted_after_kill(
    process_env: dict[str, str], state_dir: Path, session: Session, tmp_path: Path
) -> None:
    add_remote(session, tmp_path)

    with running_controller(process_env, tmp_path / "controller.log") as controller:
        pid = pid_of(wait_for("the worker", lambda: worker(state_dir)))
        os.kill(pid, signal.SIGKILL)

        def replaced() -> Any | None:
            current = worker(state_dir)
            return current if current is not None and pid_of(current) != pid else None

        wait_for("a new worker", replaced, timeout_s=30)
        assert controller.wait_event("controller.container_recreated")["reason"] == (
            "not_running:exited"
        )


def test_process_worker_adopted_after_controller_restart(
    process_env: dict[str, str], state_dir: Path, session: Session, tmp_path: Path
) -> None:
    add_remote(session, tmp_path)
    controller = ControllerProcess(process_env, tmp_path / "controller.log").start()
    try:
        pid = pid_of(wait_for("the worker", lambda: worker(state_dir)))
        controller.kill()
        time.sleep(1)
        assert _pid_alive(pid, None)  # its own session: it outlives the controller

        controller.start()
        wait_for("adoption", lambda: "controller.container_adopted" in controller.event_names())
        time.sleep(2)
        current = worker(state_dir)
        names = controller.event_names()
    finally:
        controller.terminate()

    assert current is not None and pid_of(current) == pid
    assert "controller.container_started" not in names


def test_process_worker_recreated_on_config_drift(
    process_env: dict[str, str], state_dir: Path, session: Session, tmp_path: Path
) -> None:
    add_remote(session, tmp_path)
    log = tmp_path / "controller.log"
    with running_controller(process_env, log):
        pid = pid_of(wait_for("the worker", lambda: worker(state_dir)))

    changed = {**process_env, "SILVASONIC_UPLOADER_MEMORY_LIMIT": "320m"}
    with running_controller(changed, log) as controller:

        def replaced() -> Any | None:
            current = worker(state_dir)
            return current if current is not None and pid_of(current) != pid else None

        wait_for("the worker with the new spec", replaced)
        drift = controller.wait_event("controller.container_recreated")

    assert not _pid_alive(pid, None)
    assert drift["reason"] == "config_drift"


@pytest.mark.skipif(
    not REAL_WORKER_AVAILABLE,
    reason="the real worker command (`silvasonic-uploader worker`, silvasonic_uploader/cli/worker.py) is not in "
    "this tree yet",
)
def test_process_backend_runs_the_real_worker(
    process_env: dict[str, str], state_dir: Path, session: Session, redis_url: str, tmp_path: Path
) -> None:
    add_remote(session, tmp_path)
    env = {k: v for k, v in process_env.items() if k != "SILVASONIC_PROCESS_WORKER_COMMAND"}

    with running_controller(env, tmp_path / "controller.log"):
        instance = wait_for("the worker process", lambda: worker(state_dir))
        beat = wait_for("its heartbeat", lambda: heartbeat(redis_url, "usb-a"), timeout_s=60)
        port = ProcessBackend(state_dir).health_port(NAME)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthy", timeout=5) as response:
            assert response.status == 200

    assert beat["instance_id"] == "usb-a" and "standin" not in beat["meta"]
    assert instance.is_running
