"""Worker life cycle: the health server and heartbeat (a bootstep in the worker's main
process, which stays responsive while the pool child runs a task), per-child set-up after
fork, and the final summary at shutdown.

Only a worker started for a remote (``SILVASONIC_STORAGE_REMOTE_SLUG`` set, by
``silvasonic-uploader worker``) serves ``/healthy`` and publishes a heartbeat.
"""

from __future__ import annotations

import os
from typing import Any

import redis
import structlog
from celery import Celery, bootsteps
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from sqlalchemy import Engine, create_engine, pool, text

from uploader import remote_state, work_poller, worker_counters
from uploader.db.session import dispose_engine
from uploader.health import HealthMonitor, HealthServer
from uploader.heartbeat import Heartbeat, build_payload
from uploader.settings import DatabaseSettings, UploaderServiceSettings

log = structlog.get_logger(__name__)
SERVICE = "uploader"


class UploaderHealthStep(bootsteps.StartStopStep):
    """Serve ``GET /healthy`` and publish ``silvasonic:status:<slug>`` from the main process."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.env = UploaderServiceSettings()
        self.slug = self.env.storage_remote_slug
        self.monitor = HealthMonitor()
        self.server: HealthServer | None = None
        self.heartbeat: Heartbeat | None = None
        self.engine: Engine | None = None

    def start(self, parent: Any) -> None:
        if not self.slug:
            return
        global _monitor
        _monitor = self.monitor
        self.server = HealthServer(self.monitor, self.env.health_port)
        self.server.start()
        # the parent's own engine, never shared with pool children (NullPool: no idle sockets)
        self.engine = create_engine(DatabaseSettings().url, poolclass=pool.NullPool)
        client = redis.Redis.from_url(
            self.env.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5
        )
        self.heartbeat = Heartbeat(client, self.env.heartbeat_interval_s, self._payload)
        self.heartbeat.start()
        log.info("uploader.health_started", port=self.server.port, remote=self.slug)

    def _payload(self) -> dict[str, Any]:
        assert self.slug is not None and self.heartbeat is not None and self.engine is not None
        meta: dict[str, Any] = {
            "current_remote_slug": self.slug,
            "health_port": self.env.health_port,
            **worker_counters.read(self.heartbeat.client, self.slug),
        }
        try:
            from sqlalchemy.orm import Session

            with Session(self.engine) as s:
                s.execute(text("SELECT 1"))
                state = remote_state.get_state(s, self.slug)
                meta["pending_count"] = work_poller.count_pending(s, self.slug)
            meta["remote_state"] = state.state
            meta["unavailable_since"] = (
                state.since.isoformat() if state.state != "ok" and state.since else None
            )
            self.monitor.update_status("database", True, "connected", required=False)
            self.monitor.update_status(
                "remote",
                state.state == "ok",
                {"state": state.state, "since": meta["unavailable_since"], "detail": state.detail},
                required=False,
            )
        except Exception as exc:  # report, never crash: the database may come back
            meta["pending_count"] = None
            self.monitor.update_status(
                "database", False, f"unavailable: {type(exc).__name__}", required=False
            )
        return build_payload(SERVICE, self.env.effective_instance_id, self.monitor.snapshot(), meta)

    def stop(self, parent: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.server is not None:
            self.server.stop()
        if self.engine is not None:
            self.engine.dispose()


_monitor: HealthMonitor | None = None


def _on_ready(sender: Any = None, **_: Any) -> None:
    if _monitor is not None:
        _monitor.remove("init")
        _monitor.update_status("worker", True, "consuming")
    log.info("uploader.worker_ready", pid=os.getpid())


def _freeze_before_fork(**_: Any) -> None:
    """Move every object alive now (the imported modules) out of the garbage collector's reach
    before the pool forks: the child's collections then no longer write to those pages, which
    stay shared with the parent instead of being copied (measured with bench/memory.py)."""
    import gc

    gc.collect()
    gc.freeze()


def _on_child_init(**_: Any) -> None:
    """A fresh pool child: never reuse the parent's database sockets or runtime."""
    from tasks.runtime import reset_runtime

    dispose_engine()
    reset_runtime()


def _on_child_shutdown(**_: Any) -> None:
    from tasks import runtime

    rt = runtime._runtime
    if rt is not None:
        rt.stats.emit_final_summary()
        rt.close()


def install(app: Celery) -> None:
    app.steps["worker"].add(UploaderHealthStep)
    worker_init.connect(_freeze_before_fork, weak=False)
    worker_ready.connect(_on_ready, weak=False)
    worker_process_init.connect(_on_child_init, weak=False)
    worker_process_shutdown.connect(_on_child_shutdown, weak=False)
