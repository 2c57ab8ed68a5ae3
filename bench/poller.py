"""Pending-pairs query and dispatch cycle at a million recordings x 3 remotes
(docs/design/0009-targets.md).

    uv run python bench/poller.py --rows 1000000 [--json out.json] [--database-url URL]
                                  [--keep | --reuse NAME]

Builds its own database (``--database-url`` is an admin URL; default
``SILVASONIC_TEST_DATABASE_URL`` or ``postgresql://postgres@127.0.0.1:5432/postgres``), runs our
migrations, loads the station with ``generate_series`` and measures, per remote shape:

- ``backlog``: has every recording up to 99 % of the ids; the newest 1 % never went (it was
  offline), so they lie past its cursor;
- ``added``: a remote added today to a station with a million recordings: no rows at all, no
  cursor yet (created by the first claim);
- ``scattered``: has everything except a random 1 % of the recordings still on disk, which
  failed once (pair_state rows, retry work); a tenth of those are parked, a few are parked with
  their window passed.

The oldest 30 % of the recordings are ``local_deleted`` (the Janitor freed the disk after the
two older remotes had them), which is what a station that has run for a while looks like.

Printed per shape: median and p90 client wall time of ``find_pending_uploads(batch 50)``, of
one ``claim(50)`` (rolled back, so each run sees the same state), of ``count_pending``, and
the seed's anti-join for comparison; then one dispatch cycle (settings, active remotes, and
for each remote: state, live leases, claim of 50; committed, the state restored between runs);
then EXPLAIN (ANALYZE, BUFFERS) of the main statements. Numbers, not pass/fail; targets:
pending query <= 10 ms, dispatch cycle <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from uploader.completion import audit_logger
from uploader.completion.active import active_remotes
from uploader.db import schema
from uploader.ledger import leases, pending_sql, work_poller
from uploader.remotes import state as remote_state
from uploader.remotes.destination import destination_of
from uploader.settings import load_station_settings, normalise_database_url

SHAPES = ("backlog", "added", "scattered")
BATCH = 50
# the statements find_pending_uploads runs for a remote that has its cursor: their server-side
# planning + execution time is reported next to the wall time
FIND_STATEMENTS = ("cursor", "walk (new work)", "retry work (ready + park due)")
EXPLAIN_RUNS = 11
SENSORS = 20
DELETED_SHARE = 0.30
BACKLOG_SHARE = 0.01
FAILED_PERCENT = 1  # of the recordings still on disk, for "scattered"

# the seed's query (docs/pending.md §2): the design this replaces
SEED_ANTI_JOIN = text(
    """
    SELECT r.id, r.time, r.file_raw FROM recordings r
    WHERE NOT r.local_deleted
      AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = r.id
                      AND u.remote_slug = :slug AND u.success)
    ORDER BY r.time LIMIT 50
    """
)


#: the destination of the bench's remotes (local, no target path: uploader.remotes.destination)
_LOCAL_ROOT = destination_of("local", {}, None)


def main() -> int:
    args = _parse()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    admin = normalise_database_url(args.database_url)
    name = args.reuse or f"sv_bench_poller_{uuid.uuid4().hex[:8]}"
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    keep = args.keep or bool(args.reuse)
    try:
        if not args.reuse:
            _create_database(admin, name)
            schema.upgrade(url)
        engine = create_engine(url, pool_size=2)
        try:
            load_s = 0.0 if args.reuse else _load(engine, args.rows)
            print(f"loaded {args.rows:,} recordings and uploads in {load_s:.1f} s", flush=True)
            load_before = os.getloadavg()[0]
            report = _measure(engine, args.runs)
            # the machine is shared: wall times move with its load, server-side times less so
            report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            report["rows"] = args.rows
            report["load_s"] = round(load_s, 1)
        finally:
            engine.dispose()
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            _drop_database(admin, name)
    _print(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "SILVASONIC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument("--keep", action="store_true", help="do not drop the database afterwards")
    p.add_argument(
        "--reuse", metavar="NAME", help="measure a database kept by an earlier --keep run"
    )
    return p.parse_args()


# -- the station --------------------------------------------------------------------------


def _load(engine: Engine, n: int) -> float:
    started = time.perf_counter()
    deleted = int(n * DELETED_SHARE)
    backlog_from = int(n * (1 - BACKLOG_SHARE))
    # a deterministic random 1 % of the recordings still on disk failed on "scattered"
    failed = f"(g > {deleted} AND abs(hashint4(g)) % 100 < {FAILED_PERCENT})"
    statements = [
        "SET synchronous_commit = off",
        "SET maintenance_work_mem = '256MB'",
        f"""INSERT INTO devices (name, serial_number, model, config)
            SELECT 'mic-' || s, 'SER-' || s, 'bench', '{{}}'
            FROM generate_series(1, {SENSORS}) s""",
        """INSERT INTO storage_remotes (slug, type, name, config, created_at) VALUES
            ('backlog', 'local', 'Backlog', '{}', now() - interval '300 days'),
            ('scattered', 'local', 'Scattered', '{}', now() - interval '200 days'),
            ('added', 'local', 'Added', '{}', now())""",
        # one 10 s segment per sensor every 10 s, ids in time order as the Indexer writes them
        f"""INSERT INTO recordings (id, time, sensor_id, file_raw, duration, sample_rate,
                                    filesize_raw, uploaded, uploaded_at, local_deleted, upload_info)
            SELECT g, timestamptz '2025-01-01' + (g / {SENSORS}) * interval '10 seconds',
                   'mic-' || (g % {SENSORS} + 1),
                   'mic-' || (g % {SENSORS} + 1) || '/data/raw/seg_' || g || '.wav',
                   10, 48000, 960044,
                   g <= {backlog_from} AND NOT {failed},
                   CASE WHEN g <= {backlog_from} AND NOT {failed}
                        THEN timestamptz '2025-01-01' + (g / {SENSORS}) * interval '10 seconds'
                             + interval '1 hour' END,
                   g <= {deleted}, '{{}}'
            FROM generate_series(1, {n}) g""",
        "SELECT setval(pg_get_serial_sequence('recordings', 'id'), "
        "(SELECT max(id) FROM recordings))",
        f"""INSERT INTO uploads (recording_id, remote_slug, attempt_at, filename, size, success,
                                 destination)
            SELECT g, 'backlog', now(), 'seg_' || g || '.flac', 500000, true, '{_LOCAL_ROOT}'
            FROM generate_series(1, {backlog_from}) g""",
        f"""INSERT INTO uploads (recording_id, remote_slug, attempt_at, filename, size, success,
                                 error_message, error_kind, destination)
            SELECT g, 'scattered', now(), 'seg_' || g || '.flac', 500000, NOT {failed},
                   CASE WHEN {failed} THEN 'object rejected' END,
                   CASE WHEN {failed} THEN 'file' END,
                   CASE WHEN NOT {failed} THEN '{_LOCAL_ROOT}' END
            FROM generate_series(1, {n}) g""",
        # the failed pairs: retry work; 10 % parked, 1 % parked with the window passed
        f"""INSERT INTO pair_state (recording_id, remote_slug, file_failures, parked_until,
                                    last_error)
            SELECT g, 'scattered',
                   CASE WHEN g % 10 = 0 THEN 3 ELSE 1 END,
                   CASE WHEN g % 100 = 0 THEN now() - interval '1 hour'
                        WHEN g % 10 = 0 THEN now() + interval '1 day' END,
                   'object rejected'
            FROM generate_series(1, {n}) g WHERE {failed}""",
        f"""INSERT INTO remote_cursor (remote_slug, last_recording_id) VALUES
            ('backlog', {backlog_from}), ('scattered', {n})""",
    ]
    with engine.connect() as conn:
        for sql in statements:
            conn.execute(text(sql))
        conn.commit()
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - started


# -- measuring ----------------------------------------------------------------------------


def _once(factory: sessionmaker[Session], fn: Callable[[Session], Any]) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of ``fn`` in its own transaction, rolled back (every
    run sees the same state). The CPU part is the client's share: Python and SQLAlchemy."""
    with factory() as s:
        s.execute(text("SELECT 1"))  # connection checked out, transaction open
        t0, c0 = time.perf_counter(), time.process_time()
        fn(s)
        dt, dc = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        s.rollback()
    return dt, dc


def _timed(
    factory: sessionmaker[Session], fn: Callable[[Session], Any], runs: int
) -> dict[str, float]:
    """Median and p90 wall ms of ``fn`` over ``runs`` (after 3 warm-up runs)."""
    samples = [_once(factory, fn)[0] for _ in range(runs + 3)][3:]
    return _stats(samples)


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
    }


def _measure(engine: Engine, runs: int) -> dict[str, Any]:
    """Round-robin over shapes and operations, so the machine's noise hits all alike."""
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    found: dict[str, int] = {}
    claimed: dict[str, int] = {}
    counted: dict[str, int] = {}

    def find(slug: str) -> Callable[[Session], None]:
        def run(s: Session) -> None:
            found[slug] = len(work_poller.find_pending_uploads(s, slug, BATCH))

        return run

    def claim(slug: str) -> Callable[[Session], None]:
        def run(s: Session) -> None:
            claimed[slug] = len(leases.claim(s, slug, BATCH, lease_s=600))

        return run

    def count(slug: str) -> Callable[[Session], None]:
        def run(s: Session) -> None:
            counted[slug] = work_poller.count_pending(s, slug)

        return run

    ops = {"pending_query": find, "claim": claim, "count_pending": count}
    samples: dict[tuple[str, str], list[float]] = {(o, sl): [] for o in ops for sl in SHAPES}
    cpu: dict[tuple[str, str], list[float]] = {(o, sl): [] for o in ops for sl in SHAPES}
    for i in range(runs + 3):
        for slug in SHAPES:
            for op, make in ops.items():
                dt, dc = _once(factory, make(slug))
                if i >= 3:
                    samples[(op, slug)].append(dt)
                    cpu[(op, slug)].append(dc)
    per_shape: dict[str, Any] = {}
    for slug in SHAPES:
        shape: dict[str, Any] = {op: _stats(samples[(op, slug)]) for op in ops}
        for op in ops:
            shape[op]["client_cpu_ms"] = round(statistics.median(cpu[(op, slug)]), 3)
        shape["pending_found"] = found[slug]
        shape["claimed"] = claimed[slug]
        shape["count_pending_value"] = counted[slug]
        with factory() as s:
            shape["count_pending_true"] = _true_pending(s, slug)
        shape["seed_anti_join"] = _timed(
            factory, lambda s, slug=slug: s.execute(SEED_ANTI_JOIN, {"slug": slug}).all(), 3
        )
        shape["explain"] = _explain(factory, slug)
        shape["pending_query_server_ms"] = round(
            sum(
                ex["planning_ms"] + ex["execution_ms"]
                for name, ex in shape["explain"].items()
                if name in FIND_STATEMENTS
            ),
            3,
        )
        per_shape[slug] = shape
        print(f"measured {slug}", flush=True)

    per_shape["backlog"]["first_contact"] = _first_contact(factory, "backlog")
    report: dict[str, Any] = {
        "per_shape": per_shape,
        "dispatch_cycle": _dispatch_cycle(engine, factory, runs),
        "recompute_uploaded": _timed(factory, audit_logger.recompute_uploaded, 5),
    }
    # the first measurement of the seed's query (the baseline the target comes from,
    # docs/pending.md §2) timed the server's side, so
    # pending_query_ms does too (planning + execution of the statements of one find); the
    # client's wall time, which also holds round trips, Python and this shared machine's
    # load, is reported beside it
    report["pending_query_ms"] = max(per_shape[s]["pending_query_server_ms"] for s in SHAPES)
    report["pending_query_wall_ms"] = max(
        per_shape[s]["pending_query"]["median_ms"] for s in SHAPES
    )
    report["claim_ms"] = max(per_shape[s]["claim"]["median_ms"] for s in SHAPES)
    report["dispatch_cycle_ms"] = report["dispatch_cycle"]["median_ms"]
    report["count_pending_ms"] = max(per_shape[s]["count_pending"]["median_ms"] for s in SHAPES)
    return report


def _true_pending(s: Session, slug: str) -> int:
    """The exact number, the slow way (for judging count_pending's estimate)."""
    return int(
        s.execute(
            text(
                """
                SELECT count(*) FROM recordings r
                WHERE NOT r.local_deleted
                  AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = r.id
                                  AND u.remote_slug = :slug AND u.success)
                  AND NOT EXISTS (SELECT 1 FROM pair_state p WHERE p.recording_id = r.id
                                  AND p.remote_slug = :slug
                                  AND (p.lease_until > now() OR p.parked_until > now()))
                """
            ),
            {"slug": slug},
        ).scalar_one()
    )


def _first_contact(factory: sessionmaker[Session], slug: str) -> dict[str, float]:
    """A SEED-ERA upgrade: success rows exist, no cursor yet; the first claim finds where
    undecided work starts (once)."""

    def claim_without_cursor(s: Session) -> None:
        s.execute(text("DELETE FROM remote_cursor WHERE remote_slug = :s"), {"s": slug})
        leases.claim(s, slug, BATCH, lease_s=600)

    return _timed(factory, claim_without_cursor, 3)


def _dispatch_cycle(engine: Engine, factory: sessionmaker[Session], runs: int) -> dict[str, float]:
    """One dispatcher cycle, committed: settings, active remotes, then per running remote
    its state, its live leases and a claim topping it up to a batch. The state is restored
    (untimed) after each run so every run does the same work."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_pair_state AS SELECT * FROM pair_state"))
        conn.execute(text("CREATE TABLE bench_cursor AS SELECT * FROM remote_cursor"))
    samples: list[float] = []
    claimed = 0
    for i in range(runs + 3):
        with factory() as s:
            s.execute(text("SELECT 1"))
            t0 = time.perf_counter()
            settings = load_station_settings(s)
            claimed = 0
            for remote in active_remotes(s, settings).running:
                remote_state.get_state(s, remote.slug)
                want = settings.uploader.batch_size - leases.count_leases(s, remote.slug)
                claimed += len(leases.claim(s, remote.slug, want, lease_s=600))
            s.commit()
            dt = (time.perf_counter() - t0) * 1000
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM pair_state"))
            conn.execute(text("INSERT INTO pair_state SELECT * FROM bench_pair_state"))
            conn.execute(text("DELETE FROM remote_cursor"))
            conn.execute(text("INSERT INTO remote_cursor SELECT * FROM bench_cursor"))
        if i >= 3:
            samples.append(dt)
    return {**_stats(samples), "pairs_claimed": claimed}


def _explain(factory: sessionmaker[Session], slug: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements a find and a count run, as they run, with
    the median server-side planning and execution time of each."""
    out: dict[str, Any] = {}
    with factory() as s:
        cursor = (
            s.execute(
                text("SELECT last_recording_id FROM remote_cursor WHERE remote_slug = :s"),
                {"s": slug},
            ).scalar()
            or 0
        )
        lo = max(cursor - work_poller.LOOKBACK_IDS, 0)
        statements: dict[str, tuple[str, dict[str, Any]]] = {
            "cursor": (pending_sql.CURSOR_READ.text, {"slug": slug}),
            "walk (new work)": (
                pending_sql.WALK.text,
                {"slug": slug, "lo": lo, "scan": work_poller.SCAN_ROWS, "n": BATCH},
            ),
            "retry work (ready + park due)": (
                pending_sql.RETRY.text,
                {"slug": slug, "n": BATCH},
            ),
            "count window": (
                pending_sql.COUNT_WINDOW.text,
                {"slug": slug, "lo": cursor, "cap": work_poller.COUNT_EXACT_CAP},
            ),
        }
        for name, (sql, params) in statements.items():
            plan = [row[0] for row in s.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params)]
            # the figures: medians of runs without per-node timing (less instrumentation)
            planning, execution = [], []
            for _ in range(EXPLAIN_RUNS):
                quiet = [
                    row[0]
                    for row in s.execute(text("EXPLAIN (ANALYZE, TIMING OFF) " + sql), params)
                ]
                planning.append(_plan_ms(quiet, "Planning Time") or 0.0)
                execution.append(_plan_ms(quiet, "Execution Time") or 0.0)
            out[name] = {
                "execution_ms": round(statistics.median(execution), 3),
                "planning_ms": round(statistics.median(planning), 3),
                "plan": plan,
            }
        s.rollback()
    return out


def _plan_ms(plan: list[str], label: str) -> float | None:
    for line in plan:
        if line.strip().startswith(label):
            return float(line.split(":")[1].split("ms")[0])
    return None


# -- output -------------------------------------------------------------------------------


def _print(report: dict[str, Any]) -> None:
    shapes = report["per_shape"]
    print()
    print(f"{report['rows']:,} recordings x 3 remotes (loaded in {report['load_s']} s, "
          f"load average {report['load_average'][0]} -> {report['load_average'][1]}); "
          "client wall ms, median / p90")  # fmt: skip
    header = f"{'shape':<10} {'pending(50)':>16} {'server':>7} {'claim(50)':>16} {'count_pending':>16} {'seed anti-join':>18} {'found':>6} {'count ≈ true':>18}"  # noqa: E501
    print(header)
    print("-" * len(header))
    for slug in SHAPES:
        sh = shapes[slug]

        def fmt(key: str, sh: dict[str, Any] = sh) -> str:
            return f"{sh[key]['median_ms']:.2f} / {sh[key]['p90_ms']:.2f}"

        counts = f"{sh['count_pending_value']:,} ≈ {sh['count_pending_true']:,}"
        print(
            f"{slug:<10} {fmt('pending_query'):>16} {sh['pending_query_server_ms']:>7.2f}"
            f" {fmt('claim'):>16} {fmt('count_pending'):>16}"
            f" {fmt('seed_anti_join'):>18} {sh['pending_found']:>6} {counts:>18}"
        )
    dc = report["dispatch_cycle"]
    fc = shapes["backlog"]["first_contact"]
    rc = report["recompute_uploaded"]
    print()
    print(f"dispatch cycle, 3 remotes, committed: {dc['median_ms']:.2f} / {dc['p90_ms']:.2f} ms "
          f"({dc['pairs_claimed']} pairs leased)")  # fmt: skip
    print(f"first claim on a SEED-ERA remote (cursor computed once): {fc['median_ms']:.0f} ms")
    print(f"recompute_uploaded (3 required remotes): {rc['median_ms']:.1f} ms")
    print(
        f"pending_query_ms (worst shape, server-side) = {report['pending_query_ms']:.2f}"
        f"  (client wall {report['pending_query_wall_ms']:.2f}; target <= 10)"
    )
    print(f"dispatch_cycle_ms = {report['dispatch_cycle_ms']:.2f}  (target <= 100)")
    for slug in SHAPES:
        print(f"\n=== EXPLAIN ANALYZE: {slug} ===")
        for name, ex in shapes[slug]["explain"].items():
            print(f"--- {name}: execution {ex['execution_ms']} ms, planning {ex['planning_ms']} ms")
            for line in ex["plan"]:
                print("   " + line)


# -- databases ----------------------------------------------------------------------------


def _admin_execute(admin_url: str, sql: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def _create_database(admin_url: str, name: str) -> None:
    _admin_execute(admin_url, f'CREATE DATABASE "{name}"')


def _drop_database(admin_url: str, name: str) -> None:
    _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
