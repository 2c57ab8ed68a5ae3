"""Failures keep their kind through a real worker, and a remote an operator got wrong is
marked once, shown in ``status`` at once, attempted a bounded number of times, and healed by
the fix — with ``rclone serve webdav`` as the remote and the console log renderer on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.fixtures.remote_servers import RemoteServer
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import scalar, seed_station, uploaded_count

pytestmark = pytest.mark.integration


def _status(stack: Stack) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "silvasonic_uploader", "status", "--json"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _remote(report: dict[str, Any], slug: str) -> dict[str, Any]:
    return next(r for r in report["remotes"] if r["slug"] == slug)


def test_a_wrong_password_is_marked_once_bounded_and_healed_by_the_fix(
    engine: Engine, stack: Stack, webdav_server: RemoteServer
) -> None:
    # given a WebDAV remote whose stored password is wrong, 10 recordings, console logs on
    dav = {
        "type": "webdav",
        "config": {**webdav_server.config, "pass": "wrong-password"},
        "target_path": webdav_server.target_path,
    }
    seed_station(engine, stack.workspace, recordings=10, remotes={"dav": dav})
    stack.start_worker("dav", SILVASONIC_DEVELOPMENT_MODE="true",
                       SILVASONIC_MISCONFIGURED_PROBE_S="60")  # fmt: skip
    stack.start_dispatcher()
    started = time.monotonic()
    # then the remote is marked misconfigured, with the server's answer, at the first 401
    assert wait_until(
        lambda: (
            scalar(engine, "SELECT count(*) FROM remote_status WHERE state='misconfigured'") == 1
        ),
        60,
    ), stack.logs("worker-dav")
    report = _remote(_status(stack), "dav")
    assert report["state"] == "misconfigured"
    assert "401" in (report["detail"] or "") or "nauthori" in (report["detail"] or "")
    assert report["next_probe_at"] is not None
    # and over the next 20 s nothing more is tried: the breaker waits for the next probe
    time.sleep(20)
    attempts = scalar(engine, "SELECT count(*) FROM uploads WHERE NOT success")
    assert 1 <= attempts <= 3, attempts  # the failing pair and, at most, transfers started ahead
    assert scalar(engine, "SELECT count(*) FROM uploads WHERE error_kind = 'config'") >= 1
    assert uploaded_count(engine) == 0
    # and the console renderer never crashed on a task failure
    log = stack.logs("worker-dav")
    assert "Logging error" not in log and "TypeError" not in log
    # when the operator stores the right password (a config change clears the mark)
    with Session(engine) as s:
        s.execute(
            text("UPDATE storage_remotes SET config = CAST(:c AS jsonb) WHERE slug = 'dav'"),
            {"c": json.dumps(webdav_server.config)},
        )
        s.commit()
    # then everything is uploaded and flagged, and the remote is ok again
    assert wait_until(lambda: uploaded_count(engine) == 10, 90), stack.logs("worker-dav")
    assert _remote(_status(stack), "dav")["state"] == "ok"
    assert time.monotonic() - started < 150
