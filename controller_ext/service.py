"""The runnable controller: settings, the choice of backend, and the loop with its nudge
subscriber (``silvasonic-uploader controller`` and ``python -m controller_ext``).

Run it only where the upstream Silvasonic Controller does not run: that one manages uploaders
itself once given :class:`controller_ext.evaluator.UploaderEvaluator` (docs/controller.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import redis
import structlog
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from controller_ext.backend import Backend
from controller_ext.container_manager import DEFAULT_SOCKET, ContainerManager
from controller_ext.container_spec import UploaderEnvConfig
from controller_ext.evaluator import Evaluator, UploaderEvaluator
from controller_ext.heartbeat_gate import DEFAULT_GRACE_S, DEFAULT_STALE_AFTER_S
from controller_ext.nudge import NudgeSubscriber
from controller_ext.process_backend import ProcessBackend, command_from_template
from controller_ext.reconciler import DEFAULT_INTERVAL_S, ReconciliationLoop
from uploader.db.session import session_scope
from uploader.ops.logs import configure_logging
from uploader.settings import DatabaseSettings

log = structlog.get_logger("controller")

BackendChoice = Literal["auto", "podman", "process"]


class ControllerSettings(BaseSettings):
    """The controller's own environment (prefix ``SILVASONIC_``); read at start."""

    model_config = SettingsConfigDict(env_prefix="SILVASONIC_", extra="ignore")

    container_socket: str = DEFAULT_SOCKET
    reconcile_interval_s: float = DEFAULT_INTERVAL_S
    controller_backend: BackendChoice = "auto"
    uploader_heartbeat_grace_s: float = DEFAULT_GRACE_S
    uploader_heartbeat_stale_s: float = DEFAULT_STALE_AFTER_S
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    # process backend: where workers' state files and logs live (default: a folder per
    # database and Redis, so two controllers for two stations on one machine never adopt or
    # remove each other's workers), and an optional command template ("prog args … {slug}")
    # instead of `silvasonic-uploader worker --remote {slug}`
    process_state_dir: Path | None = None
    process_worker_command: str | None = None

    def state_dir_for(self, database_url: str) -> Path:
        if self.process_state_dir is not None:
            return self.process_state_dir
        station = f"{database_url}|{self.redis_url.get_secret_value()}"
        digest = hashlib.sha256(station.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "silvasonic-uploader-workers" / digest


def _is_loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def podman_obstacle(
    manager: ContainerManager, env: UploaderEnvConfig, database_url: str
) -> str | None:
    """Why Podman cannot run our workers here, or None when it can."""
    if not Path(manager.socket_path).exists():
        return f"no Podman socket at {manager.socket_path}"
    if not manager.ping():
        return f"Podman at {manager.socket_path} does not answer"
    if not manager.image_exists(env.uploader_image):
        return f"image {env.uploader_image} is not on this machine"
    if env.network_mode != "host":
        if not manager.network_exists(env.network):
            return f"network {env.network} does not exist (set SILVASONIC_NETWORK_MODE=host?)"
        if _is_loopback(make_url(database_url).host):
            return "the database is on this machine's loopback, which containers cannot reach"
        if _is_loopback(make_url(env.redis_url.get_secret_value()).host):
            return "Redis is on this machine's loopback, which containers cannot reach"
    return None


def select_backend(
    settings: ControllerSettings, env: UploaderEnvConfig | None = None
) -> tuple[Backend, str]:
    """Podman where it can run our workers, else local processes; returns the backend and
    why. ``SILVASONIC_CONTROLLER_BACKEND=podman|process`` forces one."""
    database_url = DatabaseSettings().url
    forced = "chosen by --backend or SILVASONIC_CONTROLLER_BACKEND"
    if settings.controller_backend == "podman":
        return ContainerManager(settings.container_socket), forced
    if settings.controller_backend == "auto":
        manager = ContainerManager(settings.container_socket)
        obstacle = podman_obstacle(
            manager,
            env or UploaderEnvConfig(),
            database_url,
        )
        if obstacle is None:
            return manager, "Podman answers and can reach the database"
        manager.close()
        reason = obstacle
    else:
        reason = forced
    command = (
        command_from_template(settings.process_worker_command)
        if settings.process_worker_command
        else None
    )
    state_dir = settings.state_dir_for(database_url)
    backend = ProcessBackend(
        state_dir,
        command=command,
        database_url=database_url,
        redis_url=settings.redis_url.get_secret_value(),
    )
    return backend, f"{reason}; worker state and logs in {state_dir}"


def build_loop(
    settings: ControllerSettings,
    backend: Backend,
    evaluators: list[Evaluator] | None = None,
) -> tuple[ReconciliationLoop, redis.Redis[Any]]:
    client: redis.Redis[Any] = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5
    )
    loop = ReconciliationLoop(
        backend,
        evaluators if evaluators is not None else [UploaderEvaluator()],
        session_scope,
        interval_s=settings.reconcile_interval_s,
        redis_client=client,
        grace_period_s=settings.uploader_heartbeat_grace_s,
        stale_after_s=settings.uploader_heartbeat_stale_s,
    )
    return loop, client


def run_controller(
    settings: ControllerSettings | None = None,
    *,
    backend: Backend | None = None,
    once: bool = False,
    stop_event: threading.Event | None = None,
) -> int:
    """Run the loop until SIGTERM/SIGINT (or ``stop_event``); workers are left running.
    With ``once``, run a single cycle and return 0 when it succeeded (every evaluator
    included), 1 otherwise."""
    settings = settings or ControllerSettings()
    if backend is None:
        backend, reason = select_backend(settings)
        log.info("controller.backend_selected", backend=backend.kind, reason=reason)
    loop, client = build_loop(settings, backend)
    try:
        if once:
            report = loop.run_once()
            return 0 if report.ok and not report.failed_services else 1
        nudges = NudgeSubscriber(settings.redis_url.get_secret_value(), loop.trigger)
        nudges.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda _s, _f: loop.stop())
        if stop_event is not None:

            def _watch(event: threading.Event = stop_event) -> None:
                event.wait()
                loop.stop()

            threading.Thread(target=_watch, name="stop-watch", daemon=True).start()
        try:
            loop.run()
        finally:
            nudges.stop()
        return 0
    finally:
        client.close()


def main() -> None:
    """``python -m controller_ext``: configuration from the environment only."""
    configure_logging("controller")
    raise SystemExit(run_controller())
