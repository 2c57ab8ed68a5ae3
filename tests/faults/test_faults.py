"""Fault injection on the real stack (docs/design/0009-targets.md, the reliability
target; issue 7).

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
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.local_servers import LocalPostgres, LocalRedis
from tests.factories import make_recording, write_wav
from tests.faults.conftest import RESULTS, FaultResult
from tests.fixtures.forger import forge_audit_messages
from tests.fixtures.remote_servers import RemoteServer, _serve
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import duplicate_success_pairs, seed_station, set_uploader
from uploader.audio.flac_encoder import encode_wav_to_flac
from uploader.ledger import leases
from uploader.path_builder import build_remote_path
from uploader.remotes.destination import current as current_destinations

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
    #: while paused, a separate process that knows only the Redis URL publishes audit
    #: messages for both remotes: made-up tokens, and the live lease tokens (as a reader of
    #: Redis would see them), on each queue and on the other remote's queue
    FORGED_AUDIT = "forged audit messages"
    #: the local remote pointed at a new folder mid-run, as the web UI or SQL would do it
    DESTINATION_CHANGED = "destination changed mid-run"
    #: 4 more recordings whose usual remote paths collide in pairs (a/same.wav + b/same.wav of
    #: one sensor and day; x.wav + x.WAV)
    PATH_COLLISION = "path collision"
    #: a foreign file of exactly the FLAC's size already at 10 recordings' WebDAV paths (plain
    #: WebDAV has no hash: rclone compares sizes only)
    FOREIGN_SAME_SIZE = "foreign same-size object at the path"
    #: for 8 s every FLAC in the workers' temp folders is overwritten with same-size bytes
    #: beginning "NOT AUDIO" (what another user with write access there could do)
    TEMP_TAMPERED = "temp folder tampered"
    #: 5 WAVs that hold less audio than their header and their index row promise
    TRUNCATED_WAV = "truncated WAVs"


class LedgerWatch(threading.Thread):
    """Every 0.5 s: recordings flagged uploaded whose audio is not on every active remote.

    A success row is not taken on trust: for each newly flagged recording, each remote must
    hold an object, at the path one of its success rows names, that decodes to exactly the
    recording's WAV samples. A flag without that is "early" (a lie to the Janitor). Survives
    the database going away (a fault) and counts what it could not check.
    """

    _FLAGGED = text("SELECT id, file_raw FROM recordings WHERE uploaded")
    _OBJECTS = text(
        "SELECT remote_slug, remote_path FROM uploads "
        "WHERE recording_id = :rid AND success AND remote_path IS NOT NULL"
    )

    def __init__(self, engine: Engine, workspace: Path, locate: Callable[[str, str], Path]):
        super().__init__(name="ledger-watch", daemon=True)
        self.engine = engine
        self.workspace = workspace
        self.locate = locate
        self.early_ids: set[int] = set()
        self.verified: set[int] = set()
        self.checks = 0
        self.missed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(WATCH_EVERY_S):
            self.check()

    def check(self) -> None:
        try:
            with self.engine.connect() as conn:
                for rid, file_raw in conn.execute(self._FLAGGED).all():
                    if rid in self.verified or rid in self.early_ids:
                        continue
                    objects = conn.execute(self._OBJECTS, {"rid": rid}).all()
                    if self._holds_audio(file_raw, objects):
                        self.verified.add(rid)
                    else:
                        self.early_ids.add(rid)
            self.checks += 1
        except Exception:  # the database is down (a fault): try again in 0.5 s
            self.missed += 1

    def _holds_audio(self, file_raw: str, objects: list[Any]) -> bool:
        wav, _ = sf.read(str(self.workspace / file_raw), dtype="int32")
        for slug in SLUGS:
            found = False
            for row in objects:
                if row.remote_slug != slug:
                    continue
                path = self.locate(slug, row.remote_path)
                with contextlib.suppress(Exception):
                    flac, _ = sf.read(str(path), dtype="int32")
                    found = found or bool(np.array_equal(flac, wav))
            if not found:
                return False
        return True

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
        """Good pairs without a success row at the remote's current destination."""
        with Session(self.engine) as s:
            dests = current_destinations(s, list(SLUGS))
        return int(
            self.scalar(
                """
                SELECT count(*) FROM unnest(CAST(:ids AS bigint[])) AS g(id)
                CROSS JOIN unnest(CAST(:slugs AS text[]), CAST(:dests AS text[])) AS r(slug, d)
                WHERE NOT EXISTS (SELECT 1 FROM uploads u WHERE u.recording_id = g.id
                                  AND u.remote_slug = r.slug AND u.success
                                  AND u.destination = r.d)
                """,
                ids=self.good,
                slugs=list(SLUGS),
                dests=[dests[slug] for slug in SLUGS],
            )
        )

    def locate(self, slug: str, remote_path: str) -> Path:
        """Where an object of ``slug`` lies on this machine's disk."""
        return self.dav.root / remote_path if slug == "dav" else Path(remote_path)

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


def _pause_and_settle(run: Run) -> None:
    """Switch the uploader off and wait until in-flight work has ended and its leases gone."""
    set_uploader(run.engine, enabled=False)
    assert wait_until(
        lambda: run.scalar("SELECT count(*) FROM pair_state WHERE lease_until > now()") == 0, 60
    ), run.diagnose()


def _pause_toggle(run: Run) -> None:
    run.progress_to(40)
    _pause_and_settle(run)  # then nothing moves
    settled = run.successes()
    time.sleep(3)
    assert run.successes() == settled < 2 * len(run.good), "uploads went on while paused"
    set_uploader(run.engine, enabled=True)


def _forged_audit(run: Run) -> None:
    run.progress_to(20)
    _pause_and_settle(run)
    flagged = run.flagged(run.good)
    with run.engine.connect() as conn:
        waiting = [
            int(r)
            for r in conn.execute(
                text("SELECT id FROM recordings WHERE NOT uploaded ORDER BY id DESC LIMIT 10")
            ).scalars()
        ]
        leases_seen = conn.execute(
            text("SELECT recording_id, remote_slug, lease_token::text FROM pair_state "
                 "WHERE lease_token IS NOT NULL")
        ).all()  # fmt: skip
    messages: list[tuple[str, dict[str, Any]]] = []
    for rid in waiting:
        for slug in SLUGS:
            payload = {"recording_id": rid, "remote_slug": slug, "size_bytes": 1,
                       "duration_s": 0.1, "remote_path": f"x/{rid}.flac"}  # fmt: skip
            messages.append((f"upload.{slug}", {**payload, "token": "forged"}))
            messages.append((f"upload.{slug}", {**payload, "token": str(uuid.uuid4())}))
            other = "usb" if slug == "dav" else "dav"
            messages.append((f"upload.{other}", {**payload, "token": "forged"}))
    for rid, slug, token in leases_seen:  # a token read from Redis, for a pair it holds
        messages.append((f"upload.{slug}", {"recording_id": rid, "remote_slug": slug,
                                             "token": token, "size_bytes": 1}))  # fmt: skip
    forge_audit_messages(run.stack.redis_url, messages)
    time.sleep(5)
    assert run.flagged(run.good) == flagged, "a forged message flagged a recording"
    refused = sum(run.stack.logs(f"worker-{slug}").count("audit.refused") for slug in SLUGS)
    run.note = f"{len(messages)} forged, {refused} refused"
    set_uploader(run.engine, enabled=True)


def _destination_changed(run: Run) -> None:
    run.progress_to(60)
    moved_to = run.usb.parent / "usb-new"
    moved_to.mkdir()
    with run.engine.begin() as conn:  # as the web UI or SQL would do it
        conn.execute(
            text("UPDATE storage_remotes SET target_path = :p WHERE slug = 'usb'"),
            {"p": str(moved_to)},
        )
    before = len(list(run.usb.rglob("*.flac")))
    run.usb = moved_to
    run.note = f"{before} were in the old folder"


def _wait_for_progress(run: Run) -> None:
    """The fault was seeded before the start; the run itself is the test."""
    run.progress_to(20)


def _temp_tampered(run: Run) -> None:
    run.progress_to(20)
    stop_at = time.monotonic() + 8
    tampered = 0
    while time.monotonic() < stop_at:
        for path in run.stack.temp_root.glob("*/*/*.flac"):
            if path.name.startswith(".") or ".partial" in path.name:
                continue  # what the encoder is still writing and checking
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                if size > 16:
                    with path.open("r+b") as f:
                        if f.read(9) != b"NOT AUDIO":
                            f.seek(0)
                            f.write(b"NOT AUDIO" + os.urandom(size - 9))
                            tampered += 1
        time.sleep(0.02)
    run.note = f"{tampered} FLACs overwritten"


def _truncated_wav(run: Run) -> None:
    """The truncated WAVs were seeded with the good ones: they must be parked, never flagged."""
    _corrupt_and_missing(run)


INJECT: dict[Fault, Callable[[Run], None]] = {
    Fault.WORKER_SIGKILL: _worker_sigkill,
    Fault.DISPATCHER_SIGKILL: _dispatcher_sigkill,
    Fault.REDIS_RESTART_EMPTY: _redis_restart_empty,
    Fault.POSTGRES_RESTART: _postgres_restart,
    Fault.REMOTE_DOWN_60S: _remote_down_60s,
    Fault.TEMP_DIR_FULL: _temp_dir_full,
    Fault.CORRUPT_AND_MISSING: _corrupt_and_missing,
    Fault.PAUSE_TOGGLE: _pause_toggle,
    Fault.FORGED_AUDIT: _forged_audit,
    Fault.DESTINATION_CHANGED: _destination_changed,
    Fault.PATH_COLLISION: _wait_for_progress,
    Fault.FOREIGN_SAME_SIZE: _wait_for_progress,
    Fault.TEMP_TAMPERED: _temp_tampered,
    Fault.TRUNCATED_WAV: _truncated_wav,
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


def _seed_colliding(engine: Engine, workspace: Path) -> list[int]:
    """Two pairs of recordings whose usual remote paths collide (one sensor, one day)."""
    ids = []
    names = ["collide/a/same.wav", "collide/b/same.wav", "collide/x.wav", "collide/x.WAV"]
    with Session(engine) as s:
        for i, name in enumerate(names):
            rec = make_recording(s, file_raw=name, duration=1.0)
            wav = write_wav(workspace / name, seconds=1.0, seed=500 + i)
            rec.filesize_raw = wav.stat().st_size
            ids.append(rec.id)
        s.commit()
    return ids


def _plant_foreign(engine: Engine, workspace: Path, dav: RemoteServer, ids: list[int]) -> None:
    """At each recording's WebDAV path, a foreign file of exactly its FLAC's size."""
    with Session(engine) as s:
        rows = s.execute(
            text("SELECT id, file_raw, sensor_id, time FROM recordings "
                 "WHERE id = ANY(CAST(:ids AS bigint[]))"), {"ids": ids}
        ).all()  # fmt: skip
    for rid, file_raw, sensor_id, at in rows:
        with tempfile.TemporaryDirectory() as out:
            size = encode_wav_to_flac(workspace / file_raw, Path(out)).stat().st_size
        remote = build_remote_path("Silvasonic Test", sensor_id, at, Path(file_raw).name,
                                   dav.target_path)  # fmt: skip
        target = dav.root / remote
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"FOREIGN " + os.urandom(size - 8))
        assert rid and target.stat().st_size == size


def _seed_truncated(engine: Engine, workspace: Path, n: int) -> list[int]:
    """WAVs whose header and index row promise 1 s, holding only 0.4 s of samples."""
    ids = []
    with Session(engine) as s:
        for i in range(n):
            rec = make_recording(s, duration=1.0)
            wav = write_wav(workspace / rec.file_raw, seconds=1.0, seed=700 + i)
            rec.filesize_raw = wav.stat().st_size
            data = wav.read_bytes()
            wav.write_bytes(data[: 44 + int(0.4 * 48000) * 2])
            ids.append(rec.id)
        s.commit()
    return ids


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
        if fault is Fault.TRUNCATED_WAV:
            run.bad = _seed_truncated(engine, workspace, 5)
        if fault is Fault.PATH_COLLISION:
            run.good += _seed_colliding(engine, workspace)
        if fault is Fault.FOREIGN_SAME_SIZE:
            _plant_foreign(engine, workspace, fault_webdav, good[-10:])
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
        run.watch = LedgerWatch(run.engine, run.stack.workspace, run.locate)
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
    if run.fault in (Fault.CORRUPT_AND_MISSING, Fault.TRUNCATED_WAV):
        _check_parked_and_reported(run)
    if run.fault is Fault.TRUNCATED_WAV:
        kinds = run.scalar(
            "SELECT count(*) FROM uploads WHERE error_kind = 'source_mismatch' "
            "AND recording_id = ANY(CAST(:ids AS bigint[]))",
            ids=run.bad,
        )
        assert kinds >= len(run.bad), "a truncated WAV was not reported as source_mismatch"
    if run.fault in (Fault.TEMP_TAMPERED, Fault.FORGED_AUDIT, Fault.DESTINATION_CHANGED):
        # neither is the file's fault: nothing counted toward parking
        assert run.scalar("SELECT count(*) FROM pair_state WHERE parked_until IS NOT NULL") == 0


def _check_parked_and_reported(run: Run) -> None:
    """The bad pairs are parked, never flagged, and `status`/`parked list` report them."""
    assert run.flagged(run.bad) == 0
    with Session(run.engine) as s:
        parked = leases.list_parked(s)
    assert sorted({p.recording_id for p in parked}) == sorted(run.bad)
    assert len(parked) == len(run.bad) * len(SLUGS)
    env = run.stack.env()
    out = subprocess.run(
        [sys.executable, "-m", "silvasonic_uploader", "status", "--json"],
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
