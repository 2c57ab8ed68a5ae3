"""Engines and sessions (psycopg2, synchronous).

Each process builds its engine once through :func:`get_engine`; a forked Celery child must
call :func:`dispose_engine` first so it never shares a parent's socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from uploader.settings import DatabaseSettings

_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None

# connect timeout and pool timeout as upstream's session factory (contract §1.7)
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 5


def make_engine(url: str, *, pool_size: int = 2) -> Engine:
    """A small pool: a worker runs one task at a time; the dispatcher one cycle at a time."""
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=2,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


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
