"""The dispatcher's tasks, on queue ``uploader.control``.

``uploader.dispatch_pending`` runs every beat tick; it discovers new work only once per
``uploader.poll_interval`` (reread from the database every cycle). ``uploader.request_topup``
tops up one remote at once when its worker runs low. Both publish chains only after the claim
has committed; a lease whose message vanished expires and is claimed again. When Redis comes
back empty (its persistence is off upstream), every lease is orphaned: they are released at
once instead of after their expiry.
"""

from __future__ import annotations

import structlog

from tasks.app import app
from tasks.chains import build_chain
from tasks.runtime import get_runtime
from uploader.completion import audit_logger
from uploader.db.session import session_scope
from uploader.errors import SettingsInvalid
from uploader.ledger import leases
from uploader.log_limiter import log_limited
from uploader.pipeline.dispatcher import CycleResult, claim_work

log = structlog.get_logger(__name__)
DISCOVERY_KEY = "silvasonic:uploader:discovery"
EPOCH_KEY = "silvasonic:uploader:broker_epoch"
REQUIRED_KEY = "silvasonic:uploader:required_set"
REWIND_KEY = "silvasonic:uploader:cursor_rewind"
# Once an hour each running remote's cursor steps back over its recent ids, so a recording
# that became visible much later than its id was taken (a long Indexer transaction) is still
# found; the walk skips what is done, so this costs one re-walk of these rows.
REWIND_EVERY_S = 3600
REWIND_IDS = 5000


def _discovery_due(poll_interval_s: int) -> bool:
    return bool(get_runtime().redis.set(DISCOVERY_KEY, b"1", nx=True, ex=poll_interval_s))


def _recover_lost_broker_state() -> int:
    """Release every lease if Redis lost our epoch marker (restarted empty)."""
    r = get_runtime().redis
    if r.set(EPOCH_KEY, b"1", nx=True):
        from uploader.completion.active import active_remotes

        with session_scope() as s:
            released = sum(leases.release_all(s, slug) for slug in active_remotes(s).required_slugs)
        if released:
            log.warning("dispatch.broker_state_lost", released_leases=released)
        return released
    return 0


def _rewind_cursors_hourly(result: CycleResult) -> None:
    if result.skipped_reason or not get_runtime().redis.set(
        REWIND_KEY, b"1", nx=True, ex=REWIND_EVERY_S
    ):
        return
    from uploader.completion.active import active_remotes
    from uploader.ledger import work_poller

    with session_scope() as s:
        for slug in active_remotes(s).running_slugs:
            work_poller.rewind_cursor(s, slug, REWIND_IDS)


def _recompute_if_required_changed(result: CycleResult) -> None:
    r = get_runtime().redis
    current = ",".join(result.required_slugs).encode()
    previous = r.getset(REQUIRED_KEY, current)
    if previous is not None and previous != current:
        with session_scope() as s:
            flagged = audit_logger.recompute_uploaded(s)
        log.info("dispatch.required_set_changed", required=result.required_slugs, flagged=flagged)


def _publish(result: CycleResult) -> None:
    for item in result.claimed:
        build_chain(item.lease, probe=item.probe).apply_async()
    if result.claimed:
        log.info(
            "dispatch.cycle_completed",
            published=len(result.claimed),
            probes=sum(1 for c in result.claimed if c.probe),
        )


@app.task(name="uploader.dispatch_pending", ignore_result=True)
def dispatch_pending() -> int:
    """One beat tick. Returns the number of chains published."""
    _recover_lost_broker_state()
    with session_scope() as s:
        from uploader.settings import load_station_settings

        try:
            poll = load_station_settings(s).uploader.poll_interval
        except SettingsInvalid as exc:  # status says it too; nothing is sent meanwhile
            log_limited(log.error, "dispatch.settings_invalid", "station", reason=str(exc))
            return 0
    if not _discovery_due(poll):
        return 0
    with session_scope() as s:
        result = claim_work(s, lease_s=app.conf.uploader_lease_s)
    _recompute_if_required_changed(result)
    _rewind_cursors_hourly(result)
    if result.skipped_reason:
        log.debug("dispatch.skipped", reason=result.skipped_reason)
    _publish(result)
    return len(result.claimed)


@app.task(name="uploader.request_topup", ignore_result=True)
def request_topup(remote_slug: str) -> int:
    """Top up one remote now (sent by its worker when its leases run low)."""
    with session_scope() as s:
        result = claim_work(s, lease_s=app.conf.uploader_lease_s, only=remote_slug)
    _publish(result)
    return len(result.claimed)
