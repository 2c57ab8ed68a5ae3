"""Uploads started ahead of their step, so a worker encodes the next pair while its rclone
daemon still sends the previous one.

A pair's steps run one after another in one pool process (prefork ``-c 1``), and the queue is
first in, first out, so the encode steps of a batch run before its upload steps. Without
this, the daemon's transfer (and the remote's work) sits on the pool process's critical path
although it needs no CPU of that process; started at the end of the encode step, it overlaps
with the next encodes, and the upload step mostly finds it done (bench/README.md has the
figures).

The rules that keep it safe:

- The pair lock (``uploader.ledger.pair_lock``) is held from the transfer's start until it is seen
  finished, so no other execution uploads the pair meanwhile — e.g. a second worker on the
  queue during a recreate, which may get this pair's upload step. A pair whose lock is taken
  is not started ahead.
- The upload step stays the one that decides: it renews the lease, then waits for the
  transfer started here (within the same hard limit, counted from its start) and classifies
  the outcome exactly as its own transfer. One started under another lease token or to
  another path, or one that no longer holds (the daemon was restarted, the FLAC changed), is
  stopped and the step runs its own transfer under the pair lock.
- A transfer whose upload step never comes (lease lost, remote deferred, another worker took
  the step, shutdown) is stopped or forgotten; its lock goes when it is seen finished (a
  watcher thread looks every ``WATCH_S`` while any is held), at the latest when the process
  ends.

Only the rcd transport can do this; with ``cli`` nothing starts ahead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine

from uploader.ledger.evidence import Encoded
from uploader.ledger.pair_lock import PairLocks
from uploader.pipeline.steps import PairJob, WorkerContext, start_transfer
from uploader.rclone.client import PendingUpload, RcloneClient, RcloneResult

log = structlog.get_logger(__name__)

#: transfers started ahead and still running: more would only queue up in the daemon (the
#: remote's bandwidth is shared) and age against their hard limits
MAX_RUNNING = 2
#: entries kept for upload steps still to come (a batch); older ones are stopped and dropped
MAX_KEPT = 256
#: how often the watcher looks for finished transfers whose lock it can release
WATCH_S = 0.5

PairKey = tuple[int, str]


@dataclass
class _Entry:
    token: str
    client: RcloneClient
    pending: PendingUpload
    locked: bool  # this process holds the pair lock for it


class TransfersAhead:
    """The process's transfers started ahead, keyed by pair, with their pair locks."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine
        self._locks: PairLocks | None = None
        self._pending: OrderedDict[PairKey, _Entry] = OrderedDict()
        self._mutex = threading.RLock()
        self._watcher: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def start(
        self,
        ctx: WorkerContext,
        job: PairJob,
        client: RcloneClient,
        token: str,
        encoded: Encoded,
    ) -> bool:
        """Start the pair's transfer unless ``MAX_RUNNING`` are still running or another
        execution holds the pair; True when one was started. Never raises for a transfer that
        cannot start (the upload step will run its own and report why)."""
        key = (job.recording_id, job.remote.slug)
        with self._mutex:
            if self._settle() >= MAX_RUNNING:
                return False
            self._discard(key)
            locks = self._pair_locks()
            try:
                if not locks.acquire(*key):
                    return False
            except Exception as exc:  # the database: the upload step meets it too
                log.debug("upload.ahead_not_started", error=type(exc).__name__)
                return False
            try:
                pending = start_transfer(ctx, job, client, encoded)
            except Exception as exc:  # the upload step meets the same problem and classifies it
                log.debug("upload.ahead_not_started", error=type(exc).__name__)
                pending = None
            if pending is None:
                self._release(key)
                return False
            self._pending[key] = _Entry(token, client, pending, locked=True)
            while len(self._pending) > MAX_KEPT:
                self._discard(next(iter(self._pending)))
            self._watch()
            return True

    def finish(
        self, recording_id: int, remote_slug: str, token: str, remote_path: str
    ) -> RcloneResult | None:
        """Wait for the pair's transfer started ahead and release its lock: its result, as
        ``RcloneClient.upload_file`` would have returned it. None when there is none, or it
        was started under another lease token or to another path, or no longer holds: then
        the caller runs its own transfer, under the pair lock."""
        key = (recording_id, remote_slug)
        with self._mutex:
            entry = self._pending.pop(key, None)
        if entry is None:
            return None
        try:
            if entry.token != token or entry.pending.remote_path != remote_path:
                entry.client.abandon_upload(entry.pending)
                return None
            return entry.client.finish_upload(entry.pending)  # waits, outside the mutex
        finally:
            if entry.locked:
                self._release(key)

    def discard(self, key: PairKey) -> None:
        """Stop and forget the pair's transfer started ahead, if any."""
        with self._mutex:
            self._discard(key)

    def running(self) -> int:
        """How many transfers started ahead are still running (releasing the locks of those
        seen finished)."""
        with self._mutex:
            return self._settle()

    def close(self) -> None:
        """Stop them all and release every lock (the worker process is shutting down)."""
        with self._mutex:
            for key in list(self._pending):
                self._discard(key)
            if self._locks is not None:
                self._locks.close()

    # -- under the mutex ----------------------------------------------------------------------

    def _settle(self) -> int:
        """Release the lock of every transfer seen finished; how many still run."""
        running = 0
        for key, entry in self._pending.items():
            if not entry.locked:
                continue
            if entry.client.upload_running(entry.pending):
                running += 1
            else:
                entry.locked = False
                self._release(key)
        return running

    def _discard(self, key: PairKey) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            entry.client.abandon_upload(entry.pending)
            if entry.locked:
                self._release(key)

    def _release(self, key: PairKey) -> None:
        try:
            self._pair_locks().release(*key)
        except Exception as exc:  # the connection died, and the lock with it
            log.warning("upload.ahead_unlock_failed", error=type(exc).__name__)

    def _pair_locks(self) -> PairLocks:
        if self._locks is None:
            self._locks = PairLocks(self._engine())
        return self._locks

    def _watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(
                target=self._watch_loop, name="transfers-ahead", daemon=True
            )
            self._watcher.start()

    def _watch_loop(self) -> None:
        """Release the locks of finished transfers whose upload step has not come (yet): an
        idle worker must not keep a pair locked that another worker could upload."""
        while True:
            time.sleep(WATCH_S)
            with self._mutex:
                try:
                    self._settle()
                except Exception as exc:
                    log.warning("upload.ahead_watch_failed", error=type(exc).__name__)
                if not any(e.locked for e in self._pending.values()):
                    self._watcher = None
                    return
