"""The pipeline tasks: thin adapters over ``uploader.pipeline.steps`` that translate typed outcomes
into Celery's words (docs/design/0010-layout.md, docs/design/0007-failure-kinds.md).

- connection-level (``RemoteUnavailable``, a full temp dir) → ``self.retry`` with jittered
  exponential backoff, capped far below the visibility timeout and at the poll interval;
  the remote is marked unavailable so its other queued pairs release their leases and end.
- file-level (``FileRejected``) → raised; the chain's errback audits it and counts it toward
  parking.
- config-level (``RemoteMisconfigured``) → raised; the errback marks the remote, releases the
  lease and penalises no file.

Every step first renews the pair's lease: a step whose token no longer matches does nothing
(a redelivered or superseded message is a no-op).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from tasks.app import app
from tasks.runtime import get_runtime
from tasks.topup import maybe_request_topup, read_lease_level
from uploader.completion import audit_logger
from uploader.db.session import get_engine, session_scope
from uploader.errors import (
    FileRejected,
    FlacChanged,
    RemoteMisconfigured,
    RemoteUnavailable,
    SourceMismatch,
    SourceMissing,
    TempSpaceExhausted,
)
from uploader.ledger import evidence, leases
from uploader.ledger.evidence import Encoded
from uploader.ledger.pair_lock import pair_lock
from uploader.log_limiter import log_limited
from uploader.ops import worker_counters
from uploader.pipeline.steps import (
    FlacFile,
    PairJob,
    begin_step,
    checked_flac,
    claim_object,
    cleanup,
    ensure_flac,
    flac_path_for,
    is_local_deleted,
    transfer,
)
from uploader.rclone.client import RcloneClient, RcloneErrorKind, RcloneResult
from uploader.redact import redact
from uploader.remotes import state as remote_state
from uploader.remotes.config import config_fingerprint
from uploader.settings import StationSettings, load_station_settings

log = structlog.get_logger(__name__)
conf = app.conf
TIME_LIMITS = {"time_limit": conf.task_time_limit, "soft_time_limit": conf.task_soft_time_limit}
#: how long an upload step waits for a pair another execution is uploading: a transfer another
#: worker started ahead (two workers on one queue, during a recreate) usually ends within
#: seconds; past this the step ends and the pair waits for its lease to expire
PAIR_BUSY_WAIT_S = 30.0


@dataclass(frozen=True)
class Pair:
    """What travels between the steps: ids, the lease token, the probe flag, small numbers.
    Never a path, never evidence: the steps leave what they proved in PostgreSQL."""

    recording_id: int
    remote_slug: str
    token: str
    probe: bool = False
    size_bytes: int = 0
    duration_s: float = 0.0

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Pair:
        return cls(**{k: v for k, v in payload.items() if k in cls.__dataclass_fields__})

    def payload(self, **changes: Any) -> dict[str, Any]:
        return {**asdict(self), **changes}


def retry_countdown(retries: int, settings: StationSettings, floor_s: float = 0.0) -> float:
    """Exponential backoff with full jitter, capped at the poll interval so a remote that comes
    back is used again within about one poll interval; never below ``floor_s`` (the remote's
    breaker, ``remote_state.unavailable_backoff_s``, for an attempt at the remote)."""
    cap = min(conf.uploader_retry_backoff_max_s, float(settings.uploader.poll_interval))
    jittered = random.uniform(0, min(cap, conf.uploader_retry_backoff_s * (2**retries)))
    return max(floor_s, jittered)


def _proceed(pair: Pair) -> tuple[PairJob | None, StationSettings | None]:
    """Renew the lease and read the job in one short transaction.

    Returns (None, …) when this step must do nothing: a stale token, a remote marked
    unavailable (a non-probe pair releases its lease and ends), or a recording that is gone.
    """
    rt = get_runtime()
    if pair.remote_slug != rt.ctx.remote_slug:
        log.error("pair.wrong_queue", worker_remote=rt.ctx.remote_slug)
        return None, None
    with session_scope() as s:
        settings = rt.station_settings(s)
        start = begin_step(
            s, pair.recording_id, pair.remote_slug, pair.token, conf.uploader_lease_s, settings
        )
        if not start.renewed:
            log.info("pair.lease_lost")
            return None, None
        if start.remote_state.state != "ok" and not pair.probe:
            leases.release(s, pair.recording_id, pair.remote_slug, pair.token)
            log.info("pair.deferred", remote_state=start.remote_state.state)
            return None, None
        job = start.job
        if job is None:
            leases.finish(s, pair.recording_id, pair.remote_slug, pair.token)
            log.info("pair.recording_gone")
        return job, settings


def _end(self: Task, outcome: str = "ended") -> dict[str, Any]:
    """End the pair's chain here (the log line before says why), in a final state that
    Flower shows: SUCCESS with ``{"outcome": …}``. ``Ignore()`` left such a task STARTED in
    Flower for good, dozens of them on a worker that runs one task at a time."""
    self.request.chain = None
    self.request.callbacks = None
    return {"outcome": outcome}


def _bind(pair: Pair, step: str, task: Task) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        remote=pair.remote_slug,
        recording_id=pair.recording_id,
        step=step,
        attempt=task.request.retries,
    )


@app.task(name="uploader.encode", bind=True, max_retries=conf.uploader_max_retries, **TIME_LIMITS)
def encode(
    self: Task, recording_id: int, remote_slug: str, token: str, probe: bool = False
) -> dict[str, Any]:
    """Encode the pair's WAV to FLAC in the worker's temp dir; record the FLAC and its claimed
    object under the lease (``uploader.ledger.evidence``), then start its transfer ahead."""
    pair = Pair(recording_id, remote_slug, token, probe)
    _bind(pair, "encode", self)
    job, settings = _proceed(pair)
    if job is None or settings is None:
        return _end(self)
    encoded = _encode(self, pair, job, settings)
    if encoded is None:
        return _end(self)
    if not probe:  # a probe asks whether the remote is back: its upload step must try afresh
        _start_ahead(job, pair, encoded)
    return pair.payload(size_bytes=encoded.size)


def _encode(self: Task, pair: Pair, job: PairJob, settings: StationSettings) -> Encoded | None:
    """Encode (again) and record the FLAC under the lease; None when the step must end (the
    recording's audio was deleted, or the lease was lost)."""
    ctx = get_runtime().ctx
    try:
        flac = ensure_flac(ctx, job, reuse=False)
    except SourceMissing:
        with session_scope() as s:
            gone = is_local_deleted(s, pair.recording_id)
            if gone:
                leases.finish(s, pair.recording_id, pair.remote_slug, pair.token)
        if gone:
            cleanup(ctx, pair.recording_id)
            get_runtime().stats.record_skipped_missing(job.wav_name)
            return None
        raise
    except TempSpaceExhausted as exc:
        _retry_after_temp_problem(self, pair, settings, exc)
    with session_scope() as s:
        encoded = claim_object(s, job, pair.token, flac)
    if encoded is None:
        cleanup(ctx, pair.recording_id)
        log.info("pair.lease_lost")
    return encoded


def _start_ahead(job: PairJob, pair: Pair, encoded: Encoded) -> None:
    """Hand the FLAC to the worker's rclone daemon now (``uploader.pipeline.transfer_ahead``)."""
    rt = get_runtime()
    try:
        client = rt.client_for(job.remote)
        rt.ahead.start(rt.ctx, job, client, pair.token, encoded)
    except RemoteMisconfigured:  # the upload step reports it
        return
    except Exception as exc:  # an optimisation must never fail the step: the upload step sends
        log.warning("upload.ahead_failed", error=type(exc).__name__)


def _checked(
    self: Task, pair: Pair, job: PairJob, settings: StationSettings
) -> tuple[Encoded, FlacFile] | None:
    """The FLAC this lease recorded, checked on disk; encoded again when it is gone or was
    recorded for another destination (the remote was pointed elsewhere meanwhile)."""
    ctx = get_runtime().ctx
    encoded = job.encoded
    if encoded is not None and encoded.destination == job.destination:
        flac = checked_flac(ctx, job, encoded)  # FlacChanged when it changed
        if flac is not None:
            return encoded, flac
    encoded = _encode(self, pair, job, settings)
    if encoded is None:
        return None
    flac = checked_flac(ctx, job, encoded)
    if flac is None:
        raise FileRejected(
            "the FLAC vanished right after it was encoded", recording_id=pair.recording_id
        )
    return encoded, flac


@app.task(name="uploader.upload", bind=True, max_retries=conf.uploader_max_retries, **TIME_LIMITS)
def upload(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Send the recorded FLAC with rclone, verify it on the remote, record the verified
    transfer under the lease; classify a failure (see the module docstring)."""
    pair = Pair.from_payload(payload)
    _bind(pair, "upload", self)
    rt = get_runtime()
    job, settings = _proceed(pair)
    if job is None or settings is None:
        rt.ahead.discard((pair.recording_id, pair.remote_slug))
        return _end(self)
    client = rt.client_for(job.remote)  # RemoteMisconfigured → errback
    encoded = job.encoded
    result = None
    if encoded is not None and encoded.destination == job.destination:
        # the transfer the encode step started ahead, if it holds (uploader.pipeline.transfer_ahead)
        result = rt.ahead.finish(
            pair.recording_id, pair.remote_slug, pair.token, encoded.remote_path
        )
    else:
        rt.ahead.discard((pair.recording_id, pair.remote_slug))
    if result is None:
        with pair_lock(
            get_engine(), pair.recording_id, pair.remote_slug, wait_s=PAIR_BUSY_WAIT_S
        ) as mine:
            if not mine:  # another execution of this pair is still uploading it
                log.warning("pair.busy")
                return _end(self, "busy")
            try:
                checked = _checked(self, pair, job, settings)
                if checked is None:
                    return _end(self)
                encoded, flac = checked
                result = transfer(client, job, flac, encoded)
            except (TempSpaceExhausted, FlacChanged) as exc:
                _retry_after_temp_problem(self, pair, settings, exc)
    assert encoded is not None
    if result.success:
        return _verified(self, pair, job, settings, client, encoded, result)
    _failed(self, pair, job, settings, encoded, result)
    raise AssertionError("unreachable")  # _failed always raises


def _verified(
    self: Task,
    pair: Pair,
    job: PairJob,
    settings: StationSettings,
    client: RcloneClient,
    encoded: Encoded,
    result: RcloneResult,
) -> dict[str, Any]:
    """Check what landed on the remote (and, where the remote has no md5, what was sent),
    then record it as the evidence the audit step needs."""
    rt = get_runtime()
    verification = client.verify_upload(
        flac_path_for(rt.ctx, job),
        encoded.remote_path,
        size=encoded.size,
        md5=encoded.md5,
        bandwidth_limit=job.bandwidth_limit,
    )
    if not verification.ok:
        failed = RcloneResult(
            False,
            0,
            verification.detail,
            result.duration_s,
            verification.error_kind is RcloneErrorKind.CONNECTION,
            verification.error_kind,
        )
        _failed(self, pair, job, settings, encoded, failed)
    if verification.check != "md5":  # the remote's md5 equal to the recorded one proves the
        try:  # bytes; else bytes swapped in during the transfer would pass a size or sha1 check
            if checked_flac(rt.ctx, job, encoded) is None:
                raise FlacChanged(
                    "the FLAC vanished during its transfer", recording_id=pair.recording_id
                )
        except FlacChanged as exc:
            _retry_after_temp_problem(self, pair, settings, exc)
    with session_scope() as s:
        recorded = evidence.record_verified(
            s, pair.recording_id, pair.remote_slug, pair.token, encoded, verification.check
        )
    if not recorded:
        log.info("pair.lease_lost")
        return _end(self)
    return pair.payload(duration_s=result.duration_s, size_bytes=encoded.size)


def _failed(
    self: Task,
    pair: Pair,
    job: PairJob,
    settings: StationSettings,
    encoded: Encoded,
    result: RcloneResult,
) -> None:
    """Raise what a failed transfer or verification means: a retry (connection), the remote's
    mark (config) or the file's failure (file) — unless the local FLAC changed under rclone
    ("corrupted on transfer", "source file is being updated"): that is the temp folder's
    problem, not the recording's, and never counts toward parking."""
    rt = get_runtime()
    message = result.error_message or "rclone failed"
    kind = str(result.error_kind)
    remote_path = encoded.remote_path
    if kind == "file":
        try:
            if checked_flac(rt.ctx, job, encoded) is None:
                raise FlacChanged(
                    f"the FLAC vanished during its transfer ({message})", pair.recording_id
                )
        except FlacChanged as exc:
            _retry_after_temp_problem(self, pair, settings, exc)
    if kind == "connection":
        with session_scope() as s:
            audit_logger.log_upload_attempt(
                s,
                pair.recording_id,
                pair.remote_slug,
                job.wav_name,
                pair.size_bytes,
                False,
                message,
                duration_s=result.duration_s,
                remote_path=remote_path,
                error_kind="connection",
                attempt_key=f"{pair.token}:{self.request.retries}",
            )
            remote_state.mark_unavailable(s, pair.remote_slug, message)  # logs when it is news
            failures = remote_state.get_state(s, pair.remote_slug).failures
        rt.stats.record_connection_abort(pair.remote_slug)
        floor_s = remote_state.unavailable_backoff_s(failures)
        countdown = retry_countdown(self.request.retries, settings, floor_s)
        log.info("upload.retry_scheduled", countdown_s=round(countdown, 1))
        raise self.retry(exc=RemoteUnavailable(pair.remote_slug, message), countdown=countdown)
    if kind == "config":
        raise RemoteMisconfigured(pair.remote_slug, message)
    with session_scope() as s:  # the breaker counts it: a remote that rejects everything trips
        remote_state.record_failure(s, pair.remote_slug, message)
    raise FileRejected(message, recording_id=pair.recording_id)


def _retry_after_temp_problem(
    self: Task, pair: Pair, settings: StationSettings, exc: Exception
) -> NoReturn:
    """A full or tampered temp folder is not the recording's fault: remove the pair's FLAC and
    retry with backoff (the next attempt encodes again), never counting toward parking."""
    cleanup(get_runtime().ctx, pair.recording_id)
    reason = "temp_space_exhausted" if isinstance(exc, TempSpaceExhausted) else "flac_changed"
    log.warning("upload.retry_scheduled", reason=reason, error=str(exc)[:300])
    raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries, settings)) from exc


@app.task(name="uploader.audit", bind=True, max_retries=conf.uploader_max_retries, **TIME_LIMITS)
def audit(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Write the success row from the transfer the upload step verified and recorded under
    this lease (``uploader.ledger.evidence``), never from the message; flag the recording when every
    required remote has it at its current destination; end the lease; remove the temp FLAC.

    A message whose remote is not this worker's, or whose token holds no verified transfer
    (forged, replayed, misrouted), changes nothing and is logged once.
    """
    pair = Pair.from_payload(payload)
    _bind(pair, "audit", self)
    rt = get_runtime()
    if pair.remote_slug != rt.ctx.remote_slug:
        log.warning("audit.refused", reason="message for another remote's worker",
                    worker_remote=rt.ctx.remote_slug)  # fmt: skip
        return {"outcome": "refused"}
    with session_scope() as s:
        proof = evidence.take_verified(
            s, pair.recording_id, pair.remote_slug, pair.token, conf.uploader_lease_s
        )
        if proof is None:
            log.warning("audit.refused", reason="no verified transfer under this lease")
            return {"outcome": "refused"}
        filename = proof.remote_path.rsplit("/", 1)[-1]
        outcome = audit_logger.log_upload_attempt(
            s,
            pair.recording_id,
            pair.remote_slug,
            filename,
            proof.size,
            True,
            None,
            duration_s=max(0.0, float(pair.duration_s)),
            remote_path=proof.remote_path,
            error_kind="none",
            destination=proof.destination,
            verified_by=proof.verified_by,
            content_md5=proof.md5,
        )
        leases.finish(s, pair.recording_id, pair.remote_slug, pair.token)
        remote_state.mark_ok(s, pair.remote_slug)  # logs remote.recovered
        level = read_lease_level(s, pair.remote_slug)
    cleanup(rt.ctx, pair.recording_id)
    if outcome.inserted:  # audit_logger logs recording.completed when it flags one
        rt.stats.record_upload(pair.remote_slug, filename, proof.size, pair.duration_s)
        worker_counters.record_success(rt.redis, pair.remote_slug, proof.size)
    rt.stats.maybe_emit_summary()
    maybe_request_topup(pair.remote_slug, level)
    return {"outcome": "completed" if outcome.recording_complete else "recorded"}


def _pair_from_request(request: Any) -> Pair | None:
    args = list(getattr(request, "args", None) or [])
    if args and isinstance(args[0], dict):
        return Pair.from_payload(args[0])
    if len(args) >= 3:
        return Pair(
            int(args[0]), str(args[1]), str(args[2]), bool(args[3]) if len(args) > 3 else False
        )
    return None


@app.task(name="uploader.record_failure")
def record_failure(request: Any, exc: BaseException, traceback: Any) -> None:
    """The chain's errback, run in the failing worker after a step failed for good.

    Audits the attempt (idempotent per attempt key), then: file-level → count toward parking;
    config-level → mark the remote misconfigured; connection-level (retries exhausted) →
    release the lease. Never raises: an errback that raises would hide the original failure.
    """
    pair = _pair_from_request(request)
    if pair is None:
        log.error("pair.errback_without_pair", error=type(exc).__name__)
        return
    structlog.contextvars.bind_contextvars(remote=pair.remote_slug, recording_id=pair.recording_id)
    rt = get_runtime()
    retries = int(getattr(request, "retries", 0) or 0)
    message = redact(str(exc) or type(exc).__name__)
    try:
        _record_failure(pair, exc, message, retries)
    except Exception as inner:  # the lease expires and the pair is claimed again
        log.error("pair.errback_failed", error=type(inner).__name__, cause=type(exc).__name__)
    finally:
        rt.ahead.discard((pair.recording_id, pair.remote_slug))
        cleanup(rt.ctx, pair.recording_id)
    rt.stats.record_error(pair.remote_slug, f"recording {pair.recording_id}", message)
    worker_counters.record_failure(rt.redis, pair.remote_slug)
    maybe_request_topup(pair.remote_slug)


def _failure_kind(exc: BaseException, pair: Pair, retries: int) -> tuple[str, str]:
    """(error_kind, attempt_key) of a failure, for its audit row.

    A connection failure's last attempt already audited itself under the same key, so the
    errback's row is a no-op; a time limit counts against the file (it is the file's attempt);
    anything we did not foresee is ``internal`` (retried after a cool-down, no penalty).
    """
    if isinstance(exc, RemoteUnavailable):
        return "connection", f"{pair.token}:{retries}"
    if isinstance(exc, RemoteMisconfigured):
        return "config", f"{pair.token}:config"
    if isinstance(exc, SourceMismatch):  # before FileRejected: it is one, parked at once
        return "source_mismatch", f"{pair.token}:file"
    if isinstance(exc, (FileRejected, SoftTimeLimitExceeded, TimeLimitExceeded)):
        return "file", f"{pair.token}:file"
    return "internal", f"{pair.token}:internal"


#: an unknown failure (a bug, a lost database connection) keeps its pair from being leased
#: again for this long: retried with backoff, never at once, never counted against the file
INTERNAL_COOLDOWN_S = 60.0


def _record_failure(pair: Pair, exc: BaseException, message: str, retries: int) -> None:
    error_kind, attempt_key = _failure_kind(exc, pair, retries)
    with session_scope() as s:
        audit_logger.log_upload_attempt(
            s,
            pair.recording_id,
            pair.remote_slug,
            f"{pair.recording_id}.flac",
            pair.size_bytes,
            False,
            message,
            error_kind=error_kind,
            attempt_key=attempt_key,
        )
        if error_kind == "internal":  # our problem: no penalty, but no tight loop either
            leases.release(
                s, pair.recording_id, pair.remote_slug, pair.token, cooldown_s=INTERNAL_COOLDOWN_S
            )
            remote_state.record_failure(s, pair.remote_slug, message)
            log_limited(log.error, "upload.internal_error", pair.remote_slug,
                        error=type(exc).__name__, reason=message)  # fmt: skip
        elif error_kind == "connection":
            leases.release(s, pair.recording_id, pair.remote_slug, pair.token)
            log_limited(log.warning, "upload.failed", pair.remote_slug, error_kind=error_kind,
                        reason=message, retries=retries)  # fmt: skip
        elif error_kind == "config":
            remote = _remote_fingerprint(s, pair.remote_slug)
            remote_state.mark_misconfigured(s, pair.remote_slug, message, remote)  # logs it
            leases.release(s, pair.recording_id, pair.remote_slug, pair.token)
        else:  # file-level: counts toward parking; a source mismatch parks at once
            settings = load_station_settings(s)
            attempts = 1 if error_kind == "source_mismatch" else settings.uploader.max_file_attempts
            parked = leases.record_file_failure(
                s,
                pair.recording_id,
                pair.remote_slug,
                pair.token,
                message,
                max_file_attempts=attempts,
                park_window_hours=settings.uploader.park_window_hours,
            )
            log_limited(log.warning, "upload.failed", pair.remote_slug, error_kind=error_kind,
                        reason=message, parked=parked)  # fmt: skip


def _remote_fingerprint(session: Any, slug: str) -> str | None:
    from uploader.db.models import StorageRemote

    remote = session.get(StorageRemote, slug)
    if remote is None:
        return None
    return config_fingerprint(remote.type, remote.config or {}, remote.target_path)
