"""Helpers for the system tests: the controller as a real subprocess, waiting, logs, Podman."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis
from podman import PodmanClient

from tests.conftest import TEST_LOCAL_REMOTE_ROOTS

ROOT = Path(__file__).resolve().parents[2]
STANDIN_DIR = Path(__file__).resolve().parent / "standin"
STANDIN = STANDIN_DIR / "silvasonic-uploader"
# The one line to change when the real worker (`silvasonic-uploader worker`, silvasonic_uploader/cli/worker.py)
# is to run in the containers instead of the stand-in.
USE_REAL_WORKER = True
REAL_WORKER_AVAILABLE = (ROOT / "silvasonic_uploader" / "cli" / "worker.py").exists()

T = TypeVar("T")


def podman_client(socket_path: str) -> PodmanClient:
    return PodmanClient(base_url=f"unix://{socket_path}", timeout=60)


def remove_all_containers(client: PodmanClient) -> None:
    """Every container, and every secret the controller made for one (the controller removes
    them with their container, but a test's workers are removed here, behind its back)."""
    for container in client.containers.list(all=True):
        with contextlib.suppress(Exception):
            container.kill(signal="SIGKILL")  # remove(force) would wait out the stop timeout
        with contextlib.suppress(Exception):
            container.remove(force=True)
    with contextlib.suppress(Exception):
        for secret in client.secrets.list():
            with contextlib.suppress(Exception):
                secret.remove()


def kill_leftover_conmons(storage_root: Path) -> int:
    """End the ``conmon`` monitors of exec sessions under our private storage: after an exec
    they wait up to 300 s (``--exit-delay``) even when their container is gone. Only processes
    whose command line names our storage root are touched."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and str(storage_root).encode() in b" ".join(argv):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)  # conmon ignores SIGTERM
                killed += 1
    return killed


def wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, interval_s: float = 0.3
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def cli_program() -> str:
    return str(Path(sys.executable).parent / "silvasonic-uploader")


class ControllerProcess:
    """``silvasonic-uploader controller`` (or ``python -m controller_ext``) as a subprocess
    with JSON logs in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, module: bool = False) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.argv = (
            [sys.executable, "-m", "controller_ext"] if module else [cli_program(), "controller"]
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, **env: str) -> ControllerProcess:
        self.env.update(env)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the controller dies without any chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def events(self, since_start: bool = True) -> list[dict[str, Any]]:
        """Parsed JSON log lines (of this run only, by default)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as fh:
            if since_start:
                fh.seek(self._offset)
            lines = fh.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def wait_event(self, name: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """The first log record of event ``name`` in this run, waiting for it to be written."""

        def find() -> dict[str, Any] | None:
            return next((e for e in self.events() if e.get("event") == name), None)

        return wait_for(f"log event {name}", find, timeout_s=timeout_s)

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def running_controller(
    env: Mapping[str, str], log_path: Path, **kw: Any
) -> Iterator[ControllerProcess]:
    controller = ControllerProcess(env, log_path, **kw).start()
    try:
        yield controller
    finally:
        controller.terminate()


def heartbeat(redis_url: str, slug: str) -> dict[str, Any] | None:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.get(f"silvasonic:status:{slug}")
    finally:
        client.close()
    return None if raw is None else dict(json.loads(raw))


def declare_queue(redis_url: str, slug: str) -> None:
    """Declare queue ``upload.<slug>`` as a worker does (kombu writes its binding keys)."""
    import kombu

    name = f"upload.{slug}"
    k: Any = kombu  # kombu ships no type hints
    with k.Connection(redis_url) as conn:
        k.Queue(name, k.Exchange(name), routing_key=name)(conn.default_channel).declare()


def queue_keys_left(redis_url: str, slug: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.keys(f"*upload.{slug}*"))
    finally:
        client.close()


def nudge(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.publish("silvasonic:nudge", "reconcile")
    finally:
        client.close()


def base_environment() -> dict[str, str]:
    """This process's environment without any Silvasonic or PostgreSQL setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SILVASONIC_", "POSTGRES_")) or k.startswith("SILVASONIC_TEST_")
    }
    env["SILVASONIC_LOCAL_REMOTE_ROOTS"] = TEST_LOCAL_REMOTE_ROOTS  # tmp_path remotes
    return env
