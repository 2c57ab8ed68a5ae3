"""The one chain builder: ``encode → upload → audit`` for one leased pair, with
``queue="upload.<slug>"`` on EVERY signature (chain-level options reach only the first task,
and nobody consumes the default queue — celery-field-notes §2.4) and the errback on all of
them. Messages carry ids, the lease token and the probe flag; never paths or secrets."""

from __future__ import annotations

from celery import chain
from celery.canvas import Signature

from celeryconfig import upload_queue
from uploader.leases import Lease


def build_chain(lease: Lease, *, probe: bool = False) -> Signature:
    from tasks.pipeline import audit, encode, record_failure, upload

    queue = upload_queue(lease.remote_slug)
    steps = [
        encode.si(lease.recording_id, lease.remote_slug, lease.token, probe),
        upload.s(),
        audit.s(),
    ]
    for step in steps:
        step.set(queue=queue).on_error(record_failure.s().set(queue=queue))
    return chain(*steps)
