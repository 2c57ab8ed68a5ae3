"""structlog set-up, as upstream Silvasonic does it (docs/design/0012-upstream.md §4): console
output in development mode (``SILVASONIC_DEVELOPMENT_MODE``, default true), JSON lines otherwise, so
the Controller's LogForwarder can read them. Event names are ``<area>.<what_happened>``.

Celery, kombu and redis-py log through the standard library; their records go through the
same renderer (JSON with ``logger_name`` in production), so a broker warning reaches the
LogForwarder as a ``warning``, not as a ``raw`` line. Their level is Celery's ``--loglevel``
(:func:`set_library_level`); Celery's per-task lines stay quiet at any level."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict

# A process started as ``celery -A tasks worker|beat`` (the dispatcher's two children) has no
# entry point of ours to call configure_logging; it reads its service name from here instead.
SERVICE_ENV = "SILVASONIC_LOG_SERVICE"

#: Celery's "Task … received" and "Task … succeeded in …": two lines per step, six per pair,
#: for as long as the station runs. The two-phase upload log (contract 0030b) and Flower
#: already tell this; a task's failure is logged at ERROR and still shows.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours on the root logger, so a second configure_logging replaces it, never doubles it."""


def _logger_name(_logger: object, _method: str, event: EventDict) -> EventDict:
    """A library record's logger, under upstream's key (structlog's own says ``logger``)."""
    event["logger_name"] = event["_record"].name
    return event


def development_mode() -> bool:
    return os.environ.get("SILVASONIC_DEVELOPMENT_MODE", "true").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def configure_logging(
    service: str, *, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Idempotent; call once per process at its entry point, never at import. ``stream``
    defaults to stdout; commands whose stdout is their output log to stderr. ``level``
    (default ``SILVASONIC_LOG_LEVEL``) filters our own events; library records start at
    WARNING until :func:`set_library_level` says otherwise."""
    level_name = (level or os.environ.get("SILVASONIC_LOG_LEVEL", "INFO")).upper()
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks never carry local variables (structlog's default does: a frame holding a
    # DSN or a password would be logged verbatim). The console renderer formats exc_info
    # itself and must not get the JSON form (a list): every task failure crashed it
    # ("can only concatenate str (not "list") to str") with a screenful of "Logging error".
    if development_mode():
        renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        shared.insert(0, lambda _l, _m, ev: {**ev, "service": service})
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer()
    out = stream or sys.stdout
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)  # Celery's SecurityWarning (root in a container): one line
    set_library_level(logging.WARNING)


def set_library_level(level: int | str) -> None:
    """The standard library's level (Celery's ``--loglevel``); Celery's per-task loggers are
    kept at WARNING whatever it is."""
    logging.getLogger().setLevel(level)
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def celery_banner_options() -> list[str]:
    """Celery's global options for ``celery … worker|beat``: its start-up banner (a screenful of
    plain text, every start) only in development mode, where a person reads it."""
    return [] if development_mode() else ["--quiet"]


def configure_logging_if_unset(default_service: str) -> None:
    """For processes Celery's own command starts: configure logging as ``configure_logging``
    would, unless an entry point of ours already did (``silvasonic-uploader worker``). The
    service name comes from ``SILVASONIC_LOG_SERVICE``, set by whoever started the process."""
    if not structlog.is_configured():
        configure_logging(os.environ.get(SERVICE_ENV) or default_service)
