"""Podman containers over ``SILVASONIC_CONTAINER_SOCKET`` (podman-py), upstream's
``ContainerManager`` (docs/design/0012-upstream.md §3) restricted to uploader containers.

Only containers labelled ``io.silvasonic.owner=controller`` **and**
``io.silvasonic.service=uploader`` are ever listed, stopped or removed: the upstream Controller's
recorders and anything else on the socket are someone else's. A socket that does not answer
raises :class:`BackendUnavailable`, which the loop reports and retries; nothing here exits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import structlog
from podman import PodmanClient
from podman.errors import APIError, NotFound
from podman.errors import ImageNotFound as PodmanImageNotFound

from controller_ext.backend import (
    BackendUnavailable,
    InstanceNotOwned,
    ManagedInstance,
    RestartBackoff,
    SyncResult,
    sync_state,
)
from controller_ext.container_spec import (
    LABEL_OWNER,
    LABEL_SERVICE,
    OWNER,
    SERVICE,
    Tier2ServiceSpec,
    secret_owner,
)

log = structlog.get_logger("controller")

DEFAULT_SOCKET = "/var/run/container.sock"
# per HTTP request to the Podman service; a stop waits for the container's own stop timeout
REQUEST_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10.0


def _connection_lost(exc: APIError) -> bool:
    """podman-py raises APIError both for an answer (status code) and for no answer (none)."""
    return getattr(exc, "status_code", None) is None


def _epoch(value: Any) -> float | None:
    """Podman reports StartedAt as epoch seconds (list) or RFC 3339 (inspect)."""
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str) and value and not value.startswith("0001-"):
        text = value.replace("Z", "+00:00")
        if "." in text:  # Go prints nanoseconds; Python parses at most microseconds
            head, _, tail = text.partition(".")
            digits = "".join(ch for ch in tail if ch.isdigit())
            text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


def instance_from_attrs(attrs: dict[str, Any]) -> ManagedInstance:
    """A :class:`ManagedInstance` from a sparse list entry or a full inspect."""
    state = attrs.get("State")
    if isinstance(state, dict):  # inspect
        status = str(state.get("Status", "unknown"))
        started = _epoch(state.get("StartedAt"))
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        name = str(attrs.get("Name", ""))
    else:  # list
        status = str(state or "unknown")
        started = _epoch(attrs.get("StartedAt"))
        labels = attrs.get("Labels") or {}
        names = attrs.get("Names") or [""]
        name = str(names[0])
    return ManagedInstance(
        name=name.lstrip("/"),
        status=status,
        labels=dict(labels),
        started_at=started,
        id=str(attrs.get("Id", "")),
    )


def _is_ours(labels: dict[str, str] | Any) -> bool:
    return (
        isinstance(labels, dict)
        and labels.get(LABEL_OWNER) == OWNER
        and labels.get(LABEL_SERVICE) == SERVICE
    )


class ContainerManager:
    """Start, stop, remove and list uploader containers; reconcile them with
    :meth:`sync_state`. Synchronous: call from a thread when inside an event loop."""

    kind = "podman"

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        request_timeout_s: int = REQUEST_TIMEOUT_S,
        backoff: RestartBackoff | None = None,
    ) -> None:
        path = socket_path or os.environ.get("SILVASONIC_CONTAINER_SOCKET", DEFAULT_SOCKET)
        self.socket_path = path.removeprefix("unix://")
        self._timeout = request_timeout_s
        self._client: PodmanClient | None = None
        self.backoff = backoff or RestartBackoff()
        self.known_ids: set[str] = set()

    # -- connection -------------------------------------------------------------------------

    @property
    def client(self) -> PodmanClient:
        if self._client is None:
            self._client = PodmanClient(
                base_url=f"unix://{self.socket_path}", timeout=self._timeout
            )
        return self._client

    def ping(self) -> bool:
        """True when the Podman service answers."""
        try:
            return bool(self.client.ping())
        except (APIError, OSError):
            return False

    def image_exists(self, image: str) -> bool:
        try:
            return bool(self.client.images.exists(image))
        except (APIError, OSError):
            return False

    def network_exists(self, network: str) -> bool:
        try:
            return bool(self.client.networks.exists(network))
        except (APIError, OSError):
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"Podman at {self.socket_path} did not answer: {exc}")

    # -- single containers ------------------------------------------------------------------

    def _find(self, name: str) -> Any | None:
        """The container object called ``name``, or None. Raises InstanceNotOwned when it
        exists but is not an uploader container of ours."""
        try:
            container = self.client.containers.get(name)
        except NotFound:
            return None
        except APIError as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            if "no such container" in str(exc):  # removed between lookup and inspect
                return None
            raise
        if not _is_ours(container.labels):
            raise InstanceNotOwned(f"container {name!r} exists but is not an uploader of ours")
        return container

    def get(self, name: str) -> ManagedInstance | None:
        container = self._find(name)
        return None if container is None else instance_from_attrs(container.attrs)

    def start(self, spec: Tier2ServiceSpec) -> ManagedInstance | None:
        """Create and start the container for ``spec``; an existing running one whose hash
        matches is returned as is, any other one under that name is replaced.

        Returns None when Podman refuses (missing image, bad mount source …), logged as
        ``controller.container_start_failed`` with Podman's explanation.
        """
        if not _is_ours(spec.labels):
            raise InstanceNotOwned(f"spec {spec.name!r} lacks the uploader labels")
        existing = self._find(spec.name)
        if existing is not None:
            current = instance_from_attrs(existing.attrs)
            if current.is_running and current.config_hash == spec.config_hash:
                return current
            self.stop(spec.name, spec.stop_timeout_s)
            self.remove(spec.name)
        self._ensure_mount_dirs(spec)
        try:
            self._ensure_secrets(spec)
            container = self.client.containers.create(**spec.to_podman_kwargs())
        except PodmanImageNotFound:
            log.error(
                "controller.container_start_failed",
                name=spec.name,
                reason="image_not_found",
                image=spec.image,
                hint="build or load the image on this machine; the controller never pulls",
            )
            return None
        except APIError as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            log.error(
                "controller.container_start_failed",
                name=spec.name,
                reason="create_refused",
                detail=str(getattr(exc, "explanation", exc))[:300],
            )
            return None
        try:
            container.start()
            container.reload()
        except APIError as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            log.error(
                "controller.container_start_failed",
                name=spec.name,
                reason="start_refused",
                detail=str(getattr(exc, "explanation", exc))[:300],
            )
            self._force_remove(spec.name)
            return None
        return instance_from_attrs(container.attrs)

    def _ensure_secrets(self, spec: Tier2ServiceSpec) -> None:
        """Create the Podman secrets ``spec`` names (one per secret variable, named by a digest
        of its value) and remove this container's older ones. The values travel in the API
        request body only: never in an environment, an argument list or a log line."""
        wanted = {spec.secret_name(variable): variable for variable in spec.secrets}
        existing = {secret.name for secret in self.client.secrets.list()}
        for name, variable in wanted.items():
            if name not in existing:
                self.client.secrets.create(name, spec.secrets[variable].encode())
        self._remove_secrets(spec.name, keep=set(wanted), existing=existing)

    def _remove_secrets(
        self, container: str, *, keep: Iterable[str] = (), existing: set[str] | None = None
    ) -> None:
        """Remove the secrets of ``container`` except ``keep`` (a replaced value, or all of
        them once the container is gone)."""
        if existing is None:
            existing = {secret.name for secret in self.client.secrets.list()}
        for name in existing - set(keep):
            if name.startswith(f"{secret_owner(container)}."):
                try:
                    self.client.secrets.remove(name)
                except (NotFound, APIError) as exc:  # still in use by the old container
                    log.debug("controller.secret_kept", name=name, error=type(exc).__name__)

    def _ensure_mount_dirs(self, spec: Tier2ServiceSpec) -> None:
        """Create missing read-write mount folders the controller can see (a ``local``
        remote's folder); Podman refuses a bind mount whose source is missing. A folder it
        creates is given to the worker's uid:gid, which must write into it; an existing one
        is left as the operator made it (docs/controller.md §2)."""
        for mount in spec.mounts:
            if mount.read_only or not mount.controller_source:
                continue
            try:
                if not os.path.isdir(mount.controller_source):
                    os.makedirs(mount.controller_source, mode=0o750)
                    self._give_to_worker(spec, mount.controller_source)
            except OSError as exc:
                log.warning(
                    "controller.mount_dir_failed",
                    name=spec.name,
                    path=mount.controller_source,
                    error=type(exc).__name__,
                )

    @staticmethod
    def _give_to_worker(spec: Tier2ServiceSpec, path: str) -> None:
        uid, _, gid = (spec.user or "").partition(":")
        if not (uid.isdigit() and gid.isdigit()):
            return
        try:
            os.chown(path, int(uid), int(gid))
        except PermissionError:  # rootless: the worker's uid is not ours to give
            log.warning(
                "controller.mount_dir_not_given",
                name=spec.name,
                path=path,
                hint=f"make it writable by the worker's uid:gid {spec.user}",
            )

    def stop(self, name: str, timeout_s: float | None = None) -> None:
        """Stop ``name`` (SIGTERM, then SIGKILL after ``timeout_s``, by default the container's
        own stop timeout). A missing or stopped container is already stopped."""
        container = self._find(name)
        if container is None or container.status not in ("running", "paused", "restarting"):
            return
        if timeout_s is None:  # the container's own stop timeout, set from its spec
            configured = (container.attrs.get("Config") or {}).get("StopTimeout")
            timeout_s = float(configured) if configured else STOP_TIMEOUT_S
        try:
            container.stop(timeout=int(timeout_s), ignore=True)
        except (NotFound, ValueError):
            # ValueError: podman-py decodes the empty 304 body of "already stopped" as JSON
            return
        except APIError as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            # "container already stopped" and friends: the state we wanted
            log.debug("controller.stop_refused", name=name, detail=str(exc)[:200])

    def remove(self, name: str) -> None:
        """Remove ``name`` (forced), then its Podman secrets. Every way a worker goes — its
        remote no longer wanted, a stale heartbeat, a recreate — passes here (the sync rule and
        the heartbeat gate call ``stop`` and ``remove``), so no credential outlives its
        container in Podman's secret store."""
        self._remove_container(name)
        try:
            self._remove_secrets(name)
        except APIError as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            log.warning("controller.secrets_not_removed", name=name, error=type(exc).__name__)

    def _remove_container(self, name: str) -> None:
        """One retry after 2 s, as upstream, for Podman's "container is being stopped" races."""
        for attempt in (1, 2):
            container = self._find(name)
            if container is None:
                return
            try:
                container.remove(force=True)
                return
            except NotFound:
                return
            except APIError as exc:
                if _connection_lost(exc):
                    raise self._unavailable(exc) from None
                if attempt == 2:
                    raise
                time.sleep(2.0)

    def _force_remove(self, name: str) -> None:
        try:
            self.remove(name)
        except (APIError, InstanceNotOwned) as exc:
            log.warning("controller.remove_failed", name=name, error=type(exc).__name__)

    def stop_and_remove(self, name: str, timeout_s: float | None = None) -> None:
        self.stop(name, timeout_s)
        self.remove(name)

    def list_managed(self) -> list[ManagedInstance]:
        """Every uploader container of ours, running or not.

        Filtered by the owner label on the server and by the service label here (podman-py
        cannot send two label filters: it stringifies a list).
        """
        try:
            entries = self.client.containers.list(
                all=True, filters={"label": f"{LABEL_OWNER}={OWNER}"}
            )
        except APIError as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            raise BackendUnavailable(f"Podman refused to list containers: {exc}") from None
        except OSError as exc:
            raise self._unavailable(exc) from None
        instances = [instance_from_attrs(c.attrs) for c in entries]
        return [i for i in instances if _is_ours(dict(i.labels))]

    def sync_state(
        self, desired: Sequence[Tier2ServiceSpec], actual: Sequence[ManagedInstance]
    ) -> SyncResult:
        return sync_state(self, desired, actual, backoff=self.backoff, known_ids=self.known_ids)
