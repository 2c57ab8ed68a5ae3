"""What "pending" means (docs/design/0004-pending-cursor.md), and the only code that knows it.

A pair (recording, remote) is pending when the recording is not ``local_deleted``, the remote
has no success row in ``uploads`` for it at the remote's current destination
(``uploader.remotes.destination``; a remote pointed elsewhere starts its walk again), it holds no
live lease and it is not parked.
``recordings.uploaded`` is never consulted: that is the Janitor's signal, judged against the
required set, not against the remote asked about. Whether the remote is *running* is the
caller's question (``uploader.completion.active``); the dispatcher asks only for running remotes.

Pending pairs are found two ways, so no query ever has to step over the millions of pairs that
are done (the seed's anti-join does, docs/pending.md):

- **new work**: recordings never handed to this remote. ``remote_cursor.last_recording_id`` is
  a per-remote watermark: every recording with ``id <= cursor`` has been handed out at least
  once (it has a success row, a ``pair_state`` row, or is ``local_deleted``). New work is a
  bounded walk forward by id from :data:`LOOKBACK_IDS` behind the cursor; whoever walks may
  move the cursor over the rows whose fate the walk found decided.
- **retry work**: ``pair_state`` rows of this remote with no live lease that are not parked,
  or whose park window has passed.

The dispatcher claims pairs through ``uploader.ledger.leases``, which takes its candidates from
:func:`select_candidates` and reports back through :func:`advance_cursor`. The statements, and
why each is written the way it is, are in ``uploader.ledger.pending_sql``.
"""

from __future__ import annotations

import time as _time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from uploader.ledger import pending_sql as sql
from uploader.remotes.destination import current_one as current_destination

log = structlog.get_logger(__name__)

#: Ids re-checked behind the cursor on every walk. Ids are taken when an insert starts but
#: become visible when it commits, so a row can appear *behind* a cursor that already moved
#: past its id. Recordings are inserted by one Indexer, one short transaction at a time; at
#: 20 sensors x one segment per 10 s (2 rows/s) 200 ids are 100 s of inserts. Each id costs
#: two index probes (about 1 ms per walk in all); :func:`rewind_cursor` covers anything later.
LOOKBACK_IDS = 200

#: Live recordings one walk examines at most. Past the cursor everything is normally new
#: work, so a walk stops after ``batch_size`` rows; the bound matters only where rows past
#: the cursor are already done (a cursor rewound by hand), and keeps that case at a few ms.
SCAN_ROWS = 10_000

#: ``count_pending`` counts exactly this many live recordings past the cursor, then
#: extrapolates: two index probes per row, about 2 ms at a million recordings, cheap enough
#: for a heartbeat every 10 s.
COUNT_EXACT_CAP = 500

#: ``count_pending`` counts at most this many retry pairs exactly.
COUNT_RETRY_CAP = 100_000


class PendingUpload(BaseModel):
    """One pending pair's recording, as the pipeline needs it (the seed's model)."""

    model_config = ConfigDict(frozen=True)

    recording_id: int
    file_raw: str
    sensor_id: str
    time: datetime


class Source(StrEnum):
    new = "new"  # never handed to this remote: no pair_state row yet
    retry = "retry"  # has a pair_state row: released, expired, failed, or its park window passed


@dataclass(frozen=True)
class Candidate:
    """A pending pair found by one selection. Plain fields: a claim needs only the id and the
    time, so the validated :class:`PendingUpload` is built only for what a find returns."""

    recording_id: int
    time: datetime
    file_raw: str
    sensor_id: str
    source: Source
    #: the pair's park window has passed: it is tried once more (a retry only)
    park_expired: bool = False

    def to_pending(self) -> PendingUpload:
        return PendingUpload(
            recording_id=self.recording_id,
            file_raw=self.file_raw,
            sensor_id=self.sensor_id,
            time=self.time,
        )


@dataclass(frozen=True)
class CandidateBatch:
    """What one selection found; ``uploader.ledger.leases`` turns ``chosen`` into leases.

    When ``cursor_locked``, this transaction holds the remote's cursor row: new work is walked
    by one claimer at a time. Retry rows are not locked here; the claim locks the ones it
    chose when it leases them.
    """

    remote_slug: str
    n: int
    chosen: tuple[Candidate, ...]  # at most n, oldest first
    stale: tuple[int, ...]  # retry rows whose pair is done or local_deleted: drop them
    cursor: int
    destination: str | None  # the remote's current destination (None: the remote is gone)
    cursor_locked: bool  # this transaction holds (or just created) the cursor row
    cursor_exists: bool  # the remote has a cursor row (a reader may then move it)
    walked: tuple[int, ...]  # new-work ids the walk returned, ascending
    scan_end: int | None  # last id the walk examined, when it returned fewer than n


# -- public API ---------------------------------------------------------------------------


def find_pending_uploads(
    session: Session, remote_slug: str, batch_size: int
) -> list[PendingUpload]:
    """Up to ``batch_size`` pending pairs of this remote, oldest first (by ``time``, then id).

    Reads only; it takes no lease (``uploader.ledger.leases.claim`` does). It may move the remote's
    cursor over rows the walk found decided, without waiting for a lock. "Oldest" is the order
    of ``recordings.id`` within the walk, i.e. insertion order, which for a live station is
    the order of ``time``; each batch is then sorted by ``time``. Fewer than ``batch_size``
    rows means nothing more is pending, except while a walk crosses more than
    :data:`SCAN_ROWS` rows that are already done (a rewound cursor): then call again.
    """
    if batch_size < 1:
        return []
    batch = select_candidates(session, remote_slug, batch_size, lock=False)
    advance_cursor(session, batch, taken_new=())
    return [c.to_pending() for c in batch.chosen]


def count_pending(session: Session, remote_slug: str) -> int:
    """How many pairs of this remote are pending: cheap enough for every heartbeat.

    Retry pairs are counted exactly (up to :data:`COUNT_RETRY_CAP`). New work is counted
    exactly among the first :data:`COUNT_EXACT_CAP` live recordings past the cursor; beyond
    that, the window's share of pending rows is extrapolated over the ids up to
    ``max(recordings.id)``. Past the cursor nearly everything is new work, so for a backlog
    or a newly added remote this is exact up to the cap and then close; recordings deleted
    further on make it an over-estimate, rows committed late behind the cursor are not
    counted. A number for operators, never for decisions.
    """
    dest = current_destination(session, remote_slug)
    cursor, _, _ = _open_cursor(session, remote_slug, dest, lock=False)
    pending, scanned, first_id, last_id = session.execute(
        sql.COUNT_WINDOW,
        {"slug": remote_slug, "dest": dest, "lo": cursor, "cap": COUNT_EXACT_CAP},
    ).one()
    new = int(pending)
    if scanned >= COUNT_EXACT_CAP:
        max_id = int(session.execute(sql.MAX_ID).scalar_one())
        new += extrapolate(int(pending), first_id=first_id, last_id=last_id, max_id=max_id)
    retry = int(
        session.execute(sql.COUNT_RETRY, {"slug": remote_slug, "cap": COUNT_RETRY_CAP}).scalar_one()
    )
    return new + retry


def rewind_cursor(session: Session, remote_slug: str, by_ids: int) -> int:
    """Move the remote's cursor back by ``by_ids`` (not below 0); returns the new value.

    Always safe: the walk filters what is done, so a rewind costs only the re-walk (about
    :data:`SCAN_ROWS` rows per call) and finds any recording that became visible later than
    :data:`LOOKBACK_IDS` allows for. Waits for a claim holding the cursor row.
    """
    value = session.execute(sql.CURSOR_REWIND, {"slug": remote_slug, "by": max(by_ids, 0)}).scalar()
    log.info("cursor.rewound", remote=remote_slug, by_ids=by_ids, last_recording_id=value)
    return int(value) if value is not None else 0


def select_candidates(session: Session, remote_slug: str, n: int, *, lock: bool) -> CandidateBatch:
    """Retry work and new work, merged, the ``n`` oldest chosen.

    ``lock=True`` (claiming): new work is walked only if this transaction gets the cursor row
    (``FOR UPDATE SKIP LOCKED``), so two concurrent claims never walk the same rows and never
    wait for each other; the one without the cursor takes retry work only, this once. Retry
    candidates are read without locks; ``uploader.ledger.leases`` locks (``SKIP LOCKED``) and leases
    only the ones chosen, re-checking that they are still free.
    """
    dest = current_destination(session, remote_slug)
    cursor, cursor_locked, cursor_exists = _open_cursor(session, remote_slug, dest, lock=lock)
    walk_new = cursor_locked or not lock
    walked: list[Candidate] = []
    scan_end: int | None = None
    if walk_new:
        walked, scan_end = _walk(session, remote_slug, dest, cursor, n)

    retries: list[Candidate] = []
    stale: list[int] = []
    for row in session.execute(sql.RETRY, {"slug": remote_slug, "dest": dest, "n": n}):
        if row.local_deleted or row.done:
            stale.append(row.recording_id)
            continue
        retries.append(_candidate(row, row.recording_id, Source.retry, row.park_expired))

    return CandidateBatch(
        remote_slug=remote_slug,
        n=n,
        chosen=tuple(oldest(retries + walked, n)),
        stale=tuple(stale),
        cursor=cursor,
        destination=dest,
        cursor_locked=cursor_locked,
        cursor_exists=cursor_exists,
        walked=tuple(c.recording_id for c in walked),
        scan_end=scan_end,
    )


def advance_cursor(session: Session, batch: CandidateBatch, taken_new: Collection[int]) -> int:
    """Move the remote's cursor over what ``batch``'s walk found decided; returns the cursor.

    ``taken_new``: the walked ids that now have a ``pair_state`` row (claimed). Safe for any
    caller at any time: the cursor only moves forward, and only over rows that are decided,
    which stay decided (success rows are never deleted, ``local_deleted`` is never unset, and
    ``leases.finish`` drops a ``pair_state`` row only once the pair is done).
    """
    if not batch.cursor_exists or (not batch.walked and batch.scan_end is None):
        return batch.cursor
    target = next_cursor(batch.cursor, batch.walked, taken_new, batch.scan_end, batch.n)
    if target <= batch.cursor:
        return batch.cursor
    params = {"slug": batch.remote_slug, "to": target, "dest": batch.destination}
    session.execute(
        sql.CURSOR_ADVANCE if batch.cursor_locked else sql.CURSOR_ADVANCE_NOWAIT, params
    )
    return target


# -- pure helpers (unit-tested) ------------------------------------------------------------


def next_cursor(
    cursor: int,
    walked: Sequence[int],
    taken: Collection[int],
    scan_end: int | None,
    n: int,
) -> int:
    """Where the cursor may go after a walk that returned ``walked`` (ascending).

    Every id the walk stepped over was decided; every id it returned is decided only if
    ``taken``. So the cursor may reach just below the first returned id not taken; if all were
    taken, the last returned id, or - when the walk ran out of rows before ``n`` - the last id
    it examined. Never backwards.
    """
    for rid in walked:
        if rid not in taken:
            return max(cursor, rid - 1)
    if len(walked) < n and scan_end is not None:
        return max(cursor, scan_end)
    return max(cursor, walked[-1]) if walked else cursor


def oldest(candidates: Sequence[Candidate], n: int) -> list[Candidate]:
    """The ``n`` oldest by ``(time, recording_id)``; duplicates (same recording) kept once."""
    seen: set[int] = set()
    out: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.time, c.recording_id)):
        if c.recording_id in seen:
            continue
        seen.add(c.recording_id)
        out.append(c)
        if len(out) == n:
            break
    return out


def extrapolate(pending_in_window: int, *, first_id: int, last_id: int, max_id: int) -> int:
    """Pending ids beyond the counted window ``[first_id, last_id]``, at the window's share."""
    span = last_id - first_id + 1
    if span <= 0 or max_id <= last_id:
        return 0
    return round((max_id - last_id) * pending_in_window / span)


# -- internals ----------------------------------------------------------------------------


def _candidate(row: Any, recording_id: int, source: Source, park_expired: bool) -> Candidate:
    return Candidate(recording_id, row.time, row.file_raw, row.sensor_id, source, park_expired)


def _walk(
    session: Session, remote_slug: str, dest: str | None, cursor: int, n: int
) -> tuple[list[Candidate], int | None]:
    lo = max(cursor - LOOKBACK_IDS, 0)
    params = {"slug": remote_slug, "dest": dest, "lo": lo, "scan": SCAN_ROWS, "n": n}
    found: list[Candidate] = []
    scan_end: int | None = None
    for row in session.execute(sql.WALK, params):
        if row.is_scan_end:
            scan_end = row.id
        else:
            found.append(_candidate(row, row.id, Source.new, False))
    found.sort(key=lambda c: c.recording_id)
    return found, scan_end


def _open_cursor(
    session: Session, remote_slug: str, dest: str | None, *, lock: bool
) -> tuple[int, bool, bool]:
    """(cursor, whether this transaction holds the cursor row, whether the row exists).

    Without ``lock`` the row is only read; a remote that has none yet, or whose cursor was
    walked for another destination, starts where :func:`_starting_point` says, and nothing
    is written. With ``lock`` a missing row is created (lazily: a remote added later needs no
    other set-up, and the FK cascade removes it with the remote), and a cursor walked for
    another destination starts again (the remote was pointed elsewhere: what was done there
    is not done here); a row another transaction holds is skipped.
    """
    if not lock:
        row = session.execute(sql.CURSOR_READ, {"slug": remote_slug}).first()
        if row is not None and row.destination in (None, dest):
            return int(row.last_recording_id), False, True
        return _starting_point(session, remote_slug, dest), False, row is not None
    row = session.execute(sql.CURSOR_LOCK, {"slug": remote_slug}).first()
    if row is not None:
        if row.destination in (None, dest):
            if row.destination is None:  # written before destinations were recorded
                session.execute(
                    sql.CURSOR_RETARGET,
                    {"slug": remote_slug, "start": row.last_recording_id, "dest": dest},
                )
            return int(row.last_recording_id), True, True
        start = _starting_point(session, remote_slug, dest)
        session.execute(sql.CURSOR_RETARGET, {"slug": remote_slug, "start": start, "dest": dest})
        log.warning(
            "cursor.destination_changed",
            remote=remote_slug,
            previous_last_recording_id=int(row.last_recording_id),
            last_recording_id=start,
        )
        return start, True, True
    if session.execute(sql.CURSOR_READ, {"slug": remote_slug}).first() is not None:
        return 0, False, True  # another claim is walking this remote right now
    start = _starting_point(session, remote_slug, dest)
    created = session.execute(
        sql.CURSOR_CREATE, {"slug": remote_slug, "start": start, "dest": dest}
    ).scalar()
    if created is None:
        return 0, False, False  # the remote is gone, or another claim created the row just now
    log.info("cursor.created", remote=remote_slug, last_recording_id=int(created))
    return int(created), True, True


def _starting_point(session: Session, remote_slug: str, dest: str | None) -> int:
    """Where a new cursor starts: 0, unless the database already holds success rows for this
    remote at this destination (a SEED-ERA database upgraded in place, or a remote pointed
    back to a place it used before). Then it starts just below the first recording that is
    not decided, found once with the seed's anti-join (about a second at a million
    recordings), instead of walking a million done rows a few thousand at a time."""
    params = {"slug": remote_slug, "dest": dest}
    if dest is None or not session.execute(sql.HAS_SUCCESS, params).scalar():
        return 0
    started = _time.perf_counter()
    first = session.execute(sql.FIRST_UNDECIDED, params).scalar()
    start = int(first) - 1 if first is not None else int(session.execute(sql.MAX_ID).scalar_one())
    log.info(
        "cursor.catch_up_computed",
        remote=remote_slug,
        start=start,
        duration_s=round(_time.perf_counter() - started, 3),
    )
    return start
