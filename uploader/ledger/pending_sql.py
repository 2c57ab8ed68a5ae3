"""The SQL behind ``uploader.ledger.work_poller``: the per-remote walk over new work, the retry
picks from ``pair_state``, the cursor, and the heartbeat count (docs/pending.md).

Hand-written because these are the hot statements of the dispatcher and every heartbeat, and
each one is written to get a particular plan at a million recordings; the comments say which
and why, and ``bench/poller.py`` prints the plans. Only ``work_poller`` uses this module.
"""

from __future__ import annotations

from sqlalchemy import text

# The probes are LATERAL subqueries with LIMIT 1 on purpose: written as NOT EXISTS, the planner
# (which sees that almost every recording has a success row for the remote) turns them into a
# hash anti-join over all of the remote's success rows - 128 ms at 100,000 recordings instead
# of 50 index probes. A LATERAL reference forces one probe per walked row, in id order, so the
# LIMIT stops the walk as soon as the batch is full. The slug is an InitPlan parameter, not a
# literal, so no probe is planned from one remote's statistics: a remote added since the last
# ANALYZE looks empty, and would be probed through ix_uploads_remote_slug (all of its rows per
# probe) instead of the (recording_id, remote_slug) indexes.
SLUG = "(SELECT CAST(:slug AS text))"
# the remote's current destination (uploader.remotes.destination), computed by the caller: only a
# success row there makes a pair done
DEST = "(SELECT CAST(:dest AS text))"
PROBES = f"""
    LEFT JOIN LATERAL (
        SELECT 1 AS hit FROM pair_state p
        WHERE p.recording_id = {{rid}} AND p.remote_slug = {SLUG} LIMIT 1) AS ps ON true
    LEFT JOIN LATERAL (
        SELECT 1 AS hit FROM uploads u
        WHERE u.recording_id = {{rid}} AND u.remote_slug = {SLUG} AND u.success
          AND u.destination = {DEST} LIMIT 1
    ) AS up ON true
"""
LIVE_FROM = """
    SELECT r.id, r.time, r.file_raw, r.sensor_id
    FROM recordings r
    WHERE r.id > :lo AND NOT r.local_deleted
    ORDER BY r.id
    LIMIT {limit}
"""

# One round trip: the batch of new work, plus - only when the walk returned fewer than n rows,
# i.e. it ran out of rows to examine - one extra row carrying the last id it examined, from
# the same snapshot (the cursor may move up to it: everything there was decided).
WALK = text(
    f"""
    WITH found AS (
        SELECT s.id, s.time, s.file_raw, s.sensor_id
        FROM ({LIVE_FROM.format(limit=":scan")}) AS s
        {PROBES.format(rid="s.id")}
        WHERE ps.hit IS NULL AND up.hit IS NULL
        ORDER BY s.id
        LIMIT :n
    )
    SELECT id, time, file_raw, sensor_id, false AS is_scan_end FROM found
    UNION ALL
    SELECT (SELECT max(e.id) FROM ({LIVE_FROM.format(limit=":scan")}) AS e),
           NULL::timestamptz, NULL::text, NULL::text, true
    WHERE (SELECT count(*) FROM found) < :n
    """
)

RETRY_COLUMNS = """
    SELECT p.recording_id, r.time, r.file_raw, r.sensor_id, r.local_deleted,
           up.hit IS NOT NULL AS done
    FROM pair_state p
    JOIN recordings r ON r.id = p.recording_id
    LEFT JOIN LATERAL (
        SELECT 1 AS hit FROM uploads u
        WHERE u.recording_id = p.recording_id AND u.remote_slug = p.remote_slug AND u.success
          AND u.destination = :dest
        LIMIT 1) AS up ON true
"""
# Retry work in one round trip, from two partial indexes:
# - ready: ix_pair_state_ready (remote_slug, recording_id) WHERE parked_until IS NULL, in
#   recording order; the only rows it steps over are this remote's live leases (a few batches).
#   Written "remote_slug BETWEEN :slug AND :slug ... ORDER BY remote_slug, recording_id" on
#   purpose: with "= :slug" the planner takes the order as just recording_id, which the
#   primary key (recording_id, remote_slug) also gives, and at 1M recordings with a bloated
#   pair_state it walked the whole primary key filtering by remote (every other remote's
#   pairs stepped over). A range keeps remote_slug in the order, which only this index has;
# - due: ix_pair_state_parked (remote_slug, parked_until) WHERE parked_until IS NOT NULL, the
#   parked pairs whose window has passed, earliest first; the parked ones are never stepped over.
# Nothing is locked here: the claim locks (SKIP LOCKED) and leases only the rows it chose, in
# the statement that writes the leases, so unchosen candidates cost no lock.
RETRY = text(
    f"""
    WITH ready AS (
        {RETRY_COLUMNS}
        WHERE p.remote_slug BETWEEN :slug AND :slug AND p.parked_until IS NULL
          AND (p.lease_until IS NULL OR p.lease_until <= now())
        ORDER BY p.remote_slug, p.recording_id
        LIMIT :n
    ), due AS (
        {RETRY_COLUMNS}
        WHERE p.remote_slug = :slug AND p.parked_until IS NOT NULL AND p.parked_until <= now()
          AND (p.lease_until IS NULL OR p.lease_until <= now())
        ORDER BY p.parked_until, p.recording_id
        LIMIT :n
    )
    SELECT *, false AS park_expired FROM ready
    UNION ALL
    SELECT *, true AS park_expired FROM due
    """
)

CURSOR_READ = text(
    "SELECT last_recording_id, destination FROM remote_cursor WHERE remote_slug = :slug"
)
CURSOR_LOCK = text(
    "SELECT last_recording_id, destination FROM remote_cursor WHERE remote_slug = :slug "
    "FOR UPDATE SKIP LOCKED"
)
CURSOR_CREATE = text(
    """
    INSERT INTO remote_cursor (remote_slug, last_recording_id, destination)
    SELECT :slug, :start, :dest WHERE EXISTS (SELECT 1 FROM storage_remotes WHERE slug = :slug)
    ON CONFLICT (remote_slug) DO NOTHING
    RETURNING last_recording_id
    """
)
# the remote was pointed elsewhere: the walk starts again for the new destination
CURSOR_RETARGET = text(
    "UPDATE remote_cursor SET last_recording_id = :start, destination = :dest, "
    "retargeted_at = CASE WHEN destination IS NULL THEN retargeted_at ELSE now() END, "
    "updated_at = now() WHERE remote_slug = :slug"
)
# never moves a cursor that was walked for another destination
CURSOR_ADVANCE = text(
    "UPDATE remote_cursor SET last_recording_id = :to, updated_at = now() "
    "WHERE remote_slug = :slug AND last_recording_id < :to "
    "AND destination IS NOT DISTINCT FROM :dest"
)
CURSOR_REWIND = text(
    "UPDATE remote_cursor SET last_recording_id = greatest(last_recording_id - :by, 0),"
    " updated_at = now() WHERE remote_slug = :slug RETURNING last_recording_id"
)
# for readers that do not hold the cursor lock: move it only if nobody else holds it now
CURSOR_ADVANCE_NOWAIT = text(
    """
    UPDATE remote_cursor SET last_recording_id = :to, updated_at = now()
    WHERE remote_slug = :slug AND last_recording_id < :to
      AND destination IS NOT DISTINCT FROM :dest
      AND remote_slug IN (SELECT remote_slug FROM remote_cursor
                          WHERE remote_slug = :slug FOR UPDATE SKIP LOCKED)
    """
)

HAS_SUCCESS = text(
    "SELECT EXISTS (SELECT 1 FROM uploads "
    "WHERE remote_slug = :slug AND success AND destination = :dest)"
)
# the seed's anti-join, run once per remote when its cursor is created on a database that
# already holds success rows for it (a SEED-ERA upgrade): where does undecided work start?
FIRST_UNDECIDED = text(
    """
    SELECT r.id FROM recordings r
    WHERE NOT r.local_deleted
      AND NOT EXISTS (SELECT 1 FROM uploads u
                      WHERE u.recording_id = r.id AND u.remote_slug = :slug AND u.success
                        AND u.destination = :dest)
      AND NOT EXISTS (SELECT 1 FROM pair_state p
                      WHERE p.recording_id = r.id AND p.remote_slug = :slug)
    ORDER BY r.id
    LIMIT 1
    """
)
MAX_ID = text("SELECT coalesce(max(id), 0) FROM recordings")

COUNT_WINDOW = text(
    f"""
    SELECT count(*) FILTER (WHERE ps.hit IS NULL AND up.hit IS NULL), count(*),
           min(w.id), max(w.id)
    FROM ({LIVE_FROM.format(limit=":cap")}) AS w
    {PROBES.format(rid="w.id")}
    """
)
COUNT_RETRY = text(
    """
    SELECT count(*) FROM (
        SELECT 1 FROM pair_state p
        WHERE p.remote_slug = :slug
          AND (p.lease_until IS NULL OR p.lease_until <= now())
          AND (p.parked_until IS NULL OR p.parked_until <= now())
        LIMIT :cap
    ) AS s
    """
)
