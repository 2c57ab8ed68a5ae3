"""Seed Phase 4 lifecycle table with real Podman: the controller (a real
``silvasonic-uploader controller`` process) starts, stops, restarts and mounts uploader
containers as the database says."""

from __future__ import annotations

import json
import os
import signal
import time
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from podman.errors import APIError, NotFound
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.factories import make_remote, set_config
from tests.system.conftest import PodmanEnv
from tests.system.helpers import (
    declare_queue,
    heartbeat,
    nudge,
    podman_client,
    queue_keys_left,
    running_controller,
    wait_for,
)
from uploader.db.models import StorageRemote
from uploader.remotes.secrets import generate_key

MiB = 1024 * 1024
NAME = "silvasonic-uploader-usb-a"


def find_container(podman: PodmanEnv, name: str) -> Any | None:
    try:
        return podman_client(podman.socket).containers.get(name)
    except NotFound:
        return None
    except APIError as exc:  # removed between lookup and inspect
        if "no such container" in str(exc):
            return None
        raise


def secret_names(podman: PodmanEnv) -> set[str]:
    return {secret.name for secret in podman_client(podman.socket).secrets.list()}


def running_container(podman: PodmanEnv, name: str) -> Any | None:
    container = find_container(podman, name)
    return container if container is not None and container.status == "running" else None


def add_local_remote(session: Session, tmp_path: Path, slug: str) -> Path:
    folder = tmp_path / f"remote-{slug}"
    make_remote(session, slug, type="local", target_path=str(folder))
    session.commit()
    return folder


def cgroup_v1_memory_limit(container_id: str) -> int | None:
    """The limit the kernel enforces (cgroup v1, cgroupfs manager), if this host exposes it."""
    path = Path(f"/sys/fs/cgroup/memory/libpod_parent/libpod-{container_id}/memory.limit_in_bytes")
    return int(path.read_text()) if path.exists() else None


SECRET_DB_PASSWORD = "Sys-t3st-db-pw-4417"
SECRET_REDIS_PASSWORD = "Sys-t3st-redis-pw-2291"
ENCRYPTION_KEY = generate_key()


def with_redis_password(url: str) -> tuple[str, str]:
    """``url`` with a password in it, and that password. A Redis without ``requirepass`` (this
    machine's) takes any password given with its user name: its ``default`` user is nopass."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    netloc = f"default:{SECRET_REDIS_PASSWORD}@{parts.hostname}:{parts.port or 6379}"
    return urlunsplit(parts._replace(netloc=netloc)), SECRET_REDIS_PASSWORD


def test_uploader_started_for_active_remote(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    redis_url: str,
    db_url: str,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")
    # a database URL with a password (this machine's PostgreSQL trusts local connections and
    # ignores it), a Redis URL with one and an encryption key: all must reach the worker as
    # files only
    redis_with_password, redis_password = with_redis_password(redis_url)
    env = {
        **podman_controller_env,
        "SILVASONIC_DATABASE_URL": make_url(db_url)
        .set(password=SECRET_DB_PASSWORD)
        .render_as_string(hide_password=False),
        "SILVASONIC_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "SILVASONIC_REDIS_URL": redis_with_password,
    }

    with running_controller(env, tmp_path / "controller.log") as controller:
        container = wait_for(
            "the uploader container to run",
            lambda: running_container(clean_podman, "silvasonic-uploader-usb-a"),
        )
        beat = wait_for("its heartbeat", lambda: heartbeat(redis_url, "usb-a"), timeout_s=15)
        controller.wait_event("controller.container_started")

    labels = container.labels
    assert labels["io.silvasonic.tier"] == "2"
    assert labels["io.silvasonic.owner"] == "controller"
    assert labels["io.silvasonic.service"] == "uploader"
    assert labels["io.silvasonic.device_id"] == "usb-a"
    assert len(labels["io.silvasonic.config_hash"]) == 12
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 256 * MiB
    assert host["CpuQuota"] == 50_000
    assert host["OomScoreAdj"] == 250
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert host["Privileged"] is False
    assert not host.get("Devices")
    # least privilege: an unprivileged user, no capabilities, no privilege gain, read-only root
    assert container.attrs["Config"]["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True
    # its only writable folder: a tmpfs that fits inside the memory limit (temp_budget.py)
    assert host["Tmpfs"]["/tmp"].startswith("size=64m,")
    _code, (out, _err) = container.exec_run(["cat", "/proc/1/status"], demux=True)
    status = dict(line.split(":", 1) for line in out.decode().splitlines() if ":" in line)
    # any non-root process has no effective capabilities; cap_drop ALL empties the bounding
    # set too, so nothing the worker executes can gain one back
    for capabilities in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert status[capabilities].strip() == "0000000000000000", capabilities
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Uid"].split()[:2] == ["10001", "10001"]
    # no secret in what `podman inspect` shows; the worker read them from its secret files
    inspected = json.dumps(container.attrs)
    for secret in (SECRET_DB_PASSWORD, redis_password, redis_with_password, ENCRYPTION_KEY):
        assert secret not in inspected
    env = container.attrs["Config"]["Env"]
    assert not [e for e in env if e.startswith(("POSTGRES_PASSWORD=", "SILVASONIC_REDIS_URL=",
                                                "SILVASONIC_ENCRYPTION_KEY="))]  # fmt: skip
    assert "SILVASONIC_REDIS_URL_FILE=/run/secrets/silvasonic_redis_url" in env
    assert beat["instance_id"] == "usb-a" and beat["service"] == "uploader"
    enforced = cgroup_v1_memory_limit(container.id)
    assert enforced in (None, 256 * MiB)  # None: this host keeps its cgroups elsewhere
    # the controller exited; ADR-0013: the worker keeps running
    assert running_container(clean_podman, "silvasonic-uploader-usb-a") is not None


def test_a_full_temp_folder_is_disk_full_not_an_oom_kill(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """The worker's /tmp is a tmpfs: RAM charged to its 256m memory limit. Filled to the brim,
    it must say "no space left" (the encode step then retries the pair later, never parking
    it) while the worker runs on; a tmpfs the limit cannot hold ends in the OOM killer, which
    may pick the worker itself."""
    add_local_remote(session, tmp_path, "usb-a")

    with running_controller(podman_controller_env, tmp_path / "controller.log"):
        container = wait_for("the container", lambda: running_container(clean_podman, NAME))
        # booted: the worker's own memory is in use
        wait_for("its heartbeat", lambda: heartbeat(redis_url, "usb-a"), timeout_s=30)
        pid = container.attrs["State"]["Pid"]

        # when: the worker's user writes more into /tmp than the whole memory limit
        fill = "dd if=/dev/zero of=/tmp/fill bs=1M count=300 2>&1; echo exit=$?"
        try:
            _code, output = container.exec_run(["sh", "-c", fill])
        except APIError as exc:  # the exec session died with the container
            output = f"exec lost: {exc}".encode()
        time.sleep(2)  # an OOM kill and Podman's restart would show by now
        after = running_container(clean_podman, NAME)
        if after is not None:
            after.exec_run(["rm", "-f", "/tmp/fill"])

    # then
    assert b"No space left on device" in output, output
    assert after is not None and after.attrs["State"]["Pid"] == pid  # never restarted
    assert after.attrs["State"]["OOMKilled"] is False


def test_uploader_stopped_when_remote_disabled(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    redis_url: str,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")

    with running_controller(podman_controller_env, tmp_path / "controller.log") as controller:
        container = wait_for("the container", lambda: running_container(clean_podman, NAME))
        secrets = {s["Name"] for s in container.attrs["Config"]["Secrets"]}
        assert secrets  # the Redis URL (this test's database URL has no password)
        declare_queue(redis_url, "usb-a")
        assert queue_keys_left(redis_url, "usb-a")

        session.get_one(StorageRemote, "usb-a").is_active = False
        session.commit()
        nudge(redis_url)

        wait_for(
            "the container to be removed",
            lambda: find_container(clean_podman, NAME) is None,
            timeout_s=30,
        )
        wait_for("the queue purge", lambda: "controller.queue_purged" in controller.event_names())
        # its credentials do not outlive it in Podman's secret store
        wait_for("its secrets removed", lambda: not secrets & secret_names(clean_podman))
    assert queue_keys_left(redis_url, "usb-a") == []


def test_global_pause_stops_workers_but_keeps_their_queues(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    redis_url: str,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")

    with running_controller(podman_controller_env, tmp_path / "controller.log") as controller:
        wait_for("the container", lambda: running_container(clean_podman, NAME))
        declare_queue(redis_url, "usb-a")
        set_config(session, "uploader", {"enabled": False})
        session.commit()
        nudge(redis_url)
        wait_for(
            "the paused worker to be removed",
            lambda: find_container(clean_podman, NAME) is None,
            timeout_s=30,
        )
        time.sleep(2)  # more cycles while paused
        assert queue_keys_left(redis_url, "usb-a")  # a pause is not a retirement
        assert "controller.queue_purged" not in controller.event_names()

        set_config(session, "uploader", {"enabled": True})
        session.commit()
        nudge(redis_url)
        wait_for("the worker back", lambda: running_container(clean_podman, NAME))


class KillMethod(Enum):
    """Ways a worker container dies."""

    PODMAN_KILL = "podman kill: Podman treats it as stopped by the user, no restart policy"
    SIGKILL_MAIN_PROCESS = "the worker process dies (OOM killer, crash): restart policy"


@pytest.mark.parametrize("method", list(KillMethod), ids=lambda m: m.name.lower())
def test_uploader_crash_recovery(
    method: KillMethod,
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")
    name = "silvasonic-uploader-usb-a"

    with running_controller(podman_controller_env, tmp_path / "controller.log") as controller:
        before = wait_for("the container", lambda: running_container(clean_podman, name))
        pid = before.attrs["State"]["Pid"]

        if method is KillMethod.PODMAN_KILL:
            before.kill(signal="SIGKILL")
        else:
            os.kill(pid, signal.SIGKILL)

        def restarted() -> Any | None:
            current = running_container(clean_podman, name)
            return current if current is not None and current.attrs["State"]["Pid"] != pid else None

        after = wait_for("the worker to run again", restarted, timeout_s=45)
        if method is KillMethod.PODMAN_KILL:
            recreated = controller.wait_event("controller.container_recreated")

    if method is KillMethod.PODMAN_KILL:
        assert after.id != before.id  # the controller recreated it
        assert recreated["reason"] == "not_running:exited"
    else:
        assert after.id == before.id  # Podman's on-failure policy restarted it in place
        assert after.attrs["RestartCount"] >= 1


def test_uploader_readonly_workspace(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    workspace: Path,
    tmp_path: Path,
) -> None:
    folder = add_local_remote(session, tmp_path, "usb-a")

    with running_controller(podman_controller_env, tmp_path / "controller.log"):
        container = wait_for(
            "the container", lambda: running_container(clean_podman, "silvasonic-uploader-usb-a")
        )

    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/workspace/recorder"]["Source"] == str(workspace / "recorder")
    assert mounts["/workspace/recorder"]["RW"] is False
    # a local remote's folder (docs/design/0008-least-privilege.md)
    assert mounts[str(folder)]["RW"] is True

    code, output = container.exec_run(["/bin/sh", "-c", "touch /workspace/recorder/probe"])
    assert code != 0 and b"Read-only file system" in output
    assert not (workspace / "recorder" / "probe").exists()

    code, output = container.exec_run(["/bin/sh", "-c", f"touch {folder}/probe"])
    assert code == 0, output
    assert (folder / "probe").exists()
