"""What a backend (Podman containers or local processes) looks like to the reconcile loop, and
the one reconcile rule both share: :func:`sync_state`.

The rule (upstream's ``ContainerManager.sync_state``, docs/design/0012-upstream.md §3): start what
is desired and missing; recreate what drifted from its spec (config hash) or stopped; remove what is
no longer desired; keep — adopt — what matches. Both backends call it, so a container and a process
behave the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from controller_ext.container_spec import (
    LABEL_CONFIG_HASH,
    LABEL_DEVICE_ID,
    LABEL_SERVICE,
    Tier2ServiceSpec,
)

log = structlog.get_logger("controller")

# States in which Podman itself is still acting on the container: leave it alone this cycle.
TRANSITIONAL_STATES = frozenset({"restarting", "stopping", "removing"})
# Restart back-off for instances that keep stopping: 2 s, 4 s, … up to 5 min, so a worker that
# crashes at start-up (a bad schema, a broken image) is not restarted every reconcile cycle.
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
# An instance that stayed up this long is healthy again: its back-off is forgotten.
BACKOFF_RESET_AFTER_S = 60.0


class BackendUnavailable(Exception):
    """The backend cannot be reached (Podman socket silent); retried next cycle."""


class InstanceNotOwned(Exception):
    """A container with our name exists but is not ours (labels differ): never touched."""


@dataclass(frozen=True)
class ManagedInstance:
    """One container or process as a backend sees it now."""

    name: str
    status: str  # "running", "exited", "created", "restarting", …
    labels: Mapping[str, str]
    started_at: float | None = None  # epoch seconds of the current run
    id: str = ""

    @property
    def is_running(self) -> bool:
        return self.status == "running"

    @property
    def config_hash(self) -> str | None:
        return self.labels.get(LABEL_CONFIG_HASH)

    @property
    def device_id(self) -> str | None:
        return self.labels.get(LABEL_DEVICE_ID)

    @property
    def service(self) -> str | None:
        return self.labels.get(LABEL_SERVICE)


@dataclass
class SyncResult:
    """What one :func:`sync_state` call did, by instance name."""

    started: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[ManagedInstance] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.started or self.recreated or self.removed)


class Backend(Protocol):
    """Podman (:class:`controller_ext.container_manager.ContainerManager`) or local processes
    (:class:`controller_ext.process_backend.ProcessBackend`)."""

    kind: str

    def start(self, spec: Tier2ServiceSpec) -> ManagedInstance | None: ...

    def stop(self, name: str, timeout_s: float | None = None) -> None: ...

    def remove(self, name: str) -> None: ...

    def list_managed(self) -> list[ManagedInstance]: ...

    def sync_state(
        self, desired: Sequence[Tier2ServiceSpec], actual: Sequence[ManagedInstance]
    ) -> SyncResult: ...


class RestartBackoff:
    """Per-name exponential back-off for restarts of instances that stopped or failed to start."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}

    def ready(self, name: str, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) >= self._not_before.get(name, 0.0)

    def record(self, name: str, now: float | None = None) -> float:
        """Count one restart; returns the delay before the next one is allowed."""
        n = self._failures.get(name, 0) + 1
        self._failures[name] = n
        delay = min(self.base_s * 2.0 ** (n - 1), self.max_s)
        self._not_before[name] = (now if now is not None else time.monotonic()) + delay
        return delay

    def reset(self, name: str) -> None:
        self._failures.pop(name, None)
        self._not_before.pop(name, None)


def _stop_and_remove(backend: Backend, instance: ManagedInstance, timeout_s: float | None) -> None:
    backend.stop(instance.name, timeout_s)
    backend.remove(instance.name)


def sync_state(
    backend: Backend,
    desired: Sequence[Tier2ServiceSpec],
    actual: Sequence[ManagedInstance],
    *,
    backoff: RestartBackoff,
    known_ids: set[str],
    now: float | None = None,
) -> SyncResult:
    """Make ``actual`` match ``desired`` through ``backend``.

    ``known_ids`` holds the ids of instances this backend object has started or already seen:
    an unknown instance that matches its spec is *adopted* (logged once), e.g. after a
    controller restart. A failure on one instance is logged and the others proceed;
    :class:`BackendUnavailable` aborts the call (the cycle is retried).
    """
    wall = now if now is not None else time.time()
    result = SyncResult()
    by_name = {a.name: a for a in actual}
    wanted = {s.name for s in desired}

    for spec in desired:
        current = by_name.get(spec.name)
        try:
            if current is None:
                if not backoff.ready(spec.name):
                    result.deferred.append(spec.name)
                    continue
                started = backend.start(spec)
                if started is None:
                    backoff.record(spec.name)
                    result.failed.append(spec.name)
                    continue
                known_ids.add(started.id)
                result.started.append(spec.name)
                log.info(
                    "controller.container_started",
                    name=spec.name,
                    backend=backend.kind,
                    config_hash=spec.config_hash,
                )
                continue
            if current.status in TRANSITIONAL_STATES:
                result.deferred.append(spec.name)
                continue
            drifted = current.config_hash != spec.config_hash
            if not drifted and current.is_running:
                if current.id not in known_ids:
                    known_ids.add(current.id)
                    result.adopted.append(spec.name)
                    log.info("controller.container_adopted", name=spec.name, backend=backend.kind)
                else:
                    result.kept.append(spec.name)
                if current.started_at is not None and wall - current.started_at > (
                    BACKOFF_RESET_AFTER_S
                ):
                    backoff.reset(spec.name)
                continue
            reason = "config_drift" if drifted else f"not_running:{current.status}"
            if not drifted and not backoff.ready(spec.name):
                result.deferred.append(spec.name)
                continue
            _stop_and_remove(backend, current, spec.stop_timeout_s)
            started = backend.start(spec)
            if not drifted or started is None:
                backoff.record(spec.name)
            if started is None:
                result.failed.append(spec.name)
                continue
            known_ids.add(started.id)
            result.recreated.append(spec.name)
            log.info(
                "controller.container_recreated",
                name=spec.name,
                backend=backend.kind,
                reason=reason,
                old_hash=current.config_hash,
                new_hash=spec.config_hash,
            )
        except BackendUnavailable:
            raise
        except Exception as exc:  # one instance's trouble must not stop the others
            backoff.record(spec.name)
            result.failed.append(spec.name)
            log.error(
                "controller.container_action_failed",
                name=spec.name,
                backend=backend.kind,
                error=type(exc).__name__,
                detail=str(exc)[:300],
            )

    for instance in actual:
        if instance.name in wanted:
            continue
        try:
            _stop_and_remove(backend, instance, None)
        except BackendUnavailable:
            raise
        except Exception as exc:
            result.failed.append(instance.name)
            log.error(
                "controller.container_action_failed",
                name=instance.name,
                backend=backend.kind,
                error=type(exc).__name__,
                detail=str(exc)[:300],
            )
            continue
        backoff.reset(instance.name)
        known_ids.discard(instance.id)
        result.removed.append(instance)
        log.info(
            "controller.container_stopped",
            name=instance.name,
            backend=backend.kind,
            reason="not_desired",
        )
    return result
