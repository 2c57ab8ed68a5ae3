"""The process engine's pool against a real PostgreSQL: a connection that died while idle is
replaced before use (no task sees it), and one that dies between two busy uses fails one
statement, after which the pool works again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from uploader.db import session as db_session


@pytest.fixture
def pooled(db_url: str) -> Iterator[Engine]:
    eng = db_session.make_engine(db_url, pool_size=1)
    yield eng
    eng.dispose()


def backend_pid(eng: Engine) -> int:
    with eng.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def kill_backend(db_url: str, pid: int) -> None:
    admin = create_engine(db_url, poolclass=None)
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    finally:
        admin.dispose()


def test_a_connection_killed_while_idle_is_replaced_unseen(
    pooled: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a pooled connection whose server process is gone, idle past the ping threshold
    first = backend_pid(pooled)
    kill_backend(db_url, first)
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)

    # then the next use gets a fresh connection and never sees the dead one
    assert backend_pid(pooled) != first


def test_a_connection_killed_between_busy_uses_fails_once(
    pooled: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a busy connection (so not pinged: were it, this test would see no error) whose
    # server process is then killed
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 3600.0)
    first = backend_pid(pooled)
    kill_backend(db_url, first)

    # then the statement that meets it fails (the task's failure path handles that) …
    with pytest.raises(OperationalError), pooled.connect() as conn:
        conn.execute(text("SELECT 1"))
    # … and the pool, dropped by SQLAlchemy on the disconnect, works again at once
    assert backend_pid(pooled) != first
