"""One dispatch cycle, without Celery: read the settings, honour the pause and the window,
and top up each running remote's leases to ``batch_size`` (a remote that is not ok gets a
single probe pair, when its breaker allows one: ``uploader.remotes.state``). The Celery task
publishes one chain per returned lease after this transaction has committed
(docs/design/0003-leases.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from sqlalchemy.orm import Session

from uploader.completion.active import active_remotes
from uploader.ledger import leases
from uploader.pipeline.schedule import is_within_window
from uploader.remotes import state as remote_state
from uploader.settings import StationSettings, load_station_settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Claimed:
    lease: leases.Lease
    probe: bool


@dataclass
class CycleResult:
    """What the cycle decided; ``claimed`` is published by the caller after commit."""

    settings: StationSettings
    skipped_reason: str | None = None  # "paused", "outside_window"
    required_slugs: tuple[str, ...] = ()
    claimed: list[Claimed] = field(default_factory=list)


def claim_work(session: Session, *, lease_s: float, only: str | None = None) -> CycleResult:
    """Claim leases for the running remotes (or just ``only``). Idempotent and safe to run
    concurrently: claims use ``SKIP LOCKED``; a second cycle finds the batch already full."""
    settings = load_station_settings(session)
    active = active_remotes(session, settings)
    result = CycleResult(settings=settings, required_slugs=active.required_slugs)
    if not settings.uploader.enabled:
        result.skipped_reason = "paused"
        return result
    up = settings.uploader
    if not is_within_window(up.schedule_start_hour, up.schedule_end_hour):
        result.skipped_reason = "outside_window"
        return result
    for remote in active.running:
        if only is not None and remote.slug != only:
            continue
        live = leases.count_leases(session, remote.slug)
        state = remote_state.get_state(session, remote.slug)
        probing = state.state is not remote_state.State.ok
        # the breaker: a remote that is not ok gets one probe pair at a time, when it is due
        want = (1 if not live and state.probe_due else 0) if probing else up.batch_size - live
        if want <= 0:
            continue
        for lease in leases.claim(session, remote.slug, want, lease_s=lease_s):
            result.claimed.append(Claimed(lease, probe=probing))
    return result
