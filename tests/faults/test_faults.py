"""Fault injection on the real stack (design.md §8 "Reliability"; issue 7).

Each test runs the dispatcher, two workers and two remotes (``rclone serve webdav``, which the
remote-down fault stops and starts, and a local folder) on PRIVATE PostgreSQL and Redis
instances, seeds 100 one-second recordings, injects one fault mid-run and waits for the run to
end. Every run must end with every (good) pair uploaded, exactly one success row per pair, and
no recording flagged ``uploaded`` before both remotes have it, which a watcher checks every
0.5 s during the run, not only at the end. The table at the end of the session comes from
conftest.py.

Run: ``uv run pytest -m faults tests/faults -q`` (deselected by default; CI runs it).
The suite's timings are short (visibility timeout 20 s, lease 30 s, backoff ≤ 2 s, redbeat lock
6 s) so that it finishes in minutes; the mechanisms are the production ones.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from cli.local_servers import LocalPostgres, LocalRedis
from tests.factories import make_recording
from tests.faults.conftest import RESULTS, FaultResult
from tests.fixtures.remote_servers import RemoteServer, _serve
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import duplicate_success_pairs, seed_station, set_uploader
from uploader import leases

pytestmark = pytest.mark.faults

RECORDINGS = 100
SLUGS = ("dav", "usb")
WATCH_EVERY_S = 0.5
DRAIN_TIMEOUT_S = 300.0
# short timings of the suite (the production values are hours; the mechanisms are the same)
SUITE_ENV = {
    "SILVASONIC_LEASE_S": "30",
    "SILVASONIC_REDBEAT_LOCK_TIMEOUT_S": "6",
    "SILVASONIC_LOG_LEVEL": "WARNING",
}
UPLOADER = {
    "poll_interval": 1,
    "batch_size": 10,
    # ~0.15 s per 1 s FLAC, so a fault lands while uploads are under way
    "bandwidth_limit": "300k",
    "max_file_attempts": 2,
}


class Fault(enum.Enum):
    """What each test does to the running stack (one member, one test)."""

    #: kill -9 of the WebDAV worker's process group (Celery parent, pool child, rclone rcd)
    #: while it uploads; a new worker is started as the Controller would
    WORKER_SIGKILL = "worker SIGKILL mid-upload"
    #: kill -9 of the dispatcher (supervisor, beat, control worker); started again 2 s later
    DISPATCHER_SIGKILL = "dispatcher SIGKILL"
    #: Redis killed and started empty on the same port (persistence off): every queued
    #: message is gone
    REDIS_RESTART_EMPTY = "Redis restarted empty"
    #: PostgreSQL stopped (fast shutdown) and started again under the running stack
    POSTGRES_RESTART = "PostgreSQL restarted"
    #: the WebDAV server down for 60 s
    REMOTE_DOWN_60S = "remote down for 60 s"
    #: the workers' SILVASONIC_TEMP_DIR (a small tmpfs) filled to the last byte, freed 8 s later
    TEMP_DIR_FULL = "temp folder full"
    #: 5 corrupt and 5 missing WAVs among the 100 good ones
    CORRUPT_AND_MISSING = "corrupt + missing WAVs"
    #: uploader.enabled switched off mid-run and on again
    PAUSE_TOGGLE = "global pause off/on"


class LedgerWatch(threading.Thread):
    """Every 0.5 s: recordings flagged uploaded that lack a success row on an active remote.

    Survives the database going away (a fault) and counts what it could not check.
    """

    _EARLY = text(
        """
        SELECT r.id FROM recordings r WHERE r.uploaded AND EXISTS (
          SELECT 1 FROM storage_remotes sr WHERE sr.is_active AND NOT EXISTS (
            SELECT 1 FROM uploads u WHERE u.recording_id = r.id
              AND u.remote_slug = sr.slug AND u.success))
        """
    )

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="ledger-watch", daemon=True)
        self.engine = engine
        self.early_ids: set[int] = set()
        self.checks = 0
        self.missed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(WATCH_EVERY_S):
            self.check()

    def check(self) -> None:
        try:
            with self.engine.connect() as conn:
                self.early_ids.update(int(r) for r in conn.execute(self._EARLY).scalars())
            self.checks += 1
        except Exception:  # the database is down (a fault): try again in 0.5 s
            self.missed += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self.check()  # and once more at the end


@dataclass
class Run:
    fault: Fault
    engine: Engine
    stack: Stack
    dav: RemoteServer
    usb: Path
    pg: LocalPostgres
    redis: LocalRedis
    good: list[int]
    bad: list[int] = field(default_factory=list)
    watch: LedgerWatch | None = None
    started: float = 0.0
    note: str = ""

    def successes(self, slug: str | None = None) -> int:
        """Success rows (of one remote); -1 while the database cannot be read."""
        sql = "SELECT count(*) FROM uploads WHERE success" + (
            " AND remote_slug = :s" if slug else ""
        )
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(text(sql), {"s": slug}).scalar_one())
        except Exception:
            return -1

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def lost(self) -> int:
        """Good pairs without a success row."""
        return int(
            self.scalar(
                """
                SELECT count(*) FROM unnest(CAST(:ids AS bigint[])) AS g(id)
                CROSS JOIN unnest(CAST(:slugs AS text[])) AS r(slug)
                WHERE NOT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = g.id
                                  AND u.remote_slug = r.slug AND u.success)
                """,
                ids=self.good,
                slugs=list(SLUGS),
            )
        )

    def drained(self) -> bool:
        try:
            return self.lost() == 0 and self.flagged(self.good) == len(self.good)
        except Exception:
            return False

    def flagged(self, ids: list[int]) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM recordings WHERE uploaded AND id = ANY(CAST(:ids AS bigint[]))",
                ids=ids,
            )
        )

    def progress_to(self, n: int, timeout_s: float = 120.0) -> None:
        """Wait until ``n`` success rows exist, and make sure the run is not over yet."""
        assert wait_until(lambda: self.successes() >= n, timeout_s), self.diagnose()
        assert self.successes() < 2 * len(self.good), "the run ended before the fault"

    def diagnose(self) -> str:
        """What a failed assertion prints: the ledger and the tails of the logs."""
        run = self
        parts = [
            f"{run.fault.value}: successes {run.successes('dav')} dav, {run.successes('usb')} usb"
        ]
        with contextlib.suppress(Exception):
            parts.append(f"lost {run.lost()}, flagged {run.flagged(run.good)}/{len(run.good)}")
            with run.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT remote_slug, count(*) FILTER (WHERE lease_until > now()), "
                         "count(*) FILTER (WHERE parked_until IS NOT NULL), sum(file_failures) "
                         "FROM pair_state GROUP BY remote_slug")
                ).all()  # fmt: skip
            parts.append(f"pair_state (slug, live, parked, failures): {rows}")
        for name in sorted({*run.stack.procs, "beat"}):
            log = run.stack.logs(name)
            if log:
                parts.append(f"--- {name} log tail ---\n{log[-1500:]}")
        return "\n".join(parts)


def _folder(path: Path) -> dict[str, Any]:
    path.mkdir(parents=True, exist_ok=True)
    return {"type": "local", "target_path": str(path)}


# -- the faults ------------------------------------------------------------------------------


def _worker_sigkill(run: Run) -> None:
    run.progress_to(40)
    # mid-upload: the WebDAV worker holds a renewed lease on a pair right now
    wait_until(
        lambda: (
            run.scalar(
                "SELECT count(*) FROM pair_state WHERE remote_slug = 'dav' "
                "AND updated_at > now() - interval '1 second' AND lease_until > now()"
            )
            > 0
        ),
        10,
        0.05,
    )
    run.stack.kill("worker-dav", signal.SIGKILL)
    time.sleep(1.0)
    run.stack.start_worker("dav", name="worker-dav-2")


def _dispatcher_sigkill(run: Run) -> None:
    run.progress_to(40)
    run.stack.kill("beat", signal.SIGKILL)
    time.sleep(2.0)
    run.stack.start_dispatcher("beat-2")


def _redis_restart_empty(run: Run) -> None:
    run.progress_to(40)
    run.redis.kill()
    run.redis.start()  # same port, nothing in it


def _postgres_restart(run: Run) -> None:
    run.progress_to(40)
    run.pg.restart()


def _remote_down_60s(run: Run) -> None:
    run.progress_to(40)
    run.dav.stop()
    time.sleep(60)
    assert run.successes("dav") < len(run.good), "the WebDAV remote finished before its outage"
    assert run.flagged(run.good) < len(run.good)
    run.dav.start()


def _temp_dir_full(run: Run) -> None:
    run.progress_to(40)
    filler = run.stack.temp_root / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: ENOSPC surfaces at write()
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):  # the last bytes, one at a time
            while True:
                f.write(b"\0")
    time.sleep(8)
    filler.unlink()


def _corrupt_and_missing(run: Run) -> None:
    """The bad WAVs were seeded with the good ones; here we only watch them get parked."""
    expected = len(run.bad) * len(SLUGS)
    assert wait_until(
        lambda: (
            run.scalar("SELECT count(*) FROM pair_state WHERE parked_until > now()") == expected
        ),
        180,
    ), run.diagnose()


def _pause_toggle(run: Run) -> None:
    run.progress_to(40)
    set_uploader(run.engine, enabled=False)
    # in-flight work ends and the leases go; then nothing moves
    assert wait_until(
        lambda: run.scalar("SELECT count(*) FROM pair_state WHERE lease_until > now()") == 0, 60
    ), run.diagnose()
    settled = run.successes()
    time.sleep(3)
    assert run.successes() == settled < 2 * len(run.good), "uploads went on while paused"
    set_uploader(run.engine, enabled=True)


INJECT: dict[Fault, Callable[[Run], None]] = {
    Fault.WORKER_SIGKILL: _worker_sigkill,
    Fault.DISPATCHER_SIGKILL: _dispatcher_sigkill,
    Fault.REDIS_RESTART_EMPTY: _redis_restart_empty,
    Fault.POSTGRES_RESTART: _postgres_restart,
    Fault.REMOTE_DOWN_60S: _remote_down_60s,
    Fault.TEMP_DIR_FULL: _temp_dir_full,
    Fault.CORRUPT_AND_MISSING: _corrupt_and_missing,
    Fault.PAUSE_TOGGLE: _pause_toggle,
}


# -- set-up ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[str | None]:
    """Mount a tmpfs at ``path``; yields None, or the reason it could not be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        yield f"cannot mount a tmpfs at {path}: {done.stderr.strip() or done.returncode}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _seed_bad(engine: Engine, workspace: Path, corrupt: int, missing: int) -> list[int]:
    ids = []
    with Session(engine) as s:
        for i in range(corrupt + missing):
            rec = make_recording(s, duration=1.0)
            if i < corrupt:
                path = workspace / rec.file_raw
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
            ids.append(rec.id)
        s.commit()
    return ids


@pytest.fixture
def fault_webdav(fault_dir: Path) -> Iterator[RemoteServer]:
    """``rclone serve webdav`` with a password (as tests.fixtures.remote_servers' fixture, in
    our own folder), which the remote-down fault stops and starts on its port."""
    root = fault_dir / "webdav-root"
    root.mkdir()
    user, password = "dav-user", "dav-" + secrets.token_urlsafe(12)
    env = {"RCLONE_USER": user, "RCLONE_PASS": password}
    with _serve("webdav", root, [], env, fault_dir) as proc:
        yield RemoteServer(
            type="webdav",
            config={"url": f"http://127.0.0.1:{proc.port}", "user": user, "pass": password},
            target_path="archive",
            root=root,
            port=proc.port,
            secrets=(password,),
            _process=proc,
        )


@pytest.fixture
def run_factory(
    fault_db_url: str,
    fault_redis_url: str,
    fault_postgres: LocalPostgres,
    fault_redis: LocalRedis,
    fault_webdav: RemoteServer,
    fault_dir: Path,
) -> Iterator[Callable[[Fault], Run]]:
    engine = create_engine(fault_db_url, pool_pre_ping=True, pool_size=2)
    logs = fault_dir / "logs"
    logs.mkdir()
    workspace = fault_dir / "workspace"
    workspace.mkdir()
    stack = Stack(
        fault_db_url, fault_redis_url, workspace, fault_dir / "flac-tmp", logs, dict(SUITE_ENV)
    )
    runs: list[Run] = []

    def make(fault: Fault) -> Run:
        dav = {
            "type": "webdav",
            "config": fault_webdav.config,
            "target_path": fault_webdav.target_path,
        }
        good = seed_station(
            engine,
            workspace,
            recordings=RECORDINGS,
            seconds=1.0,
            remotes={"dav": dav, "usb": _folder(fault_dir / "usb")},
            uploader=UPLOADER,
        )
        run = Run(fault, engine, stack, fault_webdav, fault_dir / "usb", fault_postgres,
                  fault_redis, good)  # fmt: skip
        if fault is Fault.CORRUPT_AND_MISSING:
            run.bad = _seed_bad(engine, workspace, corrupt=5, missing=5)
        runs.append(run)
        return run

    try:
        yield make
    finally:
        for run in runs:
            if run.watch is not None:
                run.watch.stop()
        stack.stop_all()
        if fault_postgres.proc is None or fault_postgres.proc.poll() is not None:
            fault_postgres.start()  # a failed test must not take the next one's server
        engine.dispose()


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(Fault), ids=[f.name.lower() for f in Fault])
def test_fault(fault: Fault, run_factory: Callable[[Fault], Run]) -> None:
    result = FaultResult(fault.value, 0, -1, -1, -1, 0.0, "failed")
    RESULTS.append(result)
    with contextlib.ExitStack() as cleanup:
        run = run_factory(fault)
        result.pairs = len(run.good) * len(SLUGS)
        if fault is Fault.TEMP_DIR_FULL:
            reason = cleanup.enter_context(_tmpfs(run.stack.temp_root, "8m"))
            if reason is not None:
                print(f"skipped {fault.value}: {reason}")
                result.outcome = f"skipped: {reason}"
                pytest.skip(reason)
        run.watch = LedgerWatch(run.engine)
        run.watch.start()
        run.started = time.monotonic()
        for slug in SLUGS:
            run.stack.start_worker(slug)
        run.stack.start_dispatcher()
        try:
            INJECT[fault](run)
            drained = wait_until(run.drained, DRAIN_TIMEOUT_S, 0.25)
            result.seconds_to_drain = time.monotonic() - run.started
        finally:
            run.watch.stop()
            with contextlib.suppress(Exception):
                result.lost = run.lost()
                result.duplicate_success_rows = duplicate_success_pairs(run.engine)
            result.early_flags = len(run.watch.early_ids)
        assert drained, run.diagnose()
        _check_ledger(run, result)
        result.outcome = "passed"
        result.note = run.note


def _check_ledger(run: Run, result: FaultResult) -> None:
    assert result.lost == 0
    assert result.duplicate_success_rows == 0
    assert run.watch is not None and run.watch.checks > 10  # the watcher really watched
    assert result.early_flags == 0, f"flagged early: {sorted(run.watch.early_ids)[:20]}"
    assert run.flagged(run.good) == len(run.good)
    # every object landed once on each remote (a repeated transfer overwrote the same path)
    dav_files = list((run.dav.root / str(run.dav.target_path)).rglob("*.flac"))
    assert len(dav_files) == len(run.good)
    assert len(list(run.usb.rglob("*.flac"))) == len(run.good)
    if run.fault in (Fault.REMOTE_DOWN_60S, Fault.TEMP_DIR_FULL):
        # neither is the file's fault: nothing counted toward parking
        assert run.scalar("SELECT count(*) FROM pair_state WHERE file_failures > 0") == 0
        assert run.scalar("SELECT count(*) FROM uploads WHERE error_kind = 'file'") == 0
    if run.fault is Fault.CORRUPT_AND_MISSING:
        _check_parked_and_reported(run)


def _check_parked_and_reported(run: Run) -> None:
    """The bad pairs are parked, never flagged, and `status`/`parked list` report them."""
    assert run.flagged(run.bad) == 0
    with Session(run.engine) as s:
        parked = leases.list_parked(s)
    assert sorted({p.recording_id for p in parked}) == sorted(run.bad)
    assert len(parked) == len(run.bad) * len(SLUGS)
    env = run.stack.env()
    out = subprocess.run(
        [sys.executable, "-m", "cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_remote = {r["slug"]: r["parked"] for r in report["remotes"]}
    assert by_remote == {slug: len(run.bad) for slug in SLUGS}
    run.note = f"{len(parked)} bad pairs parked"


def test_every_fault_kind_has_an_injection() -> None:
    assert set(INJECT) == set(Fault)
