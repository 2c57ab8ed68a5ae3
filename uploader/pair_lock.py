"""No two executions upload the same pair at once, even when Redis redelivers a message whose
first copy is still running (visibility timeout, broker blip): the upload holds a PostgreSQL
session-level advisory lock keyed on the pair. A crashed worker's connection dies and with it
the lock, so a redelivery after ``kill -9`` is never blocked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

_KEY = "hashtextextended(:key, 0)"


@contextmanager
def pair_lock(engine: Engine, recording_id: int, remote_slug: str) -> Iterator[bool]:
    """Yield True while this process holds the pair's lock, False if another execution does.

    Uses its own connection, autocommit, so no transaction stays open during a long upload.
    """
    key = f"{remote_slug}:{recording_id}"
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        got = bool(
            conn.execute(text(f"SELECT pg_try_advisory_lock({_KEY})"), {"key": key}).scalar()
        )
        try:
            yield got
        finally:
            if got:
                conn.execute(text(f"SELECT pg_advisory_unlock({_KEY})"), {"key": key})
