"""Engines and sessions (psycopg2, synchronous).

Each process builds its engine once through :func:`get_engine`; a forked Celery child must
call :func:`dispose_engine` first so it never shares a parent's socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from uploader.settings import DatabaseSettings

_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None

# connect timeout and pool timeout as upstream's session factory (docs/design/0012-upstream.md §2)
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 5
#: a pooled connection idle for longer than this is pinged before use
PING_AFTER_IDLE_S = 2.0
_CHECKED_IN = "silvasonic_checked_in"


def make_engine(url: str, *, pool_size: int = 2) -> Engine:
    """A small pool: a worker runs one task at a time; the dispatcher one cycle at a time.

    A pooled connection is pinged before use only when it sat idle for ``PING_AFTER_IDLE_S``
    (see :func:`_ping_if_idle`).
    """
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=2,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    event.listen(engine, "connect", _note_checkin)  # a new connection needs no ping
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _note_checkin(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
    record.info[_CHECKED_IN] = time.monotonic()


def _ping_if_idle(
    dbapi_conn: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """Ping a connection that sat idle (the server may have restarted meanwhile); a dead one
    raises ``DisconnectionError``, on which the pool opens a fresh connection instead.

    ``pool_pre_ping`` pings at every checkout: 4 round trips per pair in a busy worker, whose
    connections were in use a few milliseconds ago (bench/profile_worker.py). A connection
    that breaks between two busy uses (the server restarted mid-run) fails its statement
    instead; SQLAlchemy then drops the whole pool, and the task's failure path re-offers the
    pair — as it must anyway for the statement that was running when the server went away.
    """
    if time.monotonic() - record.info.get(_CHECKED_IN, 0.0) < PING_AFTER_IDLE_S:
        return
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as exc:
        raise DisconnectionError(f"connection lost while idle: {type(exc).__name__}") from exc


def get_engine() -> Engine:
    """The process's engine, built on first use from the environment."""
    global _engine, _factory
    if _engine is None:
        _engine = make_engine(DatabaseSettings().url)
        _factory = sessionmaker(_engine, expire_on_commit=False, autoflush=False)
    return _engine


def override_engine(engine: Engine) -> None:
    """Point this process at another engine (tests, the one-machine runner)."""
    global _engine, _factory
    _engine = engine
    _factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)


def dispose_engine() -> None:
    """Drop pooled connections without closing the parent's sockets (call after fork)."""
    global _engine, _factory
    if _engine is not None:
        _engine.dispose(close=False)
    _engine = None
    _factory = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    get_engine()
    assert _factory is not None
    session = _factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
