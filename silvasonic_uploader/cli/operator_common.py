"""What the operator commands (``status``, ``remotes``, ``parked``) share: a database session
from the environment with errors an operator can act on, JSON output with stable keys, and
the two Redis side effects of a change (the controller nudge, a queue purge) as best effort -
Redis unreachable is a warning, never a failure: the database is the record.

No Celery here (nor in the commands): they read and write the database and talk to Redis with
plain redis-py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import click
import redis
from pydantic import ValidationError
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from controller_ext.nudge import send_nudge
from controller_ext.queues import purge_queue_keys, queue_name, queued_messages
from uploader.db.schema import require_current_schema
from uploader.errors import UploaderError
from uploader.ops.logs import configure_logging
from uploader.redact import redact
from uploader.settings import DatabaseSettings, UploaderServiceSettings

DB_HINT = "check SILVASONIC_DATABASE_URL (or POSTGRES_* and SILVASONIC_DB_HOST/PORT)"
REDIS_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 5

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (stable keys)."
)


def quiet_logs() -> None:
    """Domain log lines go to stderr, warnings and worse only: stdout carries the output
    (``--json`` must stay parseable)."""
    configure_logging("uploader-cli", level="WARNING", stream=sys.stderr)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@contextmanager
def operator_session(*, read_only: bool = False) -> Iterator[Session]:
    """A session on the station database that commits when the block ends without error.

    ``read_only``: one REPEATABLE READ, READ ONLY snapshot, so the numbers of one report agree
    with each other and nothing can be written by mistake. Raises ``click.ClickException``
    saying what to do when the database cannot be reached or its schema is not current.
    """
    quiet_logs()
    try:
        url = DatabaseSettings().url
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
        raise click.ClickException(f"invalid database settings ({fields}); {DB_HINT}") from None
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        try:
            require_current_schema(engine)
        except SQLAlchemyError as exc:
            raise click.ClickException(
                f"cannot reach the database ({type(exc).__name__}); {DB_HINT}"
            ) from None
        with Session(engine, autoflush=False, expire_on_commit=False) as session:
            if read_only:
                session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            yield session
            session.commit()
    except UploaderError as exc:  # SchemaOutdated, SettingsInvalid, …: their text says what to do
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"database error ({type(exc).__name__}); nothing was changed. {DB_HINT}"
        ) from None
    finally:
        engine.dispose()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=_json_default))


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def human_age(seconds: float | None) -> str:
    """``3d 4h``, ``2h 10m``, ``5m``, ``40s``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


@dataclass
class RedisEffects:
    """What the Redis side of a change did; ``warnings`` went to stderr already."""

    nudged: bool = False
    purged_messages: int | None = None  # None: no purge asked for, or it failed
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nudged": self.nudged,
            "purged_messages": self.purged_messages,
            "warnings": list(self.warnings),
        }


def _redis_client() -> redis.Redis[Any]:
    url = UploaderServiceSettings().redis_url.get_secret_value()
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def _redis_where() -> str:
    return redact(UploaderServiceSettings().redis_url.get_secret_value())


def after_change(*, purge_slug: str | None = None) -> RedisEffects:
    """Purge ``upload.<purge_slug>`` (when given), then nudge the controller
    (``PUBLISH silvasonic:nudge reconcile``). Redis unreachable: a warning for each."""
    effects = RedisEffects()
    try:
        client = _redis_client()
    except (ValueError, redis.RedisError) as exc:
        message = f"SILVASONIC_REDIS_URL is not usable ({type(exc).__name__})"
        warn(message)
        effects.warnings.append(message)
        return effects
    try:
        if purge_slug is not None:
            try:
                waiting = queued_messages(client, purge_slug)
                purge_queue_keys(client, purge_slug)
                effects.purged_messages = waiting
            except redis.RedisError as exc:
                message = (
                    f"could not purge queue {queue_name(purge_slug)} (Redis at {_redis_where()}: "
                    f"{type(exc).__name__}); its leases are released, so queued messages end "
                    f"without uploading, and the controller purges the queue when it retires "
                    f"the worker"
                )
                warn(message)
                effects.warnings.append(message)
        try:
            send_nudge(client)
            effects.nudged = True
        except redis.RedisError as exc:
            message = (
                f"could not nudge the controller (Redis at {_redis_where()}: "
                f"{type(exc).__name__}); the change is saved and applies at its next "
                f"reconcile cycle"
            )
            warn(message)
            effects.warnings.append(message)
    finally:
        client.close()
    return effects
