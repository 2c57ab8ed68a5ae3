"""Uploads started ahead of their step, so a worker encodes the next pair while its rclone
daemon still sends the previous one.

A pair's steps run one after another in one pool process (prefork ``-c 1``), and the queue is
first in, first out, so the encode steps of a batch run before its upload steps. Without
this, the daemon's transfer (and the remote's work) sits on the pool process's critical path
although it needs no CPU of that process; started at the end of the encode step, it overlaps
with the next encodes, and the upload step mostly finds it done (bench/README.md has the
figures).

The upload step stays the one that decides: it renews the lease, takes the pair lock, then
waits for the transfer started here (within the same hard limit, counted from its start) and
classifies the outcome exactly as its own transfer; if the transfer no longer holds (the
daemon was restarted, the FLAC changed) it runs a new one. A transfer whose upload step never
comes (lease lost, remote deferred, worker shutting down) is stopped. Only the rcd transport
can do this; with ``cli`` nothing starts ahead.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from uploader.pipeline import PairJob, WorkerContext, start_transfer
from uploader.rclone_client import PendingUpload, RcloneClient

log = structlog.get_logger(__name__)

#: transfers started ahead and still running: more would only queue up in the daemon (the
#: remote's bandwidth is shared) and age against their hard limits
MAX_RUNNING = 2
#: entries kept for upload steps still to come (a batch); older ones are stopped and dropped
MAX_KEPT = 256

PairKey = tuple[int, str]


class TransfersAhead:
    """The process's transfers started ahead, keyed by pair and lease token."""

    def __init__(self) -> None:
        self._pending: OrderedDict[PairKey, tuple[str, RcloneClient, PendingUpload]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, ctx: WorkerContext, job: PairJob, client: RcloneClient, token: str) -> bool:
        """Start the pair's transfer unless ``MAX_RUNNING`` are still running; True when one
        was started. Never raises for a transfer that cannot start (the upload step will run
        its own and report why)."""
        if self.running() >= MAX_RUNNING:
            return False
        key = (job.recording_id, job.remote.slug)
        self.discard(key)
        try:
            pending = start_transfer(ctx, job, client)
        except Exception as exc:  # the upload step meets the same problem and classifies it
            log.debug("upload.ahead_not_started", error=type(exc).__name__)
            return False
        if pending is None:
            return False
        self._pending[key] = (token, client, pending)
        while len(self._pending) > MAX_KEPT:
            self.discard(next(iter(self._pending)))
        return True

    def take(self, recording_id: int, remote_slug: str, token: str) -> PendingUpload | None:
        """The pair's transfer started ahead under this lease token, handed over to the
        upload step (None if there is none; one under another token is stopped)."""
        entry = self._pending.pop((recording_id, remote_slug), None)
        if entry is None:
            return None
        owner, client, pending = entry
        if owner != token:
            client.abandon_upload(pending)
            return None
        return pending

    def discard(self, key: PairKey) -> None:
        """Stop and forget the pair's transfer started ahead, if any."""
        entry = self._pending.pop(key, None)
        if entry is not None:
            entry[1].abandon_upload(entry[2])

    def running(self) -> int:
        """How many transfers started ahead are still running (asks the daemon about each
        one not yet seen finished)."""
        return sum(1 for _, client, p in self._pending.values() if client.upload_running(p))

    def close(self) -> None:
        """Stop them all (the worker process is shutting down)."""
        for key in list(self._pending):
            self.discard(key)
