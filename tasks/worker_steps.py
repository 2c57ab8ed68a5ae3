"""Worker life cycle: the health server and heartbeat (a bootstep in the worker's main
process, which stays responsive while the pool child runs a task), the consumer watch, per-child
set-up after fork, and the final summary at shutdown.

Only a worker started for a remote (``SILVASONIC_STORAGE_REMOTE_SLUG`` set, by
``silvasonic-uploader worker``) serves ``/healthy`` and publishes a heartbeat. Every worker —
the dispatcher's control worker too — watches its own broker consumer
(``uploader/ops/consumer_watch.py``): a remote's worker reports a stuck consumer as ``/healthy``
503 (the Controller recreates it), the control worker ends itself so its supervisor restarts it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import redis
import structlog
from celery import Celery, bootsteps
from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from sqlalchemy import Engine, create_engine, pool, text

from uploader.db.session import dispose_engine
from uploader.ledger import work_poller
from uploader.ops import worker_counters
from uploader.ops.consumer_watch import ConsumerVerdict, ConsumerWatch
from uploader.ops.health import Component, HealthMonitor, HealthServer
from uploader.ops.heartbeat import Heartbeat, build_payload
from uploader.ops.logs import configure_logging_if_unset, set_library_level
from uploader.remotes import state as remote_state
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
        self.server = HealthServer(self.monitor, self.env.health_port, str(self.env.health_host))
        self.server.start()
        # the parent's own engine, never shared with pool children (NullPool: no idle sockets)
        self.engine = create_engine(DatabaseSettings().url, poolclass=pool.NullPool)
        client = redis.Redis.from_url(
            self.env.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5
        )
        if _watch_armed:
            self.monitor.register_check("consumer", _consumer_component)
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

# -- the consumer watch ----------------------------------------------------------------------

_watch: ConsumerWatch | None = None
# True once the consumer step is part of this worker (prefork/event-loop pools only): without
# it nothing feeds the watch, and its verdict would be a false alarm
_watch_armed = False


def consumer_watch() -> ConsumerWatch:
    """This process's watch (one consumer per worker process)."""
    global _watch
    if _watch is None:
        _watch = ConsumerWatch(UploaderServiceSettings().consumer_stall_s)
    return _watch


def _tick_interval_s(watch: ConsumerWatch) -> float:
    # several ticks and probes per stall window, never busier than once a second
    return max(1.0, min(5.0, watch.stall_after_s / 4))


def _consumer_component() -> Component:
    verdict = consumer_watch().verdict()
    return Component(verdict.healthy, {"state": verdict.state, **verdict.details})


class ConsumerWatchStep(bootsteps.StartStopStep):
    """In the consumer's blueprint, after ``Tasks``: started on every (re)connection once the
    consumer consumes, stopped whenever the connection is lost. Its timer runs on the event
    loop itself, so its ticks stop exactly when the loop stops turning."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.watch = consumer_watch()
        self._entry: Any = None

    def include_if(self, parent: Any) -> bool:
        # only an event loop (prefork) can be watched this way; solo/threads have none
        return getattr(parent, "hub", None) is not None

    def create(self, parent: Any) -> None:
        # called only when included: from now on the watch is fed, so its verdict counts
        global _watch_armed
        _watch_armed = True

    def start(self, parent: Any) -> None:
        self._cancel(parent)
        self._entry = parent.hub.call_repeatedly(
            _tick_interval_s(self.watch), self.watch.loop_alive
        )
        self.watch.consuming()
        log.info("consumer.consuming", pid=os.getpid())

    def stop(self, parent: Any) -> None:
        self._cancel(parent)
        self.watch.lost("consumer stopped (connection lost or shutting down)")

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)

    def _cancel(self, parent: Any) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            parent.hub.timer.cancel(entry)  # cancelling twice (Celery may have) is harmless


class ConsumerWatchdogStep(bootsteps.StartStopStep):
    """A thread in the worker's main process that PINGs Redis (so a Redis outage is told apart
    from a stuck consumer), logs the watch's verdict when it changes, and — in the control
    worker (``SILVASONIC_EXIT_ON_CONSUMER_STALL``) — ends the process when it is stuck."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.env = UploaderServiceSettings()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis[Any] | None = None
        self._last_state: str | None = None

    def start(self, parent: Any) -> None:
        if not _watch_armed:
            return
        self._client = redis.Redis.from_url(
            self.env.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5
        )
        self._thread = threading.Thread(target=self._run, name="consumer-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        watch = consumer_watch()
        interval = _tick_interval_s(watch)
        while not self._stop.wait(interval):
            try:
                self.check_once(watch)
            except Exception as exc:  # the watchdog must never take the worker down by mistake
                log.warning("consumer.watchdog_failed", error=type(exc).__name__)

    def check_once(self, watch: ConsumerWatch) -> ConsumerVerdict:
        assert self._client is not None
        try:
            watch.broker_reachable(bool(self._client.ping()))
        except redis.RedisError:
            watch.broker_reachable(False)
        verdict = watch.verdict()
        if verdict.state != self._last_state:
            self._report(verdict)
            self._last_state = verdict.state
        if not verdict.healthy and self.env.exit_on_consumer_stall:
            log.error("consumer.stalled_exit", state=verdict.state, pid=os.getpid())
            sys.stdout.flush()
            _end_this_worker()
        return verdict

    def _report(self, verdict: ConsumerVerdict) -> None:
        if not verdict.healthy:
            log.error("consumer.stalled", state=verdict.state, **verdict.details)
        elif self._last_state in ("event_loop_stalled", "not_reconnected"):
            log.warning("consumer.recovered", state=verdict.state)

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.close()


def _end_this_worker() -> None:
    """SIGKILL, because the main thread is the stuck one and a graceful stop runs there. A
    worker started by a supervisor leads its own process group: the group kill takes its pool
    child along (a message it held is redelivered; every step is idempotent)."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _on_ready(sender: Any = None, **_: Any) -> None:
    if _monitor is not None:
        _monitor.remove("init")
        _monitor.update_status("worker", True, "consuming")
    log.info("uploader.worker_ready", pid=os.getpid())


def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery's ``setup_logging`` signal, in a worker or beat process: with a receiver, Celery
    installs none of its own handlers (plain text, one line per task). ``celery -A tasks
    worker|beat`` started by the dispatcher's supervisor has not configured logging yet (it
    would log structlog's console defaults even where JSON is asked for); every process then
    takes Celery's ``--loglevel`` for the library records."""
    configure_logging_if_unset(SERVICE)
    set_library_level(loglevel or "WARNING")


def _configure_logging_early(**_: Any) -> None:
    """``celeryd_init``, before the worker checks its privileges: the SecurityWarning it gives
    as root (as in the container) is then a log line like the others, not a raw screenful."""
    configure_logging_if_unset(SERVICE)


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
    app.steps["worker"].add(ConsumerWatchdogStep)
    app.steps["consumer"].add(ConsumerWatchStep)
    celeryd_init.connect(_configure_logging_early, weak=False)
    setup_logging.connect(_setup_logging, weak=False)
    worker_init.connect(_freeze_before_fork, weak=False)
    worker_ready.connect(_on_ready, weak=False)
    worker_process_init.connect(_on_child_init, weak=False)
    worker_process_shutdown.connect(_on_child_shutdown, weak=False)
