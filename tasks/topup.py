"""A worker whose leases run low asks the dispatcher for more at once (debounced), so a
backlog drains at the speed of the link, not one batch per poll interval
(docs/design/0005-celery.md)."""

from __future__ import annotations

import redis
import structlog
from sqlalchemy.orm import Session

from celeryconfig import CONTROL_QUEUE
from tasks.app import app
from tasks.runtime import get_runtime
from uploader.db.session import session_scope
from uploader.ledger import leases

DEBOUNCE_S = 2
KEY = "silvasonic:uploader:topup:{slug}"
log = structlog.get_logger(__name__)


def read_lease_level(session: Session, remote_slug: str) -> tuple[int, int]:
    """(live leases, batch_size) of this remote, read in the caller's transaction (the audit
    step's, so the check costs no session of its own: two statements, no extra checkout)."""
    batch = get_runtime().station_settings(session).uploader.batch_size
    return leases.count_leases(session, remote_slug), batch


def maybe_request_topup(remote_slug: str, level: tuple[int, int] | None = None) -> bool:
    """Send ``uploader.request_topup`` when this remote's live leases fell below half of
    ``batch_size``; at most one request per remote every ``DEBOUNCE_S``, except when none is
    left: the worker has drained its batch and no further audit would ask again (with the rcd
    transport half a batch drains in well under ``DEBOUNCE_S``, and a debounced request then
    left a backlog waiting a whole poll interval). ``level`` is :func:`read_lease_level`'s
    answer when the caller already has it."""
    try:
        if level is None:
            with session_scope() as s:
                level = read_lease_level(s, remote_slug)
        live, batch = level
        if live >= max(1, batch // 2):
            return False
        fresh = get_runtime().redis.set(KEY.format(slug=remote_slug), b"1", nx=True, ex=DEBOUNCE_S)
        if not fresh and live > 0:
            return False
        app.send_task("uploader.request_topup", args=[remote_slug], queue=CONTROL_QUEUE)
        return True
    except (redis.RedisError, OSError) as exc:  # the next beat tick tops up anyway
        log.warning("dispatch.topup_request_failed", error=type(exc).__name__)
        return False
