"""``uploader.pipeline.steps.begin_step`` against real PostgreSQL: in one statement it renews the
lease exactly as ``leases.renew`` does, and reads what ``remote_state.get_state`` and
the job it needs, in every case a step meets."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.factories import make_recording, make_remote
from uploader.db.models import Recording
from uploader.ledger import leases
from uploader.pipeline.steps import begin_step
from uploader.remotes import state as remote_state
from uploader.remotes.state import State
from uploader.settings import StationSettings, SystemSettings, UploaderSettings

SLUG = "nextcloud"
SETTINGS = StationSettings(uploader=UploaderSettings(), system=SystemSettings())


def _lease(session: Session) -> leases.Lease:
    make_remote(session, SLUG)
    make_recording(session)
    session.flush()
    (lease,) = leases.claim(session, SLUG, 1, lease_s=60)
    return lease


def _until(session: Session, rid: int) -> object:
    return session.execute(
        text("SELECT lease_until - now() FROM pair_state WHERE recording_id = :r"), {"r": rid}
    ).scalar_one()


def test_renews_and_reads_like_the_three_statements_it_replaces(session: Session) -> None:
    lease = _lease(session)
    start = begin_step(session, lease.recording_id, SLUG, lease.token, 600, SETTINGS)
    assert start.renewed
    assert str(_until(session, lease.recording_id)) == "0:10:00"  # now() + 600 s
    assert start.remote_state == remote_state.get_state(session, SLUG)
    assert start.remote_state.state is State.ok
    rec = session.get(Recording, lease.recording_id)
    assert start.job is not None and rec is not None
    assert (start.job.recording_id, start.job.file_raw, start.job.sensor_id, start.job.time) == (
        rec.id,
        rec.file_raw,
        rec.sensor_id,
        rec.time,
    )
    assert start.job.remote.slug == SLUG and start.job.remote.is_active
    assert start.job.station_name == SETTINGS.system.station_name


def test_a_stale_token_renews_nothing(session: Session) -> None:
    lease = _lease(session)
    for token in (str(uuid.uuid4()), "not-a-uuid"):
        start = begin_step(session, lease.recording_id, SLUG, token, 600, SETTINGS)
        assert not start.renewed
    assert str(_until(session, lease.recording_id)) == "0:01:00"  # the claim's, untouched


def test_reads_the_remotes_mark(session: Session) -> None:
    lease = _lease(session)
    assert remote_state.mark_unavailable(session, SLUG, "connection refused")
    start = begin_step(session, lease.recording_id, SLUG, lease.token, 60, SETTINGS)
    assert start.renewed and start.remote_state.state is State.unavailable
    assert start.remote_state == remote_state.get_state(session, SLUG)


def test_no_job_for_a_deleted_or_gone_recording_or_remote(session: Session) -> None:
    lease = _lease(session)
    session.execute(
        text("UPDATE recordings SET local_deleted = true WHERE id = :r"), {"r": lease.recording_id}
    )
    start = begin_step(session, lease.recording_id, SLUG, lease.token, 60, SETTINGS)
    assert start.renewed and start.job is None
    assert begin_step(session, 10**9, SLUG, lease.token, 60, SETTINGS).job is None
    gone = begin_step(session, lease.recording_id, "no-such-remote", lease.token, 60, SETTINGS)
    assert not gone.renewed and gone.job is None
