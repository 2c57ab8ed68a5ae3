"""Seed Phase 4 resilience table with real Podman, plus the controller's own guarantees:
adoption across controller restarts, recreation on config drift, other services' containers
left alone, a silent Podman reported and survived, and two remotes uploading independently."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.factories import make_recording_with_wav
from tests.system.conftest import PodmanEnv
from tests.system.helpers import (
    REAL_WORKER_AVAILABLE,
    ROOT,
    USE_REAL_WORKER,
    ControllerProcess,
    cli_program,
    podman_client,
    running_controller,
    wait_for,
)
from tests.system.test_uploader_lifecycle import (
    MiB,
    add_local_remote,
    cgroup_v1_memory_limit,
    find_container,
    running_container,
)
from uploader.db.models import StorageRemote

NAME = "silvasonic-uploader-usb-a"


def save_container_log(podman: PodmanEnv, name: str, folder: Path) -> None:
    """Keep a worker's output beside the test's other logs (containers are removed after)."""
    container = find_container(podman, name)
    if container is not None:
        output = b"".join(container.logs(stdout=True, stderr=True))
        (folder / f"{name}.log").write_bytes(output)


def test_uploader_survives_controller_restart(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")
    controller = ControllerProcess(podman_controller_env, tmp_path / "controller.log").start()
    try:
        before = wait_for("the container", lambda: running_container(clean_podman, NAME))

        controller.kill()  # SIGKILL: no chance to clean anything up
        time.sleep(2)
        assert running_container(clean_podman, NAME) is not None

        controller.start()
        wait_for("adoption", lambda: "controller.container_adopted" in controller.event_names())
        time.sleep(3)  # a few more cycles: still the same container
        after = running_container(clean_podman, NAME)
        names = controller.event_names()

        assert controller.terminate() == 0  # SIGTERM: clean exit, workers left running
        assert running_container(clean_podman, NAME) is not None
    finally:
        controller.terminate()

    assert after is not None and after.id == before.id
    assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert "controller.container_started" not in names
    assert "controller.container_recreated" not in names


def test_config_drift_recreates_the_container(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")
    log = tmp_path / "controller.log"

    with running_controller(podman_controller_env, log):
        before = wait_for("the container", lambda: running_container(clean_podman, NAME))

    changed = {**podman_controller_env, "SILVASONIC_UPLOADER_MEMORY_LIMIT": "320m"}
    with running_controller(changed, log) as controller:

        def recreated() -> Any | None:
            current = running_container(clean_podman, NAME)
            return current if current is not None and current.id != before.id else None

        after = wait_for("the container with the new limit", recreated)
        drift = controller.wait_event("controller.container_recreated")

    assert before.attrs["HostConfig"]["Memory"] == 256 * MiB
    assert after.attrs["HostConfig"]["Memory"] == 320 * MiB
    assert after.labels["io.silvasonic.config_hash"] != before.labels["io.silvasonic.config_hash"]
    assert cgroup_v1_memory_limit(after.id) in (None, 320 * MiB)
    assert drift["reason"] == "config_drift"


def test_containers_of_other_services_are_left_alone(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    client = podman_client(clean_podman.socket)
    volumes = {"/usr": {"bind": "/usr", "mode": "ro"}}
    others = {
        # the upstream Controller's recorder: owner=controller, another service
        "silvasonic-recorder-ultramic-034f": {
            "io.silvasonic.owner": "controller",
            "io.silvasonic.service": "recorder",
            "io.silvasonic.tier": "2",
            "io.silvasonic.device_id": "ultramic",
        },
        # an uploader-looking container that the Controller does not own
        "silvasonic-uploader-handmade": {"io.silvasonic.service": "uploader"},
        "unrelated": {},
    }
    for name, labels in others.items():
        client.containers.create(
            image=clean_podman.image, name=name, labels=labels,
            command=["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
            volumes=volumes, network_mode="host", detach=True,
        ).start()  # fmt: skip
    add_local_remote(session, tmp_path, "usb-a")

    with running_controller(podman_controller_env, tmp_path / "controller.log"):
        wait_for("our container", lambda: running_container(clean_podman, NAME))
        time.sleep(3)  # several cycles with foreign containers present
        session.get_one(StorageRemote, "usb-a").is_active = False
        session.commit()
        wait_for("ours removed", lambda: find_container(clean_podman, NAME) is None, timeout_s=30)
        time.sleep(2)

    for name in others:
        assert running_container(clean_podman, name) is not None, name


def test_silent_podman_is_reported_and_survived(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")
    socket_link = tmp_path / "late.sock"  # no Podman there yet
    env = {**podman_controller_env, "SILVASONIC_CONTAINER_SOCKET": str(socket_link)}

    with running_controller(env, tmp_path / "controller.log") as controller:
        wait_for(
            "the outage report",
            lambda: "controller.backend_unavailable" in controller.event_names(),
        )
        time.sleep(4)  # several failing cycles
        assert controller.running  # never a crash loop
        assert controller.event_names().count("controller.backend_unavailable") == 1

        socket_link.symlink_to(clean_podman.socket)  # Podman answers now
        wait_for("the container", lambda: running_container(clean_podman, NAME))
        controller.wait_event("controller.backend_recovered")


def test_worker_with_a_failing_heartbeat_recreated_after_the_grace_period(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")
    env = {
        **podman_controller_env,
        "SILVASONIC_UPLOADER_HEARTBEAT_GRACE_S": "8",
        "SILVASONIC_UPLOADER_HEARTBEAT_STALE_S": "4",
        # the worker publishes once at start, then not for an hour: stale after 4 s
        "SILVASONIC_HEARTBEAT_INTERVAL_S": "3600",
    }

    with running_controller(env, tmp_path / "controller.log") as controller:
        first = wait_for("the container", lambda: running_container(clean_podman, NAME))
        stopped = controller.wait_event("controller.container_stopped", timeout_s=60)

        def replaced() -> Any | None:
            current = running_container(clean_podman, NAME)
            return current if current is not None and current.id != first.id else None

        wait_for("a fresh container", replaced)
        problem = next(
            e for e in controller.events()
            if e.get("event") in ("controller.heartbeat_stale", "controller.heartbeat_missing")
        )  # fmt: skip

    assert stopped["reason"] in ("heartbeat_stale", "heartbeat_missing")
    assert problem["running_for_s"] >= 8  # never before the grace period


def test_python_module_entry_point_runs_the_same_loop(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    tmp_path: Path,
) -> None:
    add_local_remote(session, tmp_path, "usb-a")

    with running_controller(podman_controller_env, tmp_path / "controller.log", module=True):
        wait_for("the container", lambda: running_container(clean_podman, NAME))


@pytest.mark.skipif(
    not (
        USE_REAL_WORKER
        and REAL_WORKER_AVAILABLE
        and (ROOT / "silvasonic_uploader" / "cli" / "beat.py").exists()
    ),
    reason="needs the real worker in the containers (tests/system/helpers.py USE_REAL_WORKER) "
    "and the dispatcher (`silvasonic-uploader beat`, silvasonic_uploader/cli/beat.py), which are not in this tree yet",
)
def test_multi_remote_upload_independence(
    podman_controller_env: dict[str, str],
    clean_podman: PodmanEnv,
    session: Session,
    workspace: Path,
    db_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # given: two local remotes and recordings with their WAVs
    podman_controller_env = {**podman_controller_env, "SILVASONIC_UPLOADER_STOP_TIMEOUT_S": "15"}
    folders = [add_local_remote(session, tmp_path, slug) for slug in ("usb-a", "usb-b")]
    recordings = [
        make_recording_with_wav(session, workspace / "recorder", seconds=1.0) for _ in range(6)
    ]
    session.commit()
    ids = [r.id for r in recordings]
    beat_env = {
        **podman_controller_env,
        "SILVASONIC_RECORDER_WORKSPACE": str(workspace / "recorder"),
    }
    beat_log = (tmp_path / "beat.log").open("wb")
    dispatcher = subprocess.Popen(
        [cli_program(), "beat"], env=beat_env, stdout=beat_log, stderr=subprocess.STDOUT,
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        # when: the controller runs a worker per remote
        with running_controller(podman_controller_env, tmp_path / "controller.log"):
            wait_for("two workers", lambda: all(
                running_container(clean_podman, f"silvasonic-uploader-{s}") for s in ("usb-a", "usb-b")
            ))  # fmt: skip

            def all_uploaded() -> bool:
                session.expire_all()
                flagged = session.execute(
                    text("SELECT count(*) FROM recordings WHERE uploaded AND id = ANY(:ids)"),
                    {"ids": ids},
                ).scalar_one()
                return bool(flagged == len(ids))

            try:
                wait_for("every recording flagged uploaded", all_uploaded, timeout_s=120)
            finally:
                for slug in ("usb-a", "usb-b"):
                    save_container_log(clean_podman, f"silvasonic-uploader-{slug}", tmp_path)
    finally:
        os.killpg(dispatcher.pid, signal.SIGTERM)
        dispatcher.wait(30)

    # then: each remote holds every recording, with one success row each ...
    rows = session.execute(
        text(
            "SELECT remote_slug, count(*), max(attempt_at) FROM uploads "
            "WHERE success AND recording_id = ANY(:ids) GROUP BY remote_slug"
        ),
        {"ids": ids},
    ).all()
    assert {r[0]: r[1] for r in rows} == {"usb-a": len(ids), "usb-b": len(ids)}
    for folder in folders:
        assert len(list(folder.rglob("*.flac"))) == len(ids)
    # ... and each recording was flagged only after both successes
    early = session.execute(
        text(
            "SELECT r.id FROM recordings r JOIN uploads u ON u.recording_id = r.id AND u.success "
            "WHERE r.id = ANY(:ids) GROUP BY r.id, r.uploaded_at "
            "HAVING r.uploaded_at < max(u.attempt_at) OR count(DISTINCT u.remote_slug) < 2"
        ),
        {"ids": ids},
    ).all()
    assert early == []
