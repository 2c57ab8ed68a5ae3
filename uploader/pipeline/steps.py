"""The steps of one pair, as plain functions the Celery tasks adapt
(docs/design/0010-layout.md, docs/design/0005-celery.md).

Nothing here holds a database session across a transfer: the task reads a :class:`PairJob`
in a short transaction, encodes and uploads without one, and audits in another. The FLAC of a
pair lives at one place inside the worker's own temp dir (:func:`flac_path_for`); messages
never carry paths.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader import path_builder
from uploader.audio import flac_encoder, source_check
from uploader.db.models import Recording
from uploader.errors import FileRejected, FlacChanged, SourceMissing, UnsafePath
from uploader.ledger import evidence, leases
from uploader.ledger.evidence import Encoded
from uploader.ledger.remote_objects import claim_path
from uploader.rclone.client import PendingUpload, RcloneClient, RcloneResult
from uploader.remotes import destination
from uploader.remotes import state as remote_state
from uploader.remotes.state import RemoteState
from uploader.settings import StationSettings


@dataclass(frozen=True)
class WorkerContext:
    """What one worker process knows about itself."""

    remote_slug: str
    workspace_root: Path
    temp_dir: Path
    flac_engine: str | None = None


@dataclass(frozen=True)
class RemoteSnapshot:
    slug: str
    type: str
    config: dict[str, Any] = field(repr=False)
    target_path: str | None
    is_active: bool


@dataclass(frozen=True)
class PairJob:
    """Everything the transfer needs, read in one short transaction."""

    recording_id: int
    file_raw: str
    sensor_id: str
    time: datetime
    remote: RemoteSnapshot
    station_name: str
    bandwidth_limit: str
    #: where the remote's bytes land now (``uploader.remotes.destination``)
    destination: str = ""
    #: what the encode step recorded under this lease (None: nothing yet, or another lease)
    encoded: Encoded | None = None
    #: what the index row says about the WAV (``uploader.audio.source_check``); None: not checked
    expect: source_check.Expectation | None = None

    @property
    def wav_name(self) -> str:
        return PurePosixPath(self.file_raw).name


@dataclass(frozen=True)
class FlacFile:
    path: Path
    size_bytes: int
    md5: str


def _job_from_row(row: Any, settings: StationSettings) -> PairJob | None:
    """None when the recording is gone or ``local_deleted`` (the pair is simply done with), or
    the remote is gone."""
    if row is None or row.id is None or row.local_deleted or row.slug is None:
        return None
    return PairJob(
        recording_id=row.id,
        file_raw=row.file_raw,
        sensor_id=row.sensor_id,
        time=row.time,
        remote=RemoteSnapshot(
            row.slug,
            row.type,
            dict(row.config or {}),
            row.target_path,
            bool(row.is_active),
        ),
        station_name=settings.system.station_name,
        bandwidth_limit=settings.uploader.bandwidth_limit,
        destination=destination.destination_of(row.type, dict(row.config or {}), row.target_path),
        encoded=evidence.encoded_from_row(row),
        expect=source_check.Expectation(
            float(row.duration), int(row.filesize_raw), row.file_processed is not None
        ),
    )


@dataclass(frozen=True)
class StepStart:
    """What a pipeline step learns before it acts (see :func:`begin_step`)."""

    renewed: bool  # False: a stale token, the step must do nothing
    remote_state: RemoteState
    job: PairJob | None  # None: the recording or the remote is gone, or local_deleted


# The lease renewal (leases.RENEW_SQL, a data-modifying CTE), the remote's state and the job in
# one round trip: every step of every pair begins with them (3 statements before)
_BEGIN = text(
    f"""
    WITH renewed AS ({leases.RENEW_SQL})
    SELECT EXISTS (SELECT 1 FROM renewed) AS renewed,
           {remote_state.STATE_COLUMNS},
           r.id, r.file_raw, r.sensor_id, r.time, r.local_deleted, r.duration, r.filesize_raw,
           r.file_processed,
           s.slug, s.type, s.config, s.target_path, s.is_active,
           {evidence.ENCODED_COLUMNS}
    FROM (SELECT 1) AS one
    LEFT JOIN remote_status st ON st.remote_slug = :slug
    LEFT JOIN recordings r ON r.id = :rid
    LEFT JOIN storage_remotes s ON s.slug = :slug
    {evidence.ENCODED_JOIN}
    """
)


def begin_step(
    session: Session,
    recording_id: int,
    remote_slug: str,
    token: str,
    lease_s: float,
    settings: StationSettings,
) -> StepStart:
    """Renew the pair's lease (as ``leases.renew``), and read the remote's state (as
    ``remote_state.get_state``) and the job, in one statement."""
    params = leases.renew_params(recording_id, remote_slug, token, lease_s)
    if params is None:
        return StepStart(False, remote_state.from_row(None), None)
    row = session.execute(_BEGIN, params).one()
    state = remote_state.from_row(row)
    return StepStart(bool(row.renewed), state, _job_from_row(row, settings))


def is_local_deleted(session: Session, recording_id: int) -> bool:
    """Re-read the flag (the Janitor may have deleted the WAV since the job was read)."""
    rec = session.get(Recording, recording_id, populate_existing=True)
    return rec is None or rec.local_deleted


def flac_dir_for(ctx: WorkerContext, recording_id: int) -> Path:
    return ctx.temp_dir / str(recording_id)


def flac_path_for(ctx: WorkerContext, job: PairJob) -> Path:
    return flac_dir_for(ctx, job.recording_id) / (PurePosixPath(job.wav_name).stem + ".flac")


def ensure_flac(
    ctx: WorkerContext, job: PairJob, *, reuse: bool = True, checksum: bool = True
) -> FlacFile:
    """Encode the pair's WAV into the worker's temp dir (reusing a FLAC already there).
    ``checksum=False`` skips the MD5 (``md5=""``) where nobody reads it.

    Raises :class:`UnsafePath` for a ``file_raw`` outside the workspace, :class:`SourceMissing`
    for a missing WAV (the caller checks ``local_deleted``), :class:`FlacEncodingError`.
    """
    target = flac_path_for(ctx, job)
    if not (reuse and target.is_file() and target.stat().st_size > 0):
        wav = path_builder.resolve_local_path(ctx.workspace_root, job.file_raw)
        try:
            present = wav.is_file()
        except OSError as exc:  # a name too long (ENAMETOOLONG), a component not a folder …
            raise UnsafePath(
                f"file_raw {job.file_raw[:120]!r} cannot be looked up: {exc.strerror}; fix "
                "recordings.file_raw",
                recording_id=job.recording_id,
            ) from exc
        if not present:
            raise SourceMissing(f"WAV not found: {job.file_raw}", recording_id=job.recording_id)
        out_dir = flac_dir_for(ctx, job.recording_id)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        produced = flac_encoder.encode_checked(
            wav,
            out_dir,
            engine=ctx.flac_engine,
            expect=job.expect,
            recording_id=job.recording_id,
        )
        if produced.path != target:
            produced.path.replace(target)
        return FlacFile(target, produced.size_bytes, produced.md5)
    md5 = flac_encoder.file_md5(target) if checksum else ""
    return FlacFile(target, target.stat().st_size, md5)


def remote_path_for(job: PairJob) -> str:
    """The pair's usual object path (``path_builder``); :func:`claim_object` may give another."""
    return path_builder.build_remote_path(
        job.station_name, job.sensor_id, job.time, job.wav_name, job.remote.target_path
    )


def claim_object(session: Session, job: PairJob, token: str, flac: FlacFile) -> Encoded | None:
    """Claim the pair's object at the remote's current destination and record the FLAC under
    the lease (``uploader.ledger.evidence``); None when the lease is lost. The caller commits before
    anything is transferred."""
    remote_path = claim_path(
        session,
        recording_id=job.recording_id,
        remote_slug=job.remote.slug,
        destination=job.destination,
        usual_path=remote_path_for(job),
    )
    encoded = Encoded(flac.size_bytes, flac.md5, remote_path, job.destination)
    recorded = evidence.record_encoded(
        session,
        job.recording_id,
        job.remote.slug,
        token,
        size=encoded.size,
        md5=encoded.md5,
        remote_path=encoded.remote_path,
        destination=encoded.destination,
    )
    return encoded if recorded else None


def checked_flac(
    ctx: WorkerContext, job: PairJob, encoded: Encoded, *, hashed: bool = True
) -> FlacFile | None:
    """The pair's FLAC in the worker's own temp dir, exactly as the encode step recorded it
    (size, and md5 unless ``hashed=False``: the encode step's own start of the transfer, a
    moment after it hashed the file; what is sent is verified afterwards in any case).

    None when it is gone (the caller encodes again). Raises :class:`FlacChanged` when it
    differs in size or md5 from the record (it is removed first: something other than the
    encode step wrote it), :class:`FileRejected` when it lies outside the temp dir.
    """
    path = flac_path_for(ctx, job)
    if not path.resolve().is_relative_to(ctx.temp_dir.resolve()):
        raise FileRejected("FLAC outside the worker's temp dir", recording_id=job.recording_id)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if not hashed and size == encoded.size:
        return FlacFile(path, size, encoded.md5)
    md5 = flac_encoder.file_md5(path) if size == encoded.size else ""
    if size != encoded.size or md5 != encoded.md5:
        cleanup(ctx, job.recording_id)
        raise FlacChanged(
            f"the FLAC in the temp folder changed after the encode step (size {size}, "
            f"recorded {encoded.size}; md5 {'differs' if md5 else 'not compared'}): it was "
            "removed and is encoded again at the next attempt. Check who else writes to "
            f"{ctx.temp_dir}",
            recording_id=job.recording_id,
        )
    return FlacFile(path, size, md5)


def transfer(client: RcloneClient, job: PairJob, flac: FlacFile, encoded: Encoded) -> RcloneResult:
    """Upload the checked FLAC to its claimed object."""
    return client.upload_file(flac.path, encoded.remote_path, job.bandwidth_limit)


def start_transfer(
    ctx: WorkerContext, job: PairJob, client: RcloneClient, encoded: Encoded
) -> PendingUpload | None:
    """Start the pair's upload now, without waiting (rcd only; None when it cannot be started
    here — the upload step then runs its own). Only the FLAC the encode step recorded."""
    flac = checked_flac(ctx, job, encoded, hashed=False)
    if flac is None:
        return None
    return client.begin_upload(flac.path, encoded.remote_path, job.bandwidth_limit)


def cleanup(ctx: WorkerContext, recording_id: int) -> None:
    """Remove the pair's temp FLAC folder (every outcome ends here)."""
    shutil.rmtree(flac_dir_for(ctx, recording_id), ignore_errors=True)
