"""Uploader workers as local processes, for machines where Podman cannot run them (no socket,
no image, or a database the containers could not reach). Same interface and reconcile rule as
:class:`controller_ext.container_manager.ContainerManager`.

Each desired spec becomes one ``silvasonic-uploader worker --remote <slug>`` process in its own
session, with the spec's environment translated to this machine: container paths become the
mount sources, the database and Redis become the controller's own view of them, and each worker
gets a free health port. A small JSON state file per worker (pid, process start time, labels)
lets a restarted controller adopt workers that are still running, as Podman's labels do for
containers. Limits: no memory or CPU cap (a process has no cgroup of its own here); the OOM score
adjustment is applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from controller_ext.backend import (
    ManagedInstance,
    RestartBackoff,
    SyncResult,
    sync_state,
)
from controller_ext.container_spec import Tier2ServiceSpec
from uploader.settings import DatabaseSettings

log = structlog.get_logger("controller")

STOP_TIMEOUT_S = 10.0
_DB_HOST_VARS = ("SILVASONIC_DB_HOST", "POSTGRES_HOST")
_DB_PORT_VARS = ("SILVASONIC_DB_PORT", "POSTGRES_PORT")

CommandFactory = Callable[[Tier2ServiceSpec], Sequence[str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a live worker from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; fields after it follow the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    state, ticks = fields[0], fields[19]
    return None if state in ("Z", "X") else int(ticks)


def _pid_alive(pid: int, start_ticks: int | None) -> bool:
    current = _process_start_ticks(pid)
    if current is not None:
        return start_ticks is None or current == start_ticks
    if Path("/proc/self/stat").exists():
        return False  # /proc works and has no live entry for pid
    try:  # no /proc (not Linux): existence is all we can tell
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_worker_command(spec: Tier2ServiceSpec) -> list[str]:
    """The spec's command, its program resolved on this machine (PATH, then the program next
    to this Python, i.e. the same virtual environment)."""
    argv = list(spec.command)
    if argv and not os.path.isabs(argv[0]):
        found = shutil.which(argv[0])
        beside = Path(sys.executable).parent / argv[0]
        if found:
            argv[0] = found
        elif beside.exists():
            argv[0] = str(beside)
    return argv


def command_from_template(template: str) -> CommandFactory:
    """A factory from ``"prog args … {slug}"`` (``SILVASONIC_PROCESS_WORKER_COMMAND``)."""

    def factory(spec: Tier2ServiceSpec) -> list[str]:
        slug = spec.device_id or ""
        return [part.replace("{slug}", slug) for part in shlex.split(template)]

    return factory


def translate_environment(
    spec: Tier2ServiceSpec,
    *,
    database_url: str,
    redis_url: str,
    health_port: int,
) -> dict[str, str]:
    """The spec's environment as this machine sees it.

    Values naming a mount target (or a path below it) name the mount source instead; database
    and Redis variables point where the controller itself reaches them; the health port is this
    worker's own.
    """
    env = {**spec.environment, **spec.secrets}  # a local process: its environment is private
    mounts = sorted(spec.mounts, key=lambda m: len(m.target), reverse=True)
    for key, value in env.items():
        for mount in mounts:
            if value == mount.target or value.startswith(mount.target.rstrip("/") + "/"):
                env[key] = mount.source + value[len(mount.target.rstrip("/")) :]
                break
    url = make_url(database_url)
    for key in _DB_HOST_VARS:
        env[key] = url.host or "localhost"
    for key in _DB_PORT_VARS:
        env[key] = str(url.port or 5432)
    env["POSTGRES_USER"] = url.username or ""
    env["POSTGRES_PASSWORD"] = url.password if isinstance(url.password, str) else ""
    env["POSTGRES_DB"] = url.database or ""
    env["SILVASONIC_REDIS_URL"] = redis_url
    env["SILVASONIC_HEALTH_PORT"] = str(health_port)
    return env


class ProcessBackend:
    """Workers as child processes, tracked in ``state_dir``.

    ``command`` builds the argv for a spec (default :func:`default_worker_command`; tests
    inject a stand-in). Workers run in their own session and outlive the controller, which
    adopts them when it starts again, as with containers; :meth:`stop_all` ends them all.
    """

    kind = "process"

    def __init__(
        self,
        state_dir: Path,
        *,
        command: CommandFactory | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        base_environ: Mapping[str, str] | None = None,
        backoff: RestartBackoff | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._command = command or default_worker_command
        self._database_url = database_url
        self._redis_url = redis_url
        self._base_environ = base_environ
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self.backoff = backoff or RestartBackoff()
        self.known_ids: set[str] = set()

    # -- state files ------------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def _read_state(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_state(self, name: str, data: dict[str, Any]) -> None:
        path = self._state_path(name)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _alive(self, name: str, state: dict[str, Any]) -> bool:
        child = self._children.get(name)
        if child is not None and child.pid == state.get("pid"):
            return child.poll() is None  # also reaps our own exited children
        return _pid_alive(int(state["pid"]), state.get("start_ticks"))

    def _instance(self, state: dict[str, Any]) -> ManagedInstance:
        name = str(state["name"])
        return ManagedInstance(
            name=name,
            status="running" if self._alive(name, state) else "exited",
            labels=dict(state.get("labels") or {}),
            started_at=float(state.get("started_at") or 0) or None,
            id=f"{state['pid']}:{state.get('start_ticks')}",
        )

    # -- backend interface ------------------------------------------------------------------

    def list_managed(self) -> list[ManagedInstance]:
        instances = []
        for path in sorted(self.state_dir.glob("*.json")):
            state = self._read_state(path)
            if state is None or "pid" not in state or "name" not in state:
                continue
            instances.append(self._instance(state))
        return instances

    def get(self, name: str) -> ManagedInstance | None:
        state = self._read_state(self._state_path(name))
        return None if state is None else self._instance(state)

    def health_port(self, name: str) -> int | None:
        state = self._read_state(self._state_path(name))
        return None if state is None else int(state["health_port"])

    def start(self, spec: Tier2ServiceSpec) -> ManagedInstance | None:
        """Spawn the worker for ``spec``; a running one whose hash matches is returned as is.
        Returns None when the program cannot be started (logged)."""
        current = self.get(spec.name)
        if current is not None:
            if current.is_running and current.config_hash == spec.config_hash:
                return current
            self.stop(spec.name, spec.stop_timeout_s)
            self.remove(spec.name)
        port = free_port()
        env = dict(os.environ if self._base_environ is None else self._base_environ)
        env.update(
            translate_environment(
                spec,
                database_url=self._database_url or DatabaseSettings().url,
                redis_url=self._redis_url or spec.environment.get("SILVASONIC_REDIS_URL", ""),
                health_port=port,
            )
        )
        argv = list(self._command(spec))
        try:
            with self.log_path(spec.name).open("ab") as out:
                child = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            log.error(
                "controller.container_start_failed",
                name=spec.name,
                backend=self.kind,
                reason="spawn_failed",
                program=argv[0] if argv else "",
                error=type(exc).__name__,
            )
            return None
        self._children[spec.name] = child
        with contextlib.suppress(OSError):  # low priority under memory pressure (ADR-0020)
            Path(f"/proc/{child.pid}/oom_score_adj").write_text(str(spec.oom_score_adj))
        state = {
            "name": spec.name,
            "pid": child.pid,
            "start_ticks": _process_start_ticks(child.pid),
            "started_at": time.time(),
            "labels": dict(spec.labels),
            "health_port": port,
            "stop_timeout_s": spec.stop_timeout_s,
            "argv0": argv[0] if argv else "",
        }
        self._write_state(spec.name, state)
        return self._instance(state)

    def stop(self, name: str, timeout_s: float | None = None) -> None:
        """SIGTERM the worker's process group, SIGKILL it after ``timeout_s`` (by default the
        stop timeout of the spec it was started from)."""
        state = self._read_state(self._state_path(name))
        if state is None or not self._alive(name, state):
            self._children.pop(name, None)
            return
        pid = int(state["pid"])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        if timeout_s is None:  # the worker's own stop timeout, recorded from its spec
            timeout_s = float(state.get("stop_timeout_s") or STOP_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._alive(name, state):
            time.sleep(0.1)
        if self._alive(name, state):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            child = self._children.get(name)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
        self._children.pop(name, None)

    def remove(self, name: str) -> None:
        """Forget a stopped worker (its log stays for the operator)."""
        state = self._read_state(self._state_path(name))
        if state is not None and self._alive(name, state):
            self.stop(name)
        with contextlib.suppress(FileNotFoundError):
            self._state_path(name).unlink()

    def stop_and_remove(self, name: str, timeout_s: float | None = None) -> None:
        self.stop(name, timeout_s)
        self.remove(name)

    def stop_all(self, timeout_s: float | None = None) -> None:
        for instance in self.list_managed():
            self.stop_and_remove(instance.name, timeout_s)

    def sync_state(
        self, desired: Sequence[Tier2ServiceSpec], actual: Sequence[ManagedInstance]
    ) -> SyncResult:
        return sync_state(self, desired, actual, backoff=self.backoff, known_ids=self.known_ids)
