"""The chain builder: every signature carries the remote's queue and the errback; messages
carry ids, the lease token and the probe flag only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.chains import build_chain
from uploader.ledger.leases import Lease


@pytest.fixture
def lease() -> Lease:
    return Lease(
        recording_id=42,
        remote_slug="nextcloud",
        token="t-123",
        lease_until=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_every_signature_routes_to_the_remote_queue(lease: Lease) -> None:
    steps = build_chain(lease).tasks
    assert [s.task for s in steps] == ["uploader.encode", "uploader.upload", "uploader.audit"]
    assert {s.options.get("queue") for s in steps} == {"upload.nextcloud"}


def test_errback_on_every_step_in_the_same_queue(lease: Lease) -> None:
    for step in build_chain(lease).tasks:
        errbacks = step.options.get("link_error") or []
        assert [e["task"] for e in errbacks] == ["uploader.record_failure"]
        assert errbacks[0]["options"]["queue"] == "upload.nextcloud"


def test_message_carries_ids_token_and_probe_only(lease: Lease) -> None:
    first = build_chain(lease, probe=True).tasks[0]
    assert tuple(first.args) == (42, "nextcloud", "t-123", True)
    assert first.immutable  # the first step takes no result from anywhere


def test_retry_countdown_is_capped_by_poll_interval() -> None:
    from tasks.pipeline import retry_countdown
    from uploader.settings import StationSettings, SystemSettings, UploaderSettings

    settings = StationSettings(uploader=UploaderSettings(poll_interval=3), system=SystemSettings())
    assert all(0 <= retry_countdown(n, settings) <= 3 for n in range(20))


def test_a_pairs_later_steps_overtake_waiting_encodes(lease: Lease) -> None:
    """Depth-first: Redis serves the lower number first, so upload, audit and the errback
    must be more urgent than encode, and both must be lists the transport actually keeps."""
    from celeryconfig import broker_transport_options

    steps = build_chain(lease).tasks
    encode, upload, audit = (s.options["priority"] for s in steps)
    assert upload < encode and audit < encode
    errbacks = [s.options["link_error"][0]["options"]["priority"] for s in steps]
    assert all(p < encode for p in errbacks)
    assert {encode, upload, audit, *errbacks} <= set(broker_transport_options["priority_steps"])
