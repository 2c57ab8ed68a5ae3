"""structlog set-up, as upstream Silvasonic does it (contract §7): console output in
development mode (``SILVASONIC_DEVELOPMENT_MODE``, default true), JSON lines otherwise, so the
Controller's LogForwarder can read them. Event names are ``<area>.<what_happened>``."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

# A process started as ``celery -A tasks worker|beat`` (the dispatcher's two children) has no
# entry point of ours to call configure_logging; it reads its service name from here instead.
SERVICE_ENV = "SILVASONIC_LOG_SERVICE"


def _development_mode() -> bool:
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
    defaults to stdout; commands whose stdout is their output log to stderr."""
    level_name = (level or os.environ.get("SILVASONIC_LOG_LEVEL", "INFO")).upper()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks,
    ]
    if _development_mode():
        renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer(colors=False)
    else:
        processors.insert(0, lambda _l, _m, ev: {**ev, "service": service})
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def configure_logging_if_unset(default_service: str) -> None:
    """For processes Celery's own command starts: configure logging as ``configure_logging``
    would, unless an entry point of ours already did (``silvasonic-uploader worker``). The
    service name comes from ``SILVASONIC_LOG_SERVICE``, set by whoever started the process."""
    if not structlog.is_configured():
        configure_logging(os.environ.get(SERVICE_ENV) or default_service)
