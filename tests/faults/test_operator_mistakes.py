"""Operator mistakes, against real servers (``rclone serve webdav|sftp|s3`` on 127.0.0.1), on
the fault suite's private PostgreSQL and Redis: each mistake gets one clear state in
``status``, a bounded number of attempts at the remote, bounded logs, and heals once fixed.

Each row runs one remote, a worker and the dispatcher over 20 one-second recordings, makes the
mistake, watches for :data:`WINDOW_S`, fixes it and waits until everything is flagged. It
prints: attempts a minute at the remote (failure rows in the audit during the window: one per
attempt), audit rows, the state ``status`` showed and how many seconds after the start, log
bytes a minute during the window, and the seconds from the fix to the last recording flagged.
The misconfigured probe intervals are compressed (5, 10, 20, 40 s for production's 1, 5, 15,
60 min; ``SILVASONIC_MISCONFIGURED_PROBE_S``), so a row fits in about a minute: the seconds to
recover after a fix on the server's side are then at most the probe interval reached (in
production up to an hour, or at once with ``remotes probe``); the unavailable spacing is
production's (10, 20, 40, 60 s).

Run: ``uv run pytest -m faults tests/faults -q`` (the table is printed at the end).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from tests.factories import make_recording
from tests.faults.conftest import MISTAKES, MistakeResult
from tests.fixtures.remote_servers import _serve, _ServerProcess, write_host_key
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import seed_station, set_uploader
from uploader.remotes.secrets import encrypt_value, generate_key
from uploader.station_status import station_status

pytestmark = pytest.mark.faults

RECORDINGS = 20
WINDOW_S = 30.0
PROBE_S = "5,10,20,40"
#: the bounds every row must hold
MAX_ATTEMPTS_PER_MIN = 6
MAX_LOG_BYTES_PER_MIN = 20_000
MAX_SECONDS_TO_SHOW = 20.0
MAX_SECONDS_TO_RECOVER = 60.0


@dataclass
class Row:
    """One mistake's run: its stack, remote and what the checks read."""

    engine: Engine
    stack: Stack
    slug: str = "r"
    good: list[int] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def failures(self) -> int:
        return int(self.scalar("SELECT count(*) FROM uploads WHERE NOT success"))

    def flagged(self) -> int:
        return int(self.scalar(
            "SELECT count(*) FROM recordings WHERE uploaded AND id = ANY(CAST(:ids AS bigint[]))",
            ids=self.good))  # fmt: skip

    def status(self) -> tuple[str, str | None]:
        """(state, detail) as ``status`` computes it (its own code, in process)."""
        with Session(self.engine) as s:
            report = station_status(s)
        if report.settings_error:
            return "settings invalid", report.settings_error
        remote = next(r for r in report.remotes if r.slug == self.slug)
        if remote.parked:
            return f"{remote.state}, {remote.parked} parked", remote.detail
        return str(remote.state), remote.detail

    def start_worker(self, **env: str) -> None:
        self.stack.start_worker(self.slug, **{**self.worker_env, **env})

    def restart_worker(self, **env: str) -> None:
        self.stack.stop(f"worker-{self.slug}")
        self.start_worker(**env)

    def log_bytes(self) -> int:
        return sum(len(self.stack.logs(n)) for n in (f"worker-{self.slug}", "beat"))


@pytest.fixture
def row_factory(
    fault_db_url: str, fault_redis_url: str, fault_dir: Path
) -> Iterator[Callable[[dict[str, Any]], Row]]:
    engine = create_engine(fault_db_url, pool_pre_ping=True, pool_size=2)
    (fault_dir / "logs").mkdir()
    (fault_dir / "workspace").mkdir()
    env = {"SILVASONIC_MISCONFIGURED_PROBE_S": PROBE_S, "SILVASONIC_LOG_LEVEL": "WARNING",
           "SILVASONIC_ENCRYPTION_KEY": ""}  # fmt: skip
    stack = Stack(fault_db_url, fault_redis_url, fault_dir / "workspace", fault_dir / "flac-tmp",
                  fault_dir / "logs", env)  # fmt: skip

    def make(remote: dict[str, Any]) -> Row:
        good = seed_station(engine, stack.workspace, recordings=RECORDINGS, remotes={"r": remote},
                            uploader={"poll_interval": 1, "batch_size": 10})  # fmt: skip
        return Row(engine, stack, good=good)

    try:
        yield make
    finally:
        stack.stop_all()
        engine.dispose()


def _measure(row: Row, name: str, fix: Callable[[], None] | None, *, expect: str) -> None:
    """Start, see the mistake in status, watch the window, fix, see it heal; record the row."""
    result = MistakeResult(name)
    MISTAKES.append(result)
    started = time.monotonic()
    if "worker-r" not in row.stack.procs:
        row.start_worker()
    row.stack.start_dispatcher()
    shown = wait_until(lambda: expect in row.status()[0], 60, 0.25)
    result.seconds_to_show = time.monotonic() - started
    result.state = row.status()[0]
    assert shown, f"status never showed {expect!r}: {row.status()}\n{row.stack.logs('worker-r')}"
    detail = row.status()[1] or ""
    before, log_before = row.failures(), row.log_bytes()
    time.sleep(WINDOW_S)
    result.attempts_per_min = (row.failures() - before) * 60 / WINDOW_S
    result.log_bytes_per_min = (row.log_bytes() - log_before) * 60 / WINDOW_S
    result.audit_rows = row.failures()
    assert row.flagged() == 0 or expect.endswith("parked")
    if fix is not None:
        fixed_at = time.monotonic()
        fix()
        healed = wait_until(lambda: row.flagged() == len(row.good), 120, 0.25)
        result.seconds_to_recover = time.monotonic() - fixed_at
        assert healed, f"not healed: {row.status()}\n{row.stack.logs('worker-r')[-3000:]}"
    result.note = detail[:60]
    assert result.attempts_per_min <= MAX_ATTEMPTS_PER_MIN, result
    assert result.log_bytes_per_min <= MAX_LOG_BYTES_PER_MIN, result
    assert result.seconds_to_show <= MAX_SECONDS_TO_SHOW, result
    if fix is not None:
        assert result.seconds_to_recover is not None
        assert result.seconds_to_recover <= MAX_SECONDS_TO_RECOVER, result
    result.outcome = "passed"


@contextlib.contextmanager
def _webdav(folder: Path, password: str) -> Iterator[tuple[dict[str, Any], Path]]:
    root = folder / "webdav-root"
    root.mkdir()
    with _serve("webdav", root, [], {"RCLONE_USER": "u", "RCLONE_PASS": password}, folder) as p:
        yield {"url": f"http://127.0.0.1:{p.port}", "user": "u", "pass": password}, root


def _set_config(row: Row, config: dict[str, Any]) -> None:
    with row.engine.begin() as conn:  # as the web UI would
        conn.execute(text("UPDATE storage_remotes SET config = CAST(:c AS jsonb) WHERE slug='r'"),
                     {"c": json.dumps(config)})  # fmt: skip


def test_wrong_password(row_factory: Callable[[dict[str, Any]], Row], fault_dir: Path) -> None:
    with _webdav(fault_dir, "right-" + secrets.token_hex(6)) as (config, _):
        row = row_factory({"type": "webdav", "config": {**config, "pass": "wrong"},
                           "target_path": "archive"})  # fmt: skip
        _measure(row, "wrong password", lambda: _set_config(row, config), expect="misconfigured")


def test_encrypted_secret_without_a_key(
    row_factory: Callable[[dict[str, Any]], Row], fault_dir: Path
) -> None:
    key = generate_key()
    with _webdav(fault_dir, "pw-" + secrets.token_hex(6)) as (config, _):
        stored = {**config, "pass": encrypt_value(config["pass"], key)}
        row = row_factory({"type": "webdav", "config": stored, "target_path": "archive"})
        # the operator gives the workers the key (the controller recreates them with it)
        _measure(row, "encrypted secret, no key in the worker",
                 lambda: row.restart_worker(SILVASONIC_ENCRYPTION_KEY=key),
                 expect="misconfigured")  # fmt: skip


def test_encrypt_secrets_without_a_key_in_the_workers(
    row_factory: Callable[[dict[str, Any]], Row], fault_dir: Path
) -> None:
    key = generate_key()
    with _webdav(fault_dir, "pw-" + secrets.token_hex(6)) as (config, _):
        row = row_factory({"type": "webdav", "config": config, "target_path": "archive"})
        set_uploader(row.engine, enabled=False)
        cli = subprocess.run(
            [sys.executable, "-m", "silvasonic_uploader", "remotes", "set", "r", "--encrypt-secrets"],
            env={**row.stack.env(), "SILVASONIC_ENCRYPTION_KEY": key},
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        set_uploader(row.engine, enabled=True)
        _measure(row, "--encrypt-secrets, no key in the workers",
                 lambda: row.restart_worker(SILVASONIC_ENCRYPTION_KEY=key),
                 expect="misconfigured")  # fmt: skip


def test_invalid_bandwidth(row_factory: Callable[[dict[str, Any]], Row], fault_dir: Path) -> None:
    with _webdav(fault_dir, "pw-" + secrets.token_hex(6)) as (config, _):
        row = row_factory({"type": "webdav", "config": config, "target_path": "archive"})
        set_uploader(row.engine, bandwidth_limit="fast")
        _measure(row, "invalid bandwidth 'fast'",
                 lambda: set_uploader(row.engine, bandwidth_limit="1M"),
                 expect="settings invalid")  # fmt: skip


def test_over_long_path(row_factory: Callable[[dict[str, Any]], Row], fault_dir: Path) -> None:
    with _webdav(fault_dir, "pw-" + secrets.token_hex(6)) as (config, _):
        row = row_factory({"type": "webdav", "config": config, "target_path": "archive"})
        with Session(row.engine) as s:  # its folder exists, its name is too long for it
            rec = make_recording(s, duration=1.0)
            folder = rec.file_raw.rsplit("/", 1)[0]
            rec.file_raw = f"{folder}/{'x' * 300}.wav"
            s.commit()
        _measure(row, "over-long file_raw", None, expect="1 parked")
        assert row.flagged() == len(row.good)  # the others are not held up


def test_key_fixed_on_the_server(
    row_factory: Callable[[dict[str, Any]], Row],
    fault_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = fault_dir / "keys"
    keys.mkdir()
    monkeypatch.setenv("SILVASONIC_KEYS_DIR", str(keys))  # status, in this process
    host_key, public = write_host_key(fault_dir)
    root = fault_dir / "sftp-root"
    root.mkdir()
    args = ["--key", str(host_key), "--authorized-keys", str(fault_dir / "none")]
    client_pass = "pw-" + secrets.token_hex(6)
    with _serve("sftp", root, args, {"RCLONE_USER": "u", "RCLONE_PASS": "old-server-pass"},
                fault_dir) as server:  # fmt: skip
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {public}\n")
        config = {"host": "127.0.0.1", "port": server.port, "user": "u", "pass": client_pass,
                  "known_hosts_file": str(keys / "known_hosts")}  # fmt: skip
        row = row_factory({"type": "sftp", "config": config, "target_path": "upload"})
        row.stack.extra_env["SILVASONIC_KEYS_DIR"] = str(keys)  # the dispatcher's and worker's
        fixed = _ServerProcess(
            [*server.argv], {**server.env, "RCLONE_PASS": client_pass}, server.port,
            fault_dir / "sftp-fixed.log",
        )  # fmt: skip

        def fix_on_the_server() -> None:  # the server's admin sets the password we hold
            server.stop()
            fixed.start()

        try:
            _measure(row, "credentials fixed on the server (sftp)", fix_on_the_server,
                     expect="misconfigured")  # fmt: skip
        finally:
            fixed.stop()


def test_bucket_deleted_then_recreated(
    row_factory: Callable[[dict[str, Any]], Row], fault_dir: Path
) -> None:
    root = fault_dir / "s3-root"
    bucket = root / "bucket"
    bucket.mkdir(parents=True)
    key, secret = "AK" + secrets.token_hex(8).upper(), "sk-" + secrets.token_urlsafe(24)
    # --dir-cache-time 1s: rclone's VFS would otherwise hide a recreated bucket for 5 min
    args = ["--dir-cache-time", "1s"]
    with _serve("s3", root, args, {"RCLONE_AUTH_KEY": f'"{key},{secret}"'}, fault_dir) as server:
        config = {"access_key_id": key, "secret_access_key": secret, "provider": "Rclone",
                  "endpoint": f"http://127.0.0.1:{server.port}"}  # fmt: skip
        row = row_factory({"type": "s3", "config": config, "target_path": "bucket"})
        shutil.rmtree(bucket)  # deleted by someone before the uploads
        _measure(row, "bucket deleted, then recreated", lambda: bucket.mkdir(),
                 expect="misconfigured")  # fmt: skip
