"""What ``silvasonic-uploader status`` reports, read from one snapshot: per remote its state,
pending work, parked pairs and recent throughput; the recordings on disk that are complete
(the Janitor may delete them) or not; and the oldest incomplete recording with the remotes it
waits for - what holds the Janitor back.

Every number comes from a bounded query, so ``status`` stays cheap on a station with a million
recordings: pending counts from ``work_poller.count_pending`` (the heartbeat's own count),
parked pairs from ``pair_state``'s partial indexes, recording counts from the partial indexes on
the recordings still on disk, and throughput from the newest :data:`AUDIT_WINDOW_ROWS` rows of
``uploads`` (by primary key), never from a scan of the audit per remote. Read-only: nothing
here writes (the cursor is read, not moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader.completion.active import ActiveRemotes, SkipReason, active_remotes
from uploader.errors import SettingsInvalid
from uploader.ledger import leases, work_poller
from uploader.pipeline.schedule import is_within_window
from uploader.remotes import retarget
from uploader.remotes import state as remote_state
from uploader.remotes.destination import current_one as current_destination
from uploader.settings import (
    StationSettings,
    SystemSettings,
    UploaderSettings,
    load_station_settings,
)

#: Newest ``uploads`` rows read for "last success" and "uploads in the last hour": one walk of
#: the primary key backwards, for every remote at once. 50,000 attempts cover an hour at
#: 14 attempts/s; a station with 20 sensors and 3 remotes makes 6/s in steady state (one 10 s
#: segment per sensor), so only a backlog draining fast is cut short - then the hour's counts
#: are lower bounds (:attr:`AuditWindow.covers_hour` is False). About 30 ms (an index scan of
#: the primary key backwards) on the 2-core bench machine; a remote whose last success is older
#: than the window shows none "since" the window's start.
AUDIT_WINDOW_ROWS = 50_000
RATE_WINDOW_S = 3600


class RemoteHealth(StrEnum):
    ok = "ok"  # running, no known problem
    unavailable = "unavailable"  # connection-level failures: retried, one probe pair at a time
    misconfigured = "misconfigured"  # an operator must fix its config (or the key)
    paused = "paused"  # uploader.enabled = false: required, but nothing runs
    over_cap = "over_cap"  # active, but beyond system.max_uploaders: neither required nor run


class PairHold(StrEnum):
    """Why one pair of the oldest incomplete recording is not done yet."""

    pending = "pending"  # never tried, or released: the dispatcher takes it when its turn comes
    in_flight = "in_flight"  # leased: a worker holds it now
    failed = "failed"  # failed before (file-level), waiting for another try
    parked = "parked"  # failed max_file_attempts times: waits for its window or `parked retry`


@dataclass(frozen=True)
class RemoteProgress:
    slug: str
    name: str
    type: str
    required: bool  # completion waits for it
    running: bool  # the controller runs a worker for it
    state: RemoteHealth
    detail: str | None  # why (redacted; never a secret)
    unavailable_since: datetime | None
    pending: int  # work_poller.count_pending (exact up to a cap, then extrapolated)
    oldest_pending_at: datetime | None  # recordings.time of its oldest pending pair
    in_flight: int  # live leases
    parked: int  # parked pairs (including those whose window passed)
    last_success_at: datetime | None  # None: none within the audit window
    uploads_last_hour: int
    failures_last_hour: int
    #: flagged recordings whose audio is deleted and that this remote holds only at an earlier
    #: destination (pointed elsewhere; ``uploader.remotes.retarget``): how many, the first ids
    only_at_earlier_destination: int = 0
    only_at_earlier_destination_ids: tuple[int, ...] = ()
    #: a remote that is not ok: when the breaker lets the next probe pair go (None: at once)
    next_probe_at: datetime | None = None


@dataclass(frozen=True)
class AuditWindow:
    """The newest ``uploads`` rows read for throughput."""

    rows: int  # rows read (< AUDIT_WINDOW_ROWS: the whole audit)
    since: datetime | None  # attempt_at of the oldest row read
    covers_hour: bool  # the hour's counts are exact (else lower bounds)
    whole_audit: bool  # every row was read: "no last success" means never


@dataclass(frozen=True)
class WaitingFor:
    remote: str
    state: RemoteHealth
    hold: PairHold
    file_failures: int
    parked_until: datetime | None
    last_error: str | None  # stored redacted


@dataclass(frozen=True)
class OldestIncomplete:
    recording_id: int
    time: datetime
    file_raw: str
    waiting_for: tuple[WaitingFor, ...]


@dataclass(frozen=True)
class RecordingCounts:
    """Recordings still on disk (``local_deleted = false``); rows of deleted audio are history."""

    on_disk: int
    complete: int  # uploaded: the Janitor may delete them (``audit_logger.list_deletable``)
    incomplete: int  # not yet on every required remote: the Janitor must keep them

    @property
    def deletable(self) -> int:
        return self.complete


@dataclass(frozen=True)
class StationStatus:
    now: datetime
    settings: StationSettings
    window_open: bool
    janitor_gate: bool  # an active remote exists: the Janitor deletes only uploaded recordings
    required: tuple[str, ...]
    remotes: tuple[RemoteProgress, ...]
    recordings: RecordingCounts
    oldest_incomplete: OldestIncomplete | None
    audit: AuditWindow
    #: the station settings could not be read (an invalid ``system_config`` field): the
    #: dispatcher sends nothing until it is fixed; ``settings`` are then the defaults
    settings_error: str | None = None


_NOW = text("SELECT now()")
_GATE = text("SELECT EXISTS (SELECT 1 FROM storage_remotes WHERE is_active)")
_NAMES = text("SELECT slug, type, name FROM storage_remotes WHERE is_active")
# both counts from the partial indexes on what is still on disk: ix_recordings_live_id (the
# Janitor keeps that bounded by the disk) and ix_recordings_upload_pending (the backlog)
_COUNTS = text(
    """
    SELECT (SELECT count(*) FROM recordings WHERE NOT local_deleted),
           (SELECT count(*) FROM recordings WHERE NOT uploaded AND NOT local_deleted)
    """
)
_OLDEST_INCOMPLETE = text(
    """
    SELECT id, time, file_raw FROM recordings
    WHERE NOT uploaded AND NOT local_deleted
    ORDER BY time, id
    LIMIT 1
    """
)
_PAIR = text(
    """
    SELECT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = :rid
                   AND u.remote_slug = :slug AND u.success
                   AND u.destination = :dest) AS done,
           p.lease_until > now() AS leased, p.file_failures, p.parked_until, p.last_error
    FROM (SELECT 1) AS one
    LEFT JOIN pair_state p ON p.recording_id = :rid AND p.remote_slug = :slug
    """
)
_PARKED = text(
    "SELECT count(*) FROM pair_state WHERE remote_slug = :slug AND parked_until IS NOT NULL"
)
# GROUPING SETS: one row per remote, plus the () row describing the window itself
_AUDIT = text(
    """
    WITH recent AS (
        SELECT remote_slug, success, attempt_at FROM uploads ORDER BY id DESC LIMIT :rows
    )
    SELECT remote_slug, GROUPING(remote_slug) = 1 AS total, count(*) AS n,
           min(attempt_at) AS since,
           max(attempt_at) FILTER (WHERE success) AS last_success,
           count(*) FILTER (WHERE success AND attempt_at > now() - make_interval(secs => :rate_s))
               AS ok_hour,
           count(*) FILTER (WHERE NOT success
                            AND attempt_at > now() - make_interval(secs => :rate_s)) AS failed_hour,
           coalesce(bool_or(attempt_at <= now() - make_interval(secs => :rate_s)), false)
               AS reaches_back_an_hour
    FROM recent
    GROUP BY GROUPING SETS ((remote_slug), ())
    """
)


def station_status(session: Session, *, audit_rows: int = AUDIT_WINDOW_ROWS) -> StationStatus:
    """Read everything ``status`` shows. Call it in a read-only transaction (one snapshot:
    REPEATABLE READ makes the numbers agree with each other)."""
    now: datetime = session.execute(_NOW).scalar_one()
    settings_error: str | None = None
    try:
        settings = load_station_settings(session)
    except SettingsInvalid as exc:
        settings_error = str(exc)
        settings = StationSettings(uploader=UploaderSettings(), system=SystemSettings())
    active = active_remotes(session, settings)
    up = settings.uploader
    window_open = is_within_window(up.schedule_start_hour, up.schedule_end_hour, now)
    audit, per_remote = _audit_window(session, audit_rows)
    names = {row.slug: (row.type, row.name) for row in session.execute(_NAMES)}
    remotes = tuple(
        _progress(session, slug, names.get(slug, ("?", slug)), active, per_remote)
        for slug in _listed_slugs(active)
    )
    on_disk, incomplete = session.execute(_COUNTS).one()
    return StationStatus(
        now=now,
        settings=settings,
        window_open=window_open,
        janitor_gate=bool(session.execute(_GATE).scalar_one()),
        required=active.required_slugs,
        remotes=remotes,
        recordings=RecordingCounts(int(on_disk), int(on_disk) - int(incomplete), int(incomplete)),
        oldest_incomplete=_oldest_incomplete(session, {r.slug: r for r in remotes}),
        audit=audit,
        settings_error=settings_error,
    )


def remote_health(active: ActiveRemotes, slug: str, marked: remote_state.State) -> RemoteHealth:
    """One word for a remote: the strongest news first (over the cap, then what needs an
    operator, then the global pause, then what its worker found)."""
    reasons = {s.reason for s in active.skipped if s.slug == slug}
    if SkipReason.over_cap in reasons:
        return RemoteHealth.over_cap
    if SkipReason.misconfigured in reasons or slug in active.probing:
        return RemoteHealth.misconfigured  # (the latter: its probe pair is due or under way)
    if SkipReason.paused in reasons:
        return RemoteHealth.paused
    if marked is remote_state.State.unavailable:
        return RemoteHealth.unavailable
    return RemoteHealth.ok


def _listed_slugs(active: ActiveRemotes) -> list[str]:
    """The required remotes in their order, then those skipped for being over the cap."""
    slugs = list(active.required_slugs)
    slugs += [s.slug for s in active.skipped if s.slug not in slugs]
    return slugs


def _progress(
    session: Session,
    slug: str,
    type_and_name: tuple[str, str],
    active: ActiveRemotes,
    per_remote: dict[str, tuple[datetime | None, int, int]],
) -> RemoteProgress:
    marked = remote_state.get_state(session, slug)
    state = remote_health(active, slug, marked.state)
    detail = next((s.detail for s in active.skipped if s.slug == slug), None)
    if detail is None and marked.state is not remote_state.State.ok:
        detail = marked.detail
    oldest = work_poller.select_candidates(session, slug, 1, lock=False).chosen
    last_success, ok_hour, failed_hour = per_remote.get(slug, (None, 0, 0))
    dest = current_destination(session, slug)
    stranded, stranded_ids = retarget.stranded(session, slug, dest) if dest else (0, ())
    return RemoteProgress(
        slug=slug,
        type=type_and_name[0],
        name=type_and_name[1],
        required=slug in active.required_slugs,
        running=slug in active.running_slugs,
        state=state,
        detail=detail or None,
        unavailable_since=(
            marked.since if marked.state is remote_state.State.unavailable else None
        ),
        pending=work_poller.count_pending(session, slug),
        oldest_pending_at=oldest[0].time if oldest else None,
        in_flight=leases.count_leases(session, slug),
        parked=int(session.execute(_PARKED, {"slug": slug}).scalar_one()),
        last_success_at=last_success,
        uploads_last_hour=ok_hour,
        failures_last_hour=failed_hour,
        only_at_earlier_destination=stranded,
        only_at_earlier_destination_ids=stranded_ids,
        next_probe_at=marked.probe_at if marked.state is not remote_state.State.ok else None,
    )


def _audit_window(
    session: Session, rows: int
) -> tuple[AuditWindow, dict[str, tuple[datetime | None, int, int]]]:
    per_remote: dict[str, tuple[datetime | None, int, int]] = {}
    window = AuditWindow(rows=0, since=None, covers_hour=True, whole_audit=True)
    params = {"rows": rows, "rate_s": RATE_WINDOW_S}
    for row in session.execute(_AUDIT, params):
        if row.total:
            whole = int(row.n) < rows
            covers_hour = whole or bool(row.reaches_back_an_hour)
            window = AuditWindow(int(row.n), row.since, covers_hour, whole)
        else:
            per_remote[row.remote_slug] = (row.last_success, int(row.ok_hour), int(row.failed_hour))
    return window, per_remote


def _oldest_incomplete(
    session: Session, remotes: dict[str, RemoteProgress]
) -> OldestIncomplete | None:
    row = session.execute(_OLDEST_INCOMPLETE).first()
    if row is None:
        return None
    waiting: list[WaitingFor] = []
    for slug, remote in remotes.items():
        if not remote.required:
            continue
        dest = current_destination(session, slug)
        pair = session.execute(_PAIR, {"rid": row.id, "slug": slug, "dest": dest}).one()
        if pair.done:
            continue
        waiting.append(
            WaitingFor(
                remote=slug,
                state=remote.state,
                hold=_hold(pair.leased, pair.file_failures, pair.parked_until),
                file_failures=int(pair.file_failures or 0),
                parked_until=pair.parked_until,
                last_error=pair.last_error,
            )
        )
    return OldestIncomplete(row.id, row.time, row.file_raw, tuple(waiting))


def _hold(leased: bool | None, failures: int | None, parked_until: datetime | None) -> PairHold:
    if parked_until is not None:
        return PairHold.parked
    if leased:
        return PairHold.in_flight
    if failures:
        return PairHold.failed
    return PairHold.pending


def settings_summary(settings: StationSettings) -> dict[str, object]:
    """The settings ``status`` repeats, as plain values."""
    up = settings.uploader
    return {
        "enabled": up.enabled,
        "bandwidth_limit": up.bandwidth_limit,
        "schedule_start_hour": up.schedule_start_hour,
        "schedule_end_hour": up.schedule_end_hour,
        "batch_size": up.batch_size,
        "max_file_attempts": up.max_file_attempts,
        "park_window_hours": up.park_window_hours,
        "max_uploaders": settings.system.max_uploaders,
    }
