"""No two executions upload the same pair at once, even when Redis redelivers a message whose
first copy is still running (visibility timeout, broker blip): the upload holds a PostgreSQL
session-level advisory lock keyed on the pair. A crashed worker's connection dies and with it
the lock, so a redelivery after ``kill -9`` is never blocked."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

_KEY = "hashtextextended(:key, 0)"
_TRY_LOCK = text(f"SELECT pg_try_advisory_lock({_KEY})")
_UNLOCK = text(f"SELECT pg_advisory_unlock({_KEY})")


def _key(recording_id: int, remote_slug: str) -> str:
    return f"{remote_slug}:{recording_id}"


@contextmanager
def pair_lock(
    engine: Engine, recording_id: int, remote_slug: str, *, wait_s: float = 0.0
) -> Iterator[bool]:
    """Yield True while this process holds the pair's lock, False if another execution does
    (still, after waiting up to ``wait_s`` for it).

    Uses its own connection, autocommit, so no transaction stays open during a long upload.
    """
    key = _key(recording_id, remote_slug)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        got = bool(conn.execute(_TRY_LOCK, {"key": key}).scalar())
        deadline, delay = time.monotonic() + wait_s, 0.01
        while not got and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)
            got = bool(conn.execute(_TRY_LOCK, {"key": key}).scalar())
        try:
            yield got
        finally:
            if got:
                conn.execute(_UNLOCK, {"key": key})


class PairLocks:
    """Pair locks held beyond one function call, all on one dedicated connection: for the transfers
    a worker starts ahead of their upload step (``uploader.pipeline.transfer_ahead``), each locked
    from its start until it is seen finished. Thread-safe; ``close`` (or the process's death, which
    closes the connection) releases them all."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._held: set[str] = set()
        self._mutex = threading.Lock()

    def acquire(self, recording_id: int, remote_slug: str) -> bool:
        """True when this process now holds the pair's lock (False: another execution does)."""
        key = _key(recording_id, remote_slug)
        with self._mutex:
            if key in self._held:
                return True
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = bool(self._conn.execute(_TRY_LOCK, {"key": key}).scalar())
            except Exception:  # the connection died (server restarted): nothing is held
                self._drop()
                raise
            if not got:
                return False
            self._held.add(key)
            return True

    def release(self, recording_id: int, remote_slug: str) -> None:
        key = _key(recording_id, remote_slug)
        with self._mutex:
            if key not in self._held or self._conn is None:
                return
            self._held.discard(key)
            try:
                self._conn.execute(_UNLOCK, {"key": key})
            except Exception:  # a dead connection held nothing any more: start afresh
                self._drop()
                raise

    def held(self) -> int:
        return len(self._held)

    def close(self) -> None:
        with self._mutex:
            self._drop()

    def _drop(self) -> None:
        """Give the connection back without a lock on it: it goes back to the engine's pool,
        where a session-level lock would outlive us (or discard it when that cannot be
        made sure)."""
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except Exception:
            with contextlib.suppress(Exception):
                conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()
