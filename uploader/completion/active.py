"""Which remotes count: the one definition of the *required* and the *running* remotes
(docs/design/0002-required-remotes.md). The dispatcher, the completion rule, the controller's
evaluator and ``status`` all call :func:`active_remotes`.

- required: ``is_active = true``, ordered ``created_at ASC, slug ASC``, cut to
  ``system.max_uploaders``. Completion is judged against exactly these, whatever
  ``uploader.enabled`` says; a misconfigured remote stays required (nothing is flagged that
  it lacks).
- running: the required remotes minus the misconfigured ones; none at all while
  ``uploader.enabled = false`` (the global pause).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from uploader.db.models import RemoteStatus, StorageRemote
from uploader.errors import RemoteConfigInvalid
from uploader.remotes.config import config_fingerprint, validate_remote_config
from uploader.remotes.destination import destination_of
from uploader.settings import StationSettings, load_station_settings


class SkipReason(StrEnum):
    misconfigured = "misconfigured"  # config invalid, or a worker found it unusable
    over_cap = "over_max_uploaders"  # beyond system.max_uploaders: not required either
    paused = "paused"  # uploader.enabled = false: required, not running


@dataclass(frozen=True)
class RemoteRef:
    """What callers need of a remote without holding an ORM object across sessions."""

    slug: str
    type: str
    name: str
    target_path: str | None


@dataclass(frozen=True)
class Skipped:
    slug: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True)
class ActiveRemotes:
    required: tuple[RemoteRef, ...]
    running: tuple[RemoteRef, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    #: running only for the probe pair its breaker let go: still marked misconfigured
    probing: tuple[str, ...] = field(default=())

    @property
    def required_slugs(self) -> tuple[str, ...]:
        return tuple(r.slug for r in self.required)

    @property
    def running_slugs(self) -> tuple[str, ...]:
        return tuple(r.slug for r in self.running)


def misconfiguration(session: Session, remote: StorageRemote) -> str | None:
    """Why this remote cannot run, or None. Static validation first, then a worker's mark
    (which holds only while the config is the one it was set under, and lets the remote run
    for one probe pair once its breaker says so)."""
    try:
        validate_remote_config(remote.slug, remote.type, remote.config or {})
    except RemoteConfigInvalid as exc:
        return exc.reason
    status = _holding_mark(session, remote)
    if status is not None and not _probe_due(session, status):
        return status.detail or "marked misconfigured by its worker"
    return None


def _holding_mark(session: Session, remote: StorageRemote) -> RemoteStatus | None:
    """The worker's misconfigured mark, while the config is the one it was set under."""
    status = session.get(RemoteStatus, remote.slug)
    if status is None or status.state != "misconfigured":
        return None
    current = config_fingerprint(remote.type, remote.config or {}, remote.target_path)
    return status if status.config_fingerprint in (None, current) else None


def _probe_due(session: Session, status: RemoteStatus) -> bool:
    """The breaker lets a misconfigured remote run for one probe pair once ``probe_at`` has
    passed (``uploader.remotes.state``): a fix on the server's side then heals by itself."""
    if status.probe_at is None:  # marked by hand: it waits for a config change or a probe
        return False
    return bool(session.execute(select(func.now() >= status.probe_at)).scalar())


def active_remotes(session: Session, settings: StationSettings | None = None) -> ActiveRemotes:
    """Compute required, running and skipped remotes from one consistent read."""
    settings = settings or load_station_settings(session)
    rows = session.scalars(_in_required_order(select(StorageRemote))).all()
    cap = settings.system.max_uploaders
    required_rows, over = rows[:cap], rows[cap:]
    skipped = [Skipped(r.slug, SkipReason.over_cap, f"system.max_uploaders is {cap}") for r in over]
    required: list[RemoteRef] = []
    running: list[RemoteRef] = []
    probing: list[str] = []
    for row in required_rows:
        ref = RemoteRef(row.slug, row.type, row.name, row.target_path)
        required.append(ref)
        problem = misconfiguration(session, row)
        if problem is not None:
            skipped.append(Skipped(row.slug, SkipReason.misconfigured, problem))
        elif not settings.uploader.enabled:
            skipped.append(Skipped(row.slug, SkipReason.paused, "uploader.enabled is false"))
        else:
            running.append(ref)
            if _holding_mark(session, row) is not None:
                probing.append(row.slug)
    return ActiveRemotes(tuple(required), tuple(running), tuple(skipped), tuple(probing))


def required_slugs(session: Session, settings: StationSettings | None = None) -> tuple[str, ...]:
    """Only the required remotes' slugs, in one statement: the completion rule runs at every
    audit and needs neither the remotes' configurations nor their states."""
    settings = settings or load_station_settings(session)
    cap = settings.system.max_uploaders
    if cap <= 0:
        return ()
    query = _in_required_order(select(StorageRemote.slug)).limit(cap)
    return tuple(session.scalars(query).all())


def required_destinations(
    session: Session, settings: StationSettings | None = None
) -> tuple[tuple[str, str], ...]:
    """The required remotes with their current destinations (``uploader.remotes.destination``), in
    one statement: the completion rule counts only successes at these."""
    settings = settings or load_station_settings(session)
    cap = settings.system.max_uploaders
    if cap <= 0:
        return ()
    columns = select(
        StorageRemote.slug, StorageRemote.type, StorageRemote.config, StorageRemote.target_path
    )
    rows = session.execute(_in_required_order(columns).limit(cap)).all()
    return tuple(
        (row.slug, destination_of(row.type, row.config or {}, row.target_path)) for row in rows
    )


def _in_required_order(query: Select[Any]) -> Select[Any]:
    """The active remotes, oldest first: the order the ``max_uploaders`` cut is made in."""
    return query.where(StorageRemote.is_active.is_(True)).order_by(
        StorageRemote.created_at.asc().nulls_last(), StorageRemote.slug.asc()
    )
