"""Real Podman for the system tests, private to this test session.

A ``podman system service`` on a temporary socket, with its own storage root, run root and
containers.conf (runtime ``runc``: the default crun fails on this kind of cgroup v1 host), so the
machine's own Podman storage is never touched. No registry is reachable, so the worker image is
imported from a tiny root filesystem; the host's ``/usr``, this project and its Python are
bind-mounted into each worker read-only (``SILVASONIC_UPLOADER_EXTRA_MOUNTS``). Workers use host
networking to reach the test PostgreSQL and Redis on 127.0.0.1.

Where Podman cannot start a container the Podman tests skip with the reason — or fail, when
``SILVASONIC_REQUIRE_PODMAN=1`` (CI sets it: a skipped system suite there is a failure).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.system.helpers import (
    ROOT,
    STANDIN_DIR,
    USE_REAL_WORKER,
    base_environment,
    kill_leftover_conmons,
    podman_client,
    remove_all_containers,
)

IMAGE = "localhost/silvasonic_uploader:systemtest"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}/libpod-tmp"
"""
SERVICE_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PodmanEnv:
    socket: str  # filesystem path of the API socket
    image: str
    extra_mounts: str  # value for SILVASONIC_UPLOADER_EXTRA_MOUNTS
    cli: list[str]  # podman with the private storage flags
    cli_env: dict[str, str]
    storage_root: Path


def _require() -> bool:
    return os.environ.get("SILVASONIC_REQUIRE_PODMAN") == "1"


def _unusable(reason: str) -> None:
    message = f"Podman cannot run containers here: {reason}"
    print(f"\n[system tests] {message}", file=sys.stderr)
    if _require():
        pytest.fail(f"{message} (SILVASONIC_REQUIRE_PODMAN=1)", pytrace=False)
    pytest.skip(message)


def _host_mounts() -> list[str]:
    """Read-only host paths a worker needs: /usr (and /lib* where they are not symlinks into
    it), the project, its virtual environment, the Python it was built from, and what the
    dynamic linker reads in /etc."""
    paths = ["/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.isdir(top) and not os.path.islink(top):
            paths.append(top)
    for extra in (str(ROOT), sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix)):
        if not any(extra == p or extra.startswith(p.rstrip("/") + "/") for p in paths):
            paths.append(extra)
    # shared libraries found through /etc (Debian's BLAS for ffmpeg is an alternatives link)
    paths += [p for p in ("/etc/alternatives", "/etc/ld.so.cache") if os.path.exists(p)]
    mounts = [f"{p}:{p}:ro" for p in paths]
    if not USE_REAL_WORKER:
        mounts.append(f"{STANDIN_DIR}:/standin:ro")
    return mounts


def _rootfs_tar() -> bytes:
    """A root filesystem of mount points, symlinks and two /etc files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        for d in ("usr", "etc", "root", "proc", "sys", "dev", "run", "var", "workspace",
                  "standin", "home"):  # fmt: skip
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        for top in ("bin", "sbin", "lib", "lib64", "lib32"):
            host = f"/{top}"
            if os.path.islink(host):
                info = tarfile.TarInfo(top)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(host)
                tar.addfile(info)
            elif os.path.isdir(host):
                add_dir(top)
        add_file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        add_file("etc/group", "root:x:0:\n")
    return buf.getvalue()


def _stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _unmount_below(path: Path) -> None:
    """Overlay mounts Podman may leave behind under our private storage."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    below = sorted(
        (line.split()[1] for line in mounts if line.split()[1].startswith(str(path) + "/")),
        key=len,
        reverse=True,
    )
    for target in below:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanEnv]:
    """A private Podman API service with the test image; stopped and cleaned up at the end."""
    binary = shutil.which("podman")
    if binary is None:
        _unusable("the podman binary is not installed (apt-get install podman runc)")
    assert binary is not None
    if shutil.which("runc") is None:
        _unusable("runc is not installed (apt-get install runc)")
    tmp = tmp_path_factory.mktemp("podman")
    conf = tmp / "containers.conf"
    conf.write_text(CONTAINERS_CONF.format(tmp=tmp))
    (tmp / "libpod-tmp").mkdir()
    cli = [binary, "--root", str(tmp / "root"), "--runroot", str(tmp / "run"),
           "--storage-driver", "overlay"]  # fmt: skip
    cli_env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    socket_path = tmp / "podman.sock"
    service = subprocess.Popen(
        [*cli, "system", "service", "--time=0", f"unix://{socket_path}"],
        env=cli_env,
        stdout=(tmp / "service.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        client = podman_client(str(socket_path))
        while True:
            if service.poll() is not None:
                _unusable(
                    f"podman system service exited: {(tmp / 'service.log').read_text()[-500:]}"
                )
            with contextlib.suppress(Exception):
                if socket_path.exists() and client.ping():
                    break
            if time.monotonic() > deadline:
                _unusable("podman system service did not answer within 30 s")
            time.sleep(0.2)
        tar = tmp / "rootfs.tar"
        tar.write_bytes(_rootfs_tar())
        path_env = "/standin:" if not USE_REAL_WORKER else ""
        path_env += f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin"
        imported = subprocess.run(
            [*cli, "import", "--change", f"ENV PATH={path_env}", "--change", "ENV HOME=/root",
             str(tar), IMAGE],
            env=cli_env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if imported.returncode != 0:
            _unusable(f"podman import failed: {imported.stderr.strip()[-500:]}")
        mounts = _host_mounts()
        env = PodmanEnv(str(socket_path), IMAGE, ",".join(mounts), cli, cli_env, tmp / "root")
        _probe(env)
        yield env
    finally:
        with contextlib.suppress(Exception):
            remove_all_containers(podman_client(str(socket_path)))
        _stop_service(service)
        subprocess.run([*cli, "rm", "--all", "--force", "--time", "1"], env=cli_env,
                       capture_output=True, check=False)  # fmt: skip
        kill_leftover_conmons(tmp)
        _unmount_below(tmp)


def _probe(env: PodmanEnv) -> None:
    """Start one container the way the controller will; skip (or fail) if Podman cannot."""
    client = podman_client(env.socket)
    volumes: dict[str, Any] = {}
    for entry in env.extra_mounts.split(","):
        source, target, _mode = entry.split(":")
        volumes[source] = {"bind": target, "mode": "ro"}
    try:
        container = client.containers.create(
            image=env.image, name="silvasonic-probe", command=["python3", "-c", "print('ok')"],
            volumes=volumes, network_mode="host", mem_limit="256m", cpu_quota=50_000,
            oom_score_adj=250, detach=True,
        )  # fmt: skip
        container.start()
        code = container.wait(timeout=60)
        logs: Any = container.logs(stdout=True, stderr=True)
        output = b"".join(logs).decode(errors="replace")
        container.remove(force=True)
    except Exception as exc:
        _unusable(f"a probe container could not run: {type(exc).__name__}: {exc}")
        return
    if code != 0 or "ok" not in output:
        _unusable(f"the probe container exited {code}: {output[-300:]}")


@pytest.fixture
def clean_podman(podman: PodmanEnv) -> Iterator[PodmanEnv]:
    """The session's Podman, emptied of containers after the test."""
    yield podman
    remove_all_containers(podman_client(podman.socket))
    kill_leftover_conmons(podman.storage_root)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """SILVASONIC_WORKSPACE_PATH: the recorders' folder must exist (read-only bind source)."""
    (tmp_path / "workspace" / "recorder").mkdir(parents=True)
    return tmp_path / "workspace"


@pytest.fixture
def podman_controller_env(
    clean_podman: PodmanEnv, db_url: str, redis_url: str, workspace: Path
) -> dict[str, str]:
    """The environment of a controller driving the private Podman with host networking."""
    return {
        **base_environment(),
        "SILVASONIC_CONTROLLER_BACKEND": "podman",
        "SILVASONIC_CONTAINER_SOCKET": clean_podman.socket,
        "SILVASONIC_UPLOADER_IMAGE": clean_podman.image,
        "SILVASONIC_UPLOADER_EXTRA_MOUNTS": clean_podman.extra_mounts,
        "SILVASONIC_NETWORK_MODE": "host",
        "SILVASONIC_UPLOADER_HEALTH_PORT": "39500",
        "SILVASONIC_WORKSPACE_PATH": str(workspace),
        "SILVASONIC_DATABASE_URL": db_url,
        "SILVASONIC_REDIS_URL": redis_url,
        "SILVASONIC_RECONCILE_INTERVAL_S": "1",
        "SILVASONIC_UPLOADER_HEARTBEAT_GRACE_S": "90",
        # the real worker's soft shutdown waits 8 s even when idle; these tests give it no
        # work, so a short stop keeps the suite inside its time budget
        "SILVASONIC_UPLOADER_STOP_TIMEOUT_S": "3",
        "SILVASONIC_HEARTBEAT_INTERVAL_S": "2",
        "SILVASONIC_DEVELOPMENT_MODE": "false",
    }
