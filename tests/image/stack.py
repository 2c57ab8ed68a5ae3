"""The station stack as shipped, run with podman-compose: shared by ``tests/image/test_stack.py``
and ``bench/container_memory.py``.

``compose.yml`` and ``.env.example`` are used as they are. What the machine needs differently
is handed over without editing them:

- the env file is ``.env.example`` with the folder, socket, network and port lines pointed at a
  private folder (passed with ``--env-file``; the repository's own ``.env`` is never written);
- ``tests/image/compose.standins.yml`` swaps the two registry images (postgres, redis) for
  stand-ins built from Debian's packages (``tests/image/standins/``), nothing else;
- the controller gets a private ``podman system service`` socket on the machine's own storage
  (the one podman-compose uses), so the workers it starts run from the image compose built.

The stack is brought up in the order docs/station-install.md tells an operator on Podman older
than 4.6 (Debian 12 and Raspberry Pi OS ship 4.3.1): there podman-compose ignores
``condition: service_healthy`` and cannot start a service whose dependency chain includes the
finished ``db-upgrade`` (containers/podman-compose#683), so the steps are database and Redis,
wait until their compose healthchecks pass, ``db-upgrade``, then the rest with ``--no-deps``.
The healthchecks are run with ``podman healthcheck run`` (the compose file's own commands):
without systemd, Podman 4 schedules none.

Everything it creates is removed by :meth:`Stack.close`: containers (the compose project's, the
controller's workers, the WebDAV server), Podman secrets (the workers', the WebDAV password),
volumes, the network, the API service, the folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from uploader.audio import page_cache

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "tests" / "image"
LOCAL_BASE = "localhost/silvasonic-base:py3.13"
UPLOADER_IMAGE = "localhost/silvasonic_uploader:latest"  # compose.yml's, fixed there
POSTGRES_STANDIN = "localhost/silvasonic-standin-postgres:test"
REDIS_STANDIN = "localhost/silvasonic-standin-redis:test"
WORKER_UID = 10001  # the image's user, compose's SILVASONIC_UPLOADER_USER default
DEVICE = "imagetest-mic-0001"
SEGMENT_S = 10
WEBDAV_USER = "station"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 1.0
) -> T:
    """Poll ``probe`` until it returns something truthy; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def build_images(base: str | None = None) -> None:
    """The local base (``build_base.sh``, skipped while it exists), the two stand-ins, and the
    project image through compose's own build template, as an operator builds it
    (``--profile managed build uploader``), on ``base`` (default: the local base)."""
    if base is None:
        subprocess.run([str(IMAGE_DIR / "build_base.sh")], check=True)
        base = LOCAL_BASE
    for image, containerfile in (
        (POSTGRES_STANDIN, "postgres.Containerfile"),
        (REDIS_STANDIN, "redis.Containerfile"),
    ):
        subprocess.run(
            ["podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}",
             "-t", image, "-f", containerfile, "."],
            cwd=IMAGE_DIR / "standins", check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    subprocess.run(
        [*podman_compose(), "-f", "compose.yml", "--profile", "managed", "build",
         "--build-arg", f"BASE_IMAGE={base}", "uploader"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        # compose.yml refuses any command without SILVASONIC_WORKSPACE_PATH (a station has it
        # in .env before it builds); the build itself does not use it
        env={**compose_environment(), "SILVASONIC_WORKSPACE_PATH": "/build-only",
             "BUILDAH_FORMAT": "docker"},
    )  # fmt: skip


def compose_environment() -> dict[str, str]:
    """This process's environment without the stack's own variables: podman-compose lets the
    environment override the env file, and the test session sets some of them (the test
    servers' URLs, SILVASONIC_LOCAL_REMOTE_ROOTS) for its other tests."""
    own = ("SILVASONIC_", "POSTGRES_", "FLOWER_", "REDIS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(own)}


def podman_compose() -> list[str]:
    """podman-compose from this environment (the dev dependency), else from PATH."""
    local = Path(sys.executable).parent / "podman-compose"
    if local.exists():
        return [str(local)]
    found = shutil.which("podman-compose")
    if found is None:
        raise FileNotFoundError("podman-compose is not installed (uv sync installs it)")
    return [found]


@dataclass(frozen=True)
class Seeded:
    id: int
    file_raw: str  # relative to the recorder workspace


def field_audio(seconds: int, rate: int, seed: int) -> np.ndarray:
    """Field-like audio (pink noise floor plus calls), as the demo makes it; float in [-1, 1]."""
    from silvasonic_uploader.cli.demo_station import field_audio as demo_audio

    return demo_audio(seconds, rate, seed)


class Stack:
    """compose.yml up with podman-compose, in a private folder; see the module docstring."""

    def __init__(self, project: str = "silvasonic-imagetest") -> None:
        self.project = project
        self.network = f"{project}-net"
        self.base = Path(tempfile.mkdtemp(prefix=f"{project}.", dir="/var/tmp"))
        self.base.chmod(0o755)  # the worker (uid 10001) must pass it to reach the recordings
        self.secrets_dir = self.base / "secrets"
        self.workspace = self.base / "workspace"
        self.recorder = self.workspace / "recorder"
        self.remotes_root = self.base / "remotes"
        self.webdav_root = self.base / "webdav"
        self.env_file = self.base / "env"
        self.socket = self.base / "podman.sock"
        self.flower_port = free_port()
        self.webdav_port = free_port()
        self.webdav_name = f"{project}-webdav"
        self.webdav_secret = f"{project}-webdav-pass"
        self.webdav_password = secrets.token_hex(16)
        self.service: subprocess.Popen[bytes] | None = None
        self.slugs: list[str] = []
        self._engine: Engine | None = None

    # -- setup ----------------------------------------------------------------------------

    def write_files(self) -> None:
        """The five secret files and the env file, as .env.example says to make them."""
        self.secrets_dir.mkdir(mode=0o700)
        for folder in (self.recorder, self.remotes_root, self.webdav_root):
            folder.mkdir(parents=True)
        os.chown(self.webdav_root, WORKER_UID, WORKER_UID)
        pg, rd = secrets.token_hex(24), secrets.token_hex(24)
        files = {
            "postgres_password": pg,
            "redis_password": rd,
            "redis_url": f"redis://:{rd}@redis:6379/0",
            "flower_basic_auth": f"silvasonic:{secrets.token_hex(16)}\n",
            "encryption_key": podman(
                "run", "--rm", UPLOADER_IMAGE, "secrets", "generate-key"
            ).stdout,
        }
        for name, value in files.items():
            path = self.secrets_dir / name
            path.write_text(value)
            path.chmod(0o644)  # .env.example: the folder is private, each file readable inside
        replace = {
            "SILVASONIC_SECRETS_DIR": str(self.secrets_dir),
            "SILVASONIC_WORKSPACE_PATH": str(self.workspace),
            "SILVASONIC_PODMAN_SOCKET": str(self.socket),
            "SILVASONIC_NETWORK": self.network,
            "FLOWER_PORT": str(self.flower_port),
            "SILVASONIC_LOCAL_REMOTE_ROOTS": str(self.remotes_root),
        }
        lines = []
        for line in (ROOT / ".env.example").read_text().splitlines():
            key = line.split("=", 1)[0]
            lines.append(f"{key}={replace.pop(key)}" if key in replace else line)
        assert not replace, f".env.example lacks {sorted(replace)}"
        self.env_file.write_text("\n".join(lines) + "\n")

    def start_podman_service(self) -> None:
        """The Podman API socket the controller mounts (the station user's podman.socket)."""
        log = (self.base / "podman-service.log").open("wb")
        self.service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for("the Podman API socket", self.socket.exists, 30, 0.2)

    def compose(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        command = [*podman_compose(), "-p", self.project, "--env-file", str(self.env_file),
                   "-f", "compose.yml", "-f", str(IMAGE_DIR / "compose.standins.yml"),
                   "--profile", "tools", *args]  # fmt: skip
        result = subprocess.run(
            command, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout,
            check=False, env=compose_environment(),
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def healthy(self, service: str) -> bool:
        """compose.yml's healthcheck of ``service``, run now (``podman healthcheck run``)."""
        return podman("healthcheck", "run", self.container(service), check=False).returncode == 0

    def up(self) -> None:
        """The station-install.md steps (Podman < 4.6), each waited for."""
        self.compose("up", "-d", "database", "redis")
        wait_for(
            "database and redis healthy",
            lambda: self.healthy("database") and self.healthy("redis"),
            120,
        )
        self.compose("up", "-d", "--no-deps", "db-upgrade")
        code = podman("wait", self.container("db-upgrade"), timeout=120).stdout.strip()
        assert code == "0", podman("logs", self.container("db-upgrade"), check=False).stderr
        self.compose("up", "-d", "--no-deps", "flower", "uploader-beat", "controller")
        wait_for("flower healthy", lambda: self.healthy("flower"), 120, 2.0)

    def start(self) -> None:
        self.write_files()
        self.start_podman_service()
        self.up()

    # -- remotes ---------------------------------------------------------------------------

    def start_webdav(self, rclone: Path | None = None) -> str:
        """``rclone serve webdav`` (the image's rclone, or the host's ``rclone`` binary mounted
        in: another file, so the server does not share the workers' page cache pages of it) on
        the stack's network, published on 127.0.0.1; its password a Podman secret handed over
        as RCLONE_PASS (no argv, no -e). Returns the URL the workers use."""
        secret = self.base / "webdav_pass"
        secret.write_text(self.webdav_password)
        secret.chmod(0o600)
        podman("secret", "create", self.webdav_secret, str(secret))
        secret.unlink()
        podman(
            "run", "-d", "--name", self.webdav_name, "--network", self.network,
            "-p", f"127.0.0.1:{self.webdav_port}:8080",
            "--secret", f"{self.webdav_secret},type=env,target=RCLONE_PASS",
            "-e", f"RCLONE_USER={WEBDAV_USER}", "-v", f"{self.webdav_root}:/srv/webdav",
            *(["-v", f"{rclone}:/usr/local/bin/rclone-host:ro"] if rclone else []),
            "--entrypoint", "rclone-host" if rclone else "rclone", UPLOADER_IMAGE,
            "serve", "webdav", "/srv/webdav", "--addr", ":8080",
        )  # fmt: skip
        return f"http://{self.webdav_name}:8080"

    def add_webdav_remote(self, slug: str, url: str) -> str:
        """Through the cli service, the secrets on standard input (``-T``)."""
        self.slugs.append(slug)
        result = self.compose(
            "run", "--rm", "-T", "cli", "remotes", "add", slug, "--type", "webdav",
            "--name", f"WebDAV {slug}", "--option", f"url={url}", "--target-path", "archive",
            "--secrets-from-stdin",
            stdin=f"user={WEBDAV_USER}\npass={self.webdav_password}\n",
        )  # fmt: skip
        return result.stdout

    def add_local_remote(self, slug: str) -> Path:
        """A folder below SILVASONIC_LOCAL_REMOTE_ROOTS, made writable for the worker first
        (the controller, in its container, cannot see the host's folder to make it)."""
        folder = self.remotes_root / slug
        folder.mkdir()
        os.chown(folder, WORKER_UID, WORKER_UID)
        self.slugs.append(slug)
        self.compose("run", "--rm", "-T", "cli", "remotes", "add", slug, "--type", "local",
                     "--name", f"Folder {slug}", "--target-path", str(folder))  # fmt: skip
        return folder

    def worker(self, slug: str) -> str:
        return f"silvasonic-uploader-{slug}"

    def wait_worker_ready(self, slug: str, timeout_s: float = 120) -> None:
        name = self.worker(slug)
        wait_for(
            f"{name} ready",
            lambda: "worker_ready" in self.logs(name),
            timeout_s,
        )

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return result.stdout + result.stderr

    def diagnose(self) -> str:
        """What a failed test prints: every container, and the controller's last lines."""
        ps = podman("ps", "-a", "--format", "{{.Names}} {{.Status}}", check=False).stdout
        return f"{ps}\n--- controller:\n{self.logs(self.container('controller'))[-4000:]}"

    # -- the database, as the Indexer writes it ---------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            ip = podman("inspect", self.container("database"), "--format",
                        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").stdout.strip()  # fmt: skip
            password = (self.secrets_dir / "postgres_password").read_text().strip()
            self._engine = create_engine(
                f"postgresql+psycopg2://silvasonic:{password}@{ip}:5432/silvasonic"
            )
        return self._engine

    def seed(
        self,
        count: int,
        *,
        rate: int = 48_000,
        subtype: str = "PCM_16",
        distinct: int = 8,
        cold: bool = False,
    ) -> list[Seeded]:
        """``count`` 10 s segments as Silvasonic's Recorder names and writes them and its
        Indexer indexes them: the file first, then its ``recordings`` row (a ``devices`` row
        once). ``distinct`` different signals are cycled (the encoder's work per file is the
        same; generating 1,000 signals is not what is measured). ``cold``: each file is
        written back and dropped from the page cache before its row exists, as one the Recorder
        finished a while ago (the worker then reads it from disk)."""
        from silvasonic_uploader.cli.demo_station import recording_name
        from uploader.db.models import Device, Recording

        signals = [field_audio(SEGMENT_S, rate, seed=i + 1) for i in range(min(distinct, count))]
        run_hex = secrets.token_hex(4)
        now = datetime.now(UTC).replace(microsecond=0)
        first = now - timedelta(seconds=SEGMENT_S * count)
        folder = Path(DEVICE) / "data" / "raw"
        made: list[Seeded] = []
        with Session(self.engine) as session:
            if session.get(Device, DEVICE) is None:
                session.add(Device(name=DEVICE, serial_number="IMAGETEST-0001",
                                   model="Synthetic field microphone (image test)",
                                   status="online", enrollment_status="enrolled", config={},
                                   workspace_name=DEVICE))  # fmt: skip
                session.flush()
            for seq in range(count):
                start = first + timedelta(seconds=SEGMENT_S * seq)
                relative = folder / recording_name(start, run_hex, seq)
                path = self.recorder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(
                    str(path), signals[seq % len(signals)], rate, subtype=subtype, format="WAV"
                )
                if cold:
                    with path.open("rb+") as f:
                        os.fsync(f.fileno())
                    page_cache.release(path)
                row = Recording(time=start, sensor_id=DEVICE, file_raw=str(relative),
                                duration=float(SEGMENT_S), sample_rate=rate,
                                filesize_raw=path.stat().st_size)  # fmt: skip
                session.add(row)
                session.flush()
                made.append(Seeded(row.id, str(relative)))
                if seq % 100 == 99:
                    session.commit()  # the Indexer commits as it goes
            session.commit()
        return made

    def uploaded(self, slug: str) -> dict[int, str]:
        """recording id -> remote path of each successful upload to ``slug``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT recording_id, remote_path FROM uploads "
                     "WHERE success AND remote_slug = :s"), {"s": slug},
            ).all()  # fmt: skip
        return {int(r): str(p) for r, p in rows}

    def flagged(self, ids: Sequence[int]) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM recordings WHERE uploaded AND id = ANY(:ids)"),
                    {"ids": list(ids)},
                ).scalar_one()
            )

    def wait_all_uploaded(self, ids: Sequence[int], timeout_s: float) -> None:
        wanted = set(ids)

        def done() -> bool:
            return all(wanted <= set(self.uploaded(s)) for s in self.slugs) and self.flagged(
                ids
            ) == len(wanted)

        wait_for(f"{len(wanted)} recordings on {self.slugs} and flagged", done, timeout_s, 2.0)

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything; each step on its own, so one failure does not leave the rest."""
        steps: list[Callable[[], object]] = [
            # the controller first: it would recreate a removed worker
            lambda: podman("rm", "-f", "-t", "5", self.container("controller"), check=False),
            lambda: podman("rm", "-f", "-t", "5", *map(self.worker, self.slugs), check=False),
            lambda: podman("rm", "-f", "-t", "2", self.webdav_name, check=False),
            lambda: self.compose("down", "-v", "-t", "10", check=False),
            # what `down` leaves when a dependency chain is broken (podman-compose#683)
            self._remove_project_leftovers,
            self._remove_secrets,
            self._stop_service,
        ]
        if self._engine is not None:
            steps.insert(0, self._engine.dispose)
        for step in steps:
            with contextlib.suppress(Exception):
                step()
        shutil.rmtree(self.base, ignore_errors=True)

    def _remove_project_leftovers(self) -> None:
        ids = podman("ps", "-aq", "--filter", f"label=io.podman.compose.project={self.project}",
                     check=False).stdout.split()  # fmt: skip
        if ids:
            podman("rm", "-f", "--depend", "-t", "2", *ids, check=False)
        for volume in ("postgres-data", "redis-data", "flower-data"):
            podman("volume", "rm", "-f", f"{self.project}_{volume}", check=False)
        podman("network", "rm", "-f", self.network, check=False)

    def _remove_secrets(self) -> None:
        """The WebDAV password and the secrets the controller made for our workers (named
        ``silvasonic-uploader-<slug>.<variable>.<digest>``), which go with a worker only
        when the controller removes it."""
        names = podman("secret", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        prefixes = tuple(f"{self.worker(s)}." for s in self.slugs)
        mine = [n for n in names if n == self.webdav_secret or n.startswith(prefixes)]
        if mine:
            podman("secret", "rm", *mine, check=False)

    def _stop_service(self) -> None:
        service, self.service = self.service, None
        if service is None or service.poll() is not None:
            return
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(5)


@contextlib.contextmanager
def running_stack(project: str = "silvasonic-imagetest") -> Iterator[Stack]:
    stack = Stack(project)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()


def cgroup_memory_dir(container: str) -> Path:
    """The container's memory cgroup: v2 (unified) or v1 (the memory controller's tree)."""
    cgroup_path = podman("inspect", container, "--format", "{{.State.CgroupPath}}").stdout.strip()
    for candidate in (Path("/sys/fs/cgroup") / cgroup_path.lstrip("/"),
                      Path("/sys/fs/cgroup/memory") / cgroup_path.lstrip("/")):  # fmt: skip
        if (candidate / "memory.max").exists() or (candidate / "memory.limit_in_bytes").exists():
            return candidate
    raise FileNotFoundError(f"no memory cgroup for {container} ({cgroup_path})")


@dataclass(frozen=True)
class CgroupMemory:
    """What the kernel says about a container's memory (cgroup v1 or v2), in bytes/counts."""

    version: int
    limit: int
    current: int
    peak: int  # v2 memory.peak, v1 memory.max_usage_in_bytes
    failcnt: int  # v1 memory.failcnt; v2 memory.events "max" (times the limit was hit)
    oom: int  # v2 memory.events "oom"; v1 under_oom now (0/1)
    oom_kill: int  # v1 memory.oom_control / v2 memory.events "oom_kill"
    stat: dict[str, int]

    @staticmethod
    def read(directory: Path) -> CgroupMemory:
        def kv(name: str) -> dict[str, int]:
            pairs = (line.split() for line in (directory / name).read_text().splitlines())
            return {k: int(v) for k, v in pairs}

        if (directory / "memory.max").exists():
            events = kv("memory.events")
            limit = (directory / "memory.max").read_text().strip()
            peak_file = directory / "memory.peak"
            return CgroupMemory(
                version=2,
                limit=-1 if limit == "max" else int(limit),
                current=int((directory / "memory.current").read_text()),
                peak=int(peak_file.read_text()) if peak_file.exists() else -1,
                failcnt=events.get("max", 0),
                oom=events.get("oom", 0),
                oom_kill=events.get("oom_kill", 0),
                stat=kv("memory.stat"),
            )
        control = kv("memory.oom_control")
        return CgroupMemory(
            version=1,
            limit=int((directory / "memory.limit_in_bytes").read_text()),
            current=int((directory / "memory.usage_in_bytes").read_text()),
            peak=int((directory / "memory.max_usage_in_bytes").read_text()),
            failcnt=int((directory / "memory.failcnt").read_text()),
            oom=control.get("under_oom", 0),
            oom_kill=control.get("oom_kill", 0),
            stat=kv("memory.stat"),
        )


def reset_peak(directory: Path) -> None:
    """Start a new series: v1 resets max_usage and failcnt by writing 0; v2 (6.12+) resets
    memory.peak for this writer by writing anything; older v2 cannot (the caller reports the
    peak since the container started)."""
    for name in ("memory.max_usage_in_bytes", "memory.failcnt", "memory.peak"):
        with contextlib.suppress(OSError):
            (directory / name).write_text("0")
