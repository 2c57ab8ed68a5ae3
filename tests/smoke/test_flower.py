"""Flower as ``run --flower`` starts it, against the test's database and a Redis with a
password: its HTTP API, with the credentials from the 0600 file, lists one worker per remote
(and the control worker) and the ``uploader.*`` tasks; without credentials it refuses; it
listens on 127.0.0.1 only; no password is on any process's command line, and the Redis
password is on none of Flower's pages (the workers' configuration included)."""

from __future__ import annotations

import base64
import json
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.local_servers import LocalRedis
from tests.factories import make_recording_with_wav, make_remote, set_config
from tests.fixtures.stack import wait_until
from tests.smoke.helpers import (
    bare_env,
    cmdlines_containing,
    kill_all_of,
    processes_of,
    start,
    stop,
    wait_for_text,
)

SLUGS = ("flower-a", "flower-b")
PIPELINE_TASKS = {"uploader.encode", "uploader.upload", "uploader.audit"}


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    """Status and JSON body (None when it is not JSON, e.g. /healthcheck's "OK")."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _credentials(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _text(url: str, auth: tuple[str, str] | None = None) -> str:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode("utf-8", "replace"))


def test_flower_lists_workers_and_tasks_behind_basic_auth(
    engine: Engine, db_url: str, private_redis: LocalRedis, tmp_path: Path
) -> None:
    # given: a station with two remotes and work for both, in the test's database
    workspace = tmp_path / "workspace"
    with Session(engine) as s:
        set_config(s, "uploader", {"poll_interval": 1, "batch_size": 5})
        for slug in SLUGS:
            make_remote(s, slug, type="local", target_path=str(tmp_path / slug))
        for _ in range(2):
            make_recording_with_wav(s, workspace, seconds=2.0)
        s.commit()
    data = tmp_path / "data"
    redis_url = private_redis.url(0)
    redis_password = private_redis.password
    env = bare_env(
        SILVASONIC_DATABASE_URL=db_url,
        SILVASONIC_REDIS_URL=redis_url,
        SILVASONIC_RECORDER_WORKSPACE=str(workspace),
        SILVASONIC_DISPATCH_TICK_S="1",
        SILVASONIC_RECONCILE_INTERVAL_S="1",
    )
    log = tmp_path / "run.log"
    # when
    proc = start(
        ["run", "--flower", "--flower-port", "0", "--data-dir", str(data)], env, log, tmp_path
    )
    try:
        assert wait_for_text(log, "Running.", proc, 120), log.read_text()
        out = log.read_text()
        assert "(configured)" in out  # the test's servers, not embedded ones
        creds_file = data / "flower-credentials"
        assert str(creds_file) in out
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        creds = _credentials(creds_file)
        url, auth = creds["url"], (creds["user"], creds["password"])
        assert url.startswith("http://127.0.0.1:")
        assert creds["password"] not in out

        # then: up, and refusing anyone without the credentials
        assert wait_until(lambda: _get(f"{url}/healthcheck")[0] == 200, 90), log.read_text()
        assert _get(f"{url}/api/workers")[0] == 401
        assert _get(f"{url}/api/tasks")[0] == 401
        assert _get(f"{url}/api/workers", ("silvasonic", "wrong"))[0] == 401

        # one worker per remote, and the dispatcher's control worker
        def workers() -> set[str]:
            status, body = _get(f"{url}/api/workers?refresh=1", auth)
            return {name.split("@")[0] for name in body} if status == 200 and body else set()

        wanted = {f"uploader-{slug}" for slug in SLUGS} | {"uploader-control"}
        assert wait_until(lambda: wanted <= workers(), 120, 2), (workers(), log.read_text())

        # the Redis password is on none of Flower's pages: the workers' configuration (which
        # Flower fetches with `inspect conf`) shows the broker URL masked, and redbeat's URL
        # is not a worker setting at all
        status, body = _get(f"{url}/api/workers?refresh=1", auth)
        assert status == 200 and body
        confs = [info.get("conf") or {} for info in body.values()]
        assert any("broker_url" in conf for conf in confs), confs  # the conf was fetched
        assert all("********" in conf.get("broker_url", "********") for conf in confs), confs
        worker = next(name for name in body if name.startswith("uploader-control"))
        pages = [json.dumps(body), json.dumps(_get(f"{url}/api/tasks", auth)[1])]
        for page in ("/", "/workers", f"/worker/{worker}", "/broker", "/tasks"):
            pages.append(_text(f"{url}{page}", auth))
        pages += [_text(f"{url}/metrics"), _text(f"{url}/healthcheck")]  # no auth (Flower's)
        assert not [page[:200] for page in pages if redis_password in page]

        # the pipeline's tasks, by their stable names. The workers send no task events until
        # Flower switches them on (every 5 s from its start; SILVASONIC_TASK_EVENTS=0 is the
        # default), so the two recordings above may have gone unseen: recordings keep arriving
        def task_names() -> set[str]:
            status, body = _get(f"{url}/api/tasks", auth)
            return {t.get("name") for t in body.values()} if status == 200 and body else set()

        def task_names_while_recording() -> set[str]:
            with Session(engine) as s:
                make_recording_with_wav(s, workspace, seconds=2.0)
                s.commit()
            return task_names()

        assert wait_until(lambda: task_names_while_recording() >= PIPELINE_TASKS, 120, 2), (
            task_names()
        )
        assert "uploader.dispatch_pending" in task_names()
        assert all(name.startswith("uploader.") for name in task_names() if name)

        # read-only: control operations are refused even with the credentials
        shutdown = urllib.request.Request(
            f"{url}/api/worker/shutdown/uploader-control@x", method="POST"
        )
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        shutdown.add_header("Authorization", f"Basic {token}")
        try:
            urllib.request.urlopen(shutdown, timeout=10)
            raise AssertionError("Flower accepted a shutdown request")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
            assert b"Read only" in exc.read()

        # no secret on any command line (Flower's password, the database's)
        assert cmdlines_containing(creds["password"]) == []
        assert cmdlines_containing(db_url) == []
        assert cmdlines_containing(redis_password) == []

        code, took = stop(proc, 30)
        assert code == 0, f"exit {code} after {took:.1f} s\n{log.read_text()}"
        assert processes_of(data) == []
    finally:
        kill_all_of(data)
