"""The reconcile loop: evaluate desired specs, list what runs, evict workers whose heartbeat
failed after their grace period, sync, and purge the queue of a remote retired for good.

Every ``interval_s`` and at once on a nudge. Nothing in a cycle can end the loop: a database
or Podman that does not answer is logged (on change, then once a minute) and tried again next
cycle, and the instances of an evaluator that failed are left exactly as they are.
Containers are left running when the loop ends (ADR-0013: data capture beats clean shutdown);
the next controller adopts them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from sqlalchemy.orm import Session

from controller_ext.backend import Backend, BackendUnavailable, ManagedInstance, SyncResult
from controller_ext.container_spec import SERVICE, Tier2ServiceSpec
from controller_ext.evaluator import Evaluator, evaluate_all
from controller_ext.heartbeat_gate import (
    DEFAULT_GRACE_S,
    DEFAULT_STALE_AFTER_S,
    heartbeat_problem,
)
from controller_ext.queues import purge_queue_keys

log = structlog.get_logger("controller")

DEFAULT_INTERVAL_S = 5.0
# how often an ongoing outage (Podman, database, Redis) is repeated in the log
OUTAGE_REPEAT_S = 60.0
# Two-phase logging (ADR-0030b): every event for the first 5 minutes, then summaries
STARTUP_PHASE_S = 300.0
SUMMARY_INTERVAL_S = 300.0

SessionFactory = Callable[[], AbstractContextManager[Session]]


@dataclass
class CycleReport:
    """What one cycle did (returned by :meth:`ReconciliationLoop.run_once`, for tests)."""

    ok: bool = False
    error: str | None = None
    failed_services: frozenset[str] = frozenset()
    sync: SyncResult | None = None
    evicted: dict[str, str] = field(default_factory=dict)
    purged: list[str] = field(default_factory=list)


class _Outage:
    """Logs a failing dependency when it starts failing, once a minute while it fails, and
    when it recovers — never once per cycle."""

    def __init__(self, failed_event: str, recovered_event: str) -> None:
        self.failed_event, self.recovered_event = failed_event, recovered_event
        self.since: float | None = None
        self._last_log = 0.0

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self._last_log = now, now
            log.error(self.failed_event, error=type(error).__name__, detail=str(error)[:300])
        elif now - self._last_log >= OUTAGE_REPEAT_S:
            self._last_log = now
            log.error(
                self.failed_event,
                error=type(error).__name__,
                detail=str(error)[:300],
                failing_for_s=round(now - self.since),
            )

    def ok(self) -> None:
        if self.since is not None:
            log.info(self.recovered_event, failed_for_s=round(time.monotonic() - self.since))
            self.since = None


class ReconciliationLoop:
    """Upstream's ``ReconciliationLoop`` for uploader workers (docs/design/0012-upstream.md §3),
    plus a start-up grace period in the heartbeat gate and the queue purge."""

    def __init__(
        self,
        backend: Backend,
        evaluators: Sequence[Evaluator],
        session_factory: SessionFactory,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        redis_client: redis.Redis[Any] | None = None,
        grace_period_s: float = DEFAULT_GRACE_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self.backend = backend
        self.evaluators = list(evaluators)
        self._session_factory = session_factory
        self.interval_s = interval_s
        self._redis = redis_client
        self.grace_period_s = grace_period_s
        self.stale_after_s = stale_after_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first_seen: dict[str, float] = {}
        self._backend_outage = _Outage(
            "controller.backend_unavailable", "controller.backend_recovered"
        )
        self._eval_outage = _Outage("controller.reconcile_failed", "controller.reconcile_recovered")
        self._evaluator_outages: dict[str, _Outage] = {}
        self._redis_outage = _Outage("controller.redis_unavailable", "controller.redis_recovered")
        self._started = time.monotonic()
        self._last_summary = self._started
        self._startup_logged = False
        self.stats = {"cycles": 0, "errors": 0, "started": 0, "recreated": 0, "removed": 0,
                      "evicted": 0, "adopted": 0, "nudges": 0}  # fmt: skip

    # -- control ----------------------------------------------------------------------------

    def trigger(self) -> None:
        """Run a cycle now (the nudge)."""
        self.stats["nudges"] += 1
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Cycle until :meth:`stop`; leaves every worker running."""
        log.info(
            "controller.started",
            backend=self.backend.kind,
            interval_s=self.interval_s,
            grace_period_s=self.grace_period_s,
        )
        while not self._stop.is_set():
            self.run_once()
            self._summarise()
            self._wake.wait(self.interval_s)
            self._wake.clear()
        log.info("controller.final_summary", uptime_s=self._uptime(), **self.stats)

    # -- one cycle --------------------------------------------------------------------------

    def run_once(self) -> CycleReport:
        report = CycleReport()
        self.stats["cycles"] += 1
        try:
            with self._session_factory() as session:
                evaluation = evaluate_all(
                    self.evaluators, session, on_failure=self._evaluator_failed
                )
        except Exception as exc:  # the session itself could not be opened or closed
            self._eval_outage.failed(exc)
            return self._failed(report, exc)
        self._eval_outage.ok()
        for service, outage in self._evaluator_outages.items():
            if service not in evaluation.failed_services:
                outage.ok()
        report.failed_services = evaluation.failed_services
        try:
            actual = self.backend.list_managed()
            self._backend_outage.ok()
            # an evaluator that failed has not said it wants nothing: keep its instances
            in_scope = [a for a in actual if a.service not in evaluation.failed_services]
            report.evicted = self._heartbeat_gate(in_scope, evaluation.specs)
            in_scope = [a for a in in_scope if a.name not in report.evicted]
            report.sync = self.backend.sync_state(evaluation.specs, in_scope)
        except BackendUnavailable as exc:
            self._backend_outage.failed(exc)
            return self._failed(report, exc)
        except Exception as exc:
            self._eval_outage.failed(exc)
            return self._failed(report, exc)
        report.purged = self._purge_retired(report.sync.removed)
        report.ok = True
        self._count(report)
        return report

    def _evaluator_failed(self, service: str, exc: Exception) -> None:
        outage = self._evaluator_outages.get(service)
        if outage is None:
            outage = self._evaluator_outages[service] = _Outage(
                "controller.evaluator_failed", "controller.evaluator_recovered"
            )
        outage.failed(exc)

    def _failed(self, report: CycleReport, exc: BaseException) -> CycleReport:
        self.stats["errors"] += 1
        report.error = f"{type(exc).__name__}: {exc}"[:300]
        return report

    def _count(self, report: CycleReport) -> None:
        assert report.sync is not None
        sync = report.sync
        self.stats["started"] += len(sync.started)
        self.stats["recreated"] += len(sync.recreated)
        self.stats["removed"] += len(sync.removed)
        self.stats["adopted"] += len(sync.adopted)
        self.stats["evicted"] += len(report.evicted)
        if sync.changed or report.evicted:
            log.info(
                "controller.reconcile_completed",
                started=sync.started,
                recreated=sync.recreated,
                removed=[i.name for i in sync.removed],
                evicted=sorted(report.evicted),
                purged=report.purged,
            )

    def _heartbeat_gate(
        self, actual: Sequence[ManagedInstance], desired: Sequence[Tier2ServiceSpec]
    ) -> dict[str, str]:
        """Stop and remove running, up-to-date workers whose heartbeat failed after their
        grace period; ``sync_state`` then starts them afresh. Skipped while Redis is down."""
        if self._redis is None:
            return {}
        hashes = {s.name: s.config_hash for s in desired}
        now_wall, now_mono = time.time(), time.monotonic()
        evicted: dict[str, str] = {}
        seen = set()
        for instance in actual:
            seen.add(instance.name)
            first = self._first_seen.setdefault(instance.name, now_mono)
            if (
                not instance.is_running
                or instance.device_id is None
                or hashes.get(instance.name) != instance.config_hash
            ):
                continue
            age = (
                now_wall - instance.started_at
                if instance.started_at is not None
                else now_mono - first
            )
            if age < self.grace_period_s:
                continue
            try:
                problem = heartbeat_problem(
                    self._redis, instance.device_id, stale_after_s=self.stale_after_s, now=now_wall
                )
            except redis.RedisError as exc:
                self._redis_outage.failed(exc)
                return evicted
            self._redis_outage.ok()
            if problem is None:
                continue
            log.warning(
                f"controller.{problem.value}",
                name=instance.name,
                remote=instance.device_id,
                running_for_s=round(age),
            )
            self.backend.stop(instance.name, None)
            self.backend.remove(instance.name)
            self._first_seen.pop(instance.name, None)
            evicted[instance.name] = problem.value
            log.info("controller.container_stopped", name=instance.name, reason=problem.value)
        for name in set(self._first_seen) - seen:
            del self._first_seen[name]
        return evicted

    def _required_slugs(self) -> frozenset[str] | None:
        for evaluator in self.evaluators:
            if getattr(evaluator, "service", None) == SERVICE:
                required = getattr(evaluator, "required_slugs", None)
                return required if isinstance(required, frozenset) else None
        return None

    def _purge_retired(self, removed: Sequence[ManagedInstance]) -> list[str]:
        """Purge the queue of each removed worker whose remote is no longer required."""
        if self._redis is None or not removed:
            return []
        required = self._required_slugs()
        if required is None:
            return []
        purged = []
        for instance in removed:
            slug = instance.device_id
            if instance.service != SERVICE or slug is None or slug in required:
                continue
            try:
                count = purge_queue_keys(self._redis, slug)
            except redis.RedisError as exc:
                self._redis_outage.failed(exc)
                continue
            purged.append(slug)
            log.info("controller.queue_purged", remote=slug, keys=count)
        return purged

    # -- two-phase logging ------------------------------------------------------------------

    def _uptime(self) -> int:
        return round(time.monotonic() - self._started)

    def _summarise(self) -> None:
        now = time.monotonic()
        if not self._startup_logged and now - self._started >= STARTUP_PHASE_S:
            self._startup_logged = True
            log.info("controller.startup_phase_complete", uptime_s=self._uptime(), **self.stats)
            self._last_summary = now
        elif self._startup_logged and now - self._last_summary >= SUMMARY_INTERVAL_S:
            self._last_summary = now
            log.info(
                "controller.summary",
                uptime_s=self._uptime(),
                interval_s=SUMMARY_INTERVAL_S,
                **self.stats,
            )
