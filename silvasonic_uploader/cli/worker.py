"""``silvasonic-uploader worker --remote SLUG``: the Celery worker of one remote.

Refuses to start on an out-of-date schema; then runs prefork, concurrency 1, prefetch 1,
consuming only ``upload.<slug>``, node name ``uploader-<slug>@%h``. SIGTERM is a soft shutdown
(``REMAP_SIGTERM=SIGQUIT``): in-flight work goes back to the queue within the grace period and
the command exits 0.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from sqlalchemy import create_engine, pool

from uploader.audio.temp_dir import TEMP_DIR_ENV, worker_temp_dir
from uploader.db.schema import require_current_schema
from uploader.errors import SchemaError, TempDirUnsafe
from uploader.ops.logs import celery_banner_options, configure_logging
from uploader.remotes.config import validate_remote_slug
from uploader.settings import DatabaseSettings

_stopping: list[str] = []

#: --loglevel of the commands that run Celery (worker, beat, run): the level of Celery's, kombu's
#: and redis-py's records; ours follow SILVASONIC_LOG_LEVEL (uploader/ops/logs.py)
loglevel_option = click.option(
    "--loglevel",
    default="INFO",
    show_default=True,
    help="Level of Celery's and other libraries' log records (its per-task lines stay off).",
)


def _check_schema() -> None:
    engine = create_engine(DatabaseSettings().url, poolclass=pool.NullPool)
    try:
        require_current_schema(engine)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(
            f"cannot reach the database ({type(exc).__name__}); check SILVASONIC_DATABASE_URL "
            f"or POSTGRES_*/SILVASONIC_DB_HOST"
        ) from None
    finally:
        engine.dispose()


def _note_shutdown(sig: Any = None, **_: Any) -> None:
    _stopping.append(str(sig))


@click.command()
@click.option(
    "--remote",
    "remote_slug",
    envvar="SILVASONIC_STORAGE_REMOTE_SLUG",
    required=True,
    help="The remote's slug (or SILVASONIC_STORAGE_REMOTE_SLUG).",
)
@loglevel_option
def worker(remote_slug: str, loglevel: str) -> None:
    """Run the Celery worker that uploads to one remote."""
    try:
        validate_remote_slug(remote_slug)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--remote") from None
    configure_logging("uploader")
    _check_schema()
    try:  # the pool children find exactly this folder again (uploader/audio/temp_dir.py)
        os.environ[TEMP_DIR_ENV] = str(worker_temp_dir(remote_slug).parent)
    except TempDirUnsafe as exc:
        raise click.ClickException(str(exc)) from None
    os.environ["SILVASONIC_STORAGE_REMOTE_SLUG"] = remote_slug
    os.environ.setdefault("SILVASONIC_INSTANCE_ID", remote_slug)
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")  # soft shutdown on SIGTERM
    from celery.signals import worker_shutting_down

    from celeryconfig import upload_queue
    from tasks.app import app

    worker_shutting_down.connect(_note_shutdown, weak=False)
    argv = [
        *celery_banner_options(),
        "worker",
        "--queues",
        upload_queue(remote_slug),
        "--hostname",
        f"uploader-{remote_slug}@%h",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
    ]
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        if _stopping:  # asked to stop: in-flight work was returned to the queue
            sys.exit(0)
        raise exc
