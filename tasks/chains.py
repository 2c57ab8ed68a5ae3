"""The one chain builder: ``encode → upload → audit`` for one leased pair, with
``queue="upload.<slug>"`` on EVERY signature (chain-level options reach only the first task,
and nobody consumes the default queue — docs/design/0005-celery.md) and the errback on all of
them. Each step carries its priority (``celeryconfig.STEP_PRIORITY``): a pair's upload and audit
overtake the batch's waiting encodes, so pairs drain depth-first. Messages carry ids, the lease
token and the probe flag; never paths or secrets."""

from __future__ import annotations

from celery import chain
from celery.canvas import Signature

from celeryconfig import STEP_PRIORITY, upload_queue
from uploader.ledger.leases import Lease


def build_chain(lease: Lease, *, probe: bool = False) -> Signature:
    from tasks.pipeline import audit, encode, record_failure, upload

    queue = upload_queue(lease.remote_slug)
    steps = [
        encode.si(lease.recording_id, lease.remote_slug, lease.token, probe),
        upload.s(),
        audit.s(),
    ]
    for step, name in zip(steps, ("encode", "upload", "audit"), strict=True):
        errback = record_failure.s().set(queue=queue, priority=STEP_PRIORITY["record_failure"])
        step.set(queue=queue, priority=STEP_PRIORITY[name]).on_error(errback)
    return chain(*steps)
