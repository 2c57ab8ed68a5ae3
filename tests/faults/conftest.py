"""The fault suite's own servers and its summary table.

PostgreSQL and Redis here are PRIVATE instances started from the wheels
(``silvasonic_uploader.cli.local_servers``), never the machine's: the faults restart them. One instance of each per
session; each test gets a fresh database cloned from a migrated template and an empty Redis.

Their files live in folders of our own (``fault_dir``), not under pytest's numbered
basetemp: a concurrent pytest session prunes old basetemps, which would pull a live server's
data directory away.

Every test adds one row to :data:`RESULTS`; ``pytest_terminal_summary`` prints them as a table
(whatever ``-s`` says) and writes it to ``$SILVASONIC_FAULTS_REPORT`` if set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import redis

from silvasonic_uploader.cli.local_servers import LocalPostgres, LocalRedis
from uploader.db import schema

REPORT_ENV = "SILVASONIC_FAULTS_REPORT"


@dataclass
class FaultResult:
    """One row of the table."""

    fault: str
    pairs: int
    lost: int
    duplicate_success_rows: int
    early_flags: int
    seconds_to_drain: float
    outcome: str  # "passed", "failed", "skipped: <reason>"
    note: str = ""


RESULTS: list[FaultResult] = []


@dataclass
class MistakeResult:
    """One row of the "operator mistakes" table (tests/faults/test_operator_mistakes.py)."""

    mistake: str
    attempts_per_min: float = -1.0  # failure rows in the audit (one per attempt), a minute
    audit_rows: int = -1
    state: str = "-"  # what status showed
    seconds_to_show: float = -1.0
    log_bytes_per_min: float = -1.0
    seconds_to_recover: float | None = None  # None: nothing to fix (e.g. a pair parked)
    outcome: str = "failed"
    note: str = ""


MISTAKES: list[MistakeResult] = []


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def format_mistakes(results: list[MistakeResult]) -> str:
    head = ("mistake", "attempts/min", "audit rows", "status shows", "s to show",
            "log B/min", "s to recover", "outcome")  # fmt: skip
    rows = [
        (r.mistake, f"{r.attempts_per_min:.0f}", str(r.audit_rows), r.state,
         f"{r.seconds_to_show:.1f}", f"{r.log_bytes_per_min:.0f}",
         "-" if r.seconds_to_recover is None else f"{r.seconds_to_recover:.1f}", r.outcome)
        for r in results
    ]  # fmt: skip
    return _table(head, rows)


def format_table(results: list[FaultResult]) -> str:
    head = ("fault", "pairs", "lost", "dup. success rows", "early flags", "s to drain", "outcome")
    rows = [
        (r.fault, str(r.pairs), str(r.lost), str(r.duplicate_success_rows), str(r.early_flags),
         f"{r.seconds_to_drain:.1f}", r.outcome + (f" ({r.note})" if r.note else ""))
        for r in results
    ]  # fmt: skip
    return _table(head, rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tables = []
    if RESULTS:
        table = format_table(RESULTS)
        terminalreporter.section("fault injection: every pair uploaded, once, never flagged early")
        terminalreporter.write_line(table)
        tables.append(table)
    if MISTAKES:
        table = format_mistakes(MISTAKES)
        terminalreporter.section("operator mistakes: bounded attempts, one clear state, healed")
        terminalreporter.write_line(table)
        tables.append(table)
    path = os.environ.get(REPORT_ENV)
    if path and tables:
        Path(path).write_text("\n\n".join(tables) + "\n")


@contextlib.contextmanager
def _own_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)  # the embedded servers' user must pass it (tests/fixtures/services.py)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_root() -> Iterator[Path]:
    with _own_dir("silvasonic-faults-") as path:
        yield path


@pytest.fixture
def fault_dir(fault_root: Path, request: pytest.FixtureRequest) -> Path:
    """This test's folder (workspace, remotes, temp dir, logs); removed with the session's."""
    name: str = request.node.name
    path = fault_root / name.replace("[", "-").replace("]", "")
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def fault_postgres(fault_root: Path) -> Iterator[LocalPostgres]:
    (fault_root / "pg").mkdir(mode=0o711)
    server = LocalPostgres(fault_root / "pg" / "data", durable=False)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def fault_template(fault_postgres: LocalPostgres) -> str:
    """A migrated database cloned for each test (a migration per test would cost seconds)."""
    _admin(fault_postgres, "CREATE DATABASE faults_template")
    schema.upgrade(fault_postgres.url("faults_template"))
    return "faults_template"


@pytest.fixture
def fault_db_url(fault_postgres: LocalPostgres, fault_template: str) -> Iterator[str]:
    name = f"faults_{uuid.uuid4().hex[:10]}"
    _admin(fault_postgres, f'CREATE DATABASE "{name}" TEMPLATE {fault_template}')
    yield fault_postgres.url(name)
    with contextlib.suppress(psycopg2.Error):
        _admin(fault_postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def fault_redis(fault_root: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(fault_root / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def fault_redis_url(fault_redis: LocalRedis) -> Iterator[str]:
    """Database 0 of the private Redis, empty at the start of each test."""
    if fault_redis.proc is None or fault_redis.proc.poll() is not None:
        fault_redis.start()
    client = redis.Redis.from_url(fault_redis.url(0))
    client.flushall()
    client.close()
    yield fault_redis.url(0)


def _admin(server: LocalPostgres, statement: str) -> None:
    conn = server.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()
