"""Every error the uploader raises, and what the operator should do about it.

::

    UploaderError
     ├── SettingsInvalid          a system_config key has an invalid field
     ├── SchemaError              the database is not ours to use (yet)
     │    ├── SchemaOutdated      run `silvasonic-uploader db upgrade`
     │    └── IncompatibleDatabase  a v0.8-style single-target database
     ├── RemoteMisconfigured      config-level: fix the remote (credentials, bucket, options)
     │    ├── RemoteConfigInvalid   the stored config fails validation or the allowlist
     │    └── SecretUnavailable     an `enc:` value cannot be decrypted (key missing or wrong)
     ├── RemoteUnavailable        connection-level: retried by Celery; nothing to do unless it lasts
     ├── TempSpaceExhausted       the worker's temp folder is full: free it; no file is penalised
     ├── FlacChanged              the temp FLAC is not what the encode step recorded: re-encoded
     ├── TempDirUnsafe            another user owns or may write the worker's temp folder
     └── FileRejected             file-level: counts toward parking this pair
          ├── FlacEncodingError   the WAV could not be encoded losslessly
          ├── UnsafePath          file_raw escapes the workspace root
          ├── SourceMissing       the WAV is gone and the recording is not local_deleted
          └── SourceMismatch      the WAV disagrees with its header or its index row: parked

Only ``rclone.client`` maps rclone failures onto these, and only ``flac_encoder`` maps ffmpeg
and libFLAC failures. No instance ever carries a secret: messages pass through
``uploader.redact`` where they quote foreign output.

Every instance survives Celery with its type and fields, whatever the serialiser: its
``args`` are exactly its constructor's arguments (``cls(*exc.args)`` rebuilds it, which is
what both pickle and Celery's JSON exception format do), and its message is built by
``__str__``. Without that, Celery could not rebuild ``RemoteMisconfigured(slug, reason)``
from a one-element ``args``, handed the errback the nearest base class that it could rebuild
(``UploaderError``), and the failure lost its kind: no audit row, no mark, the pair leased
again at once — a tight loop against a remote with a wrong password.
"""

from __future__ import annotations


class UploaderError(Exception):
    """Base of everything the uploader raises on purpose."""

    #: the message, when a subclass builds one from its fields (``args`` hold the fields)
    message: str | None = None

    def __str__(self) -> str:
        return self.message if self.message is not None else super().__str__()


class SettingsInvalid(UploaderError):
    """Fix the named field of the named ``system_config`` key (the web UI or SQL)."""

    def __init__(self, key: str, field: str, reason: str) -> None:
        super().__init__(key, field, reason)
        self.key, self.field, self.reason = key, field, reason
        self.message = (
            f"system_config[{key!r}] field {field!r} is invalid: {reason}. "
            f"Correct it (or delete the field to use its default)."
        )


class SchemaError(UploaderError):
    """The database schema does not fit this version of the uploader."""


class SchemaOutdated(SchemaError):
    """Run ``silvasonic-uploader db upgrade`` against this database, then start again."""

    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(current, head)
        self.current, self.head = current, head
        self.message = (
            f"database schema is at {current or 'nothing'}, this uploader needs {head}: "
            f"run `silvasonic-uploader db upgrade` first"
        )


class IncompatibleDatabase(SchemaError):
    """A single-target (v0.8-style) Silvasonic database; see the message for the way out."""


class RemoteMisconfigured(UploaderError):
    """Configuration-level: fix the remote's settings; no file is penalised meanwhile."""

    def __init__(self, remote_slug: str, reason: str) -> None:
        super().__init__(remote_slug, reason)
        self.remote_slug, self.reason = remote_slug, reason
        self.message = f"remote {remote_slug!r} is misconfigured: {reason}"


class RemoteConfigInvalid(RemoteMisconfigured):
    """Edit ``storage_remotes.config`` (or use ``remotes set``) as the message says."""


class SecretUnavailable(RemoteMisconfigured):
    """Set ``SILVASONIC_ENCRYPTION_KEY`` to the key the secret was encrypted with."""


class RemoteUnavailable(UploaderError):
    """Connection-level: the remote did not answer; Celery retries, nothing is penalised."""

    def __init__(self, remote_slug: str, reason: str) -> None:
        super().__init__(remote_slug, reason)
        self.remote_slug, self.reason = remote_slug, reason
        self.message = f"remote {remote_slug!r} is unavailable: {reason}"


class FileRejected(UploaderError):
    """File-level: this recording failed on its own; after ``max_file_attempts`` it is parked."""

    def __init__(self, reason: str, recording_id: int | None = None) -> None:
        super().__init__(reason, recording_id)
        self.reason, self.recording_id = reason, recording_id
        where = f"recording {recording_id}: " if recording_id is not None else ""
        self.message = f"{where}{reason}"


class FlacEncodingError(FileRejected):
    """Check the WAV (``ffprobe``/``soxi``): it is corrupt, unreadable or not PCM audio."""


class UnsafePath(FileRejected):
    """``recordings.file_raw`` points outside the workspace root; fix the row."""


class SourceMissing(FileRejected):
    """The WAV is gone but the recording is not ``local_deleted``: check the Janitor and disk."""


class SourceMismatch(FileRejected):
    """The WAV holds less (or other) audio than its header or ``recordings.duration`` /
    ``filesize_raw`` promise: check the recorder and the indexer. Parked at once."""


class FlacChanged(UploaderError):
    """The FLAC in the worker's temp folder is not what the encode step recorded (size or
    md5): something else writes there. It is removed and encoded again; not the recording's
    fault, so it never counts toward parking. Make the temp folder private to the worker."""

    def __init__(self, reason: str, recording_id: int | None = None) -> None:
        super().__init__(reason, recording_id)
        self.reason, self.recording_id = reason, recording_id
        self.message = f"recording {recording_id}: {reason}" if recording_id else reason


class TempDirUnsafe(UploaderError):
    """Another user owns, or may write into, the worker's temp folder (or a folder above it):
    remove it, or point ``SILVASONIC_TEMP_DIR`` at a folder of the worker's own."""

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(directory, reason)
        self.directory, self.reason = directory, reason
        self.message = (
            f"temp folder {directory!r} is not private to this worker: {reason}. Remove it, or "
            "set SILVASONIC_TEMP_DIR to a folder only the worker's user can write"
        )


class TempSpaceExhausted(UploaderError):
    """The worker's temp folder is full (ENOSPC/EDQUOT) while a FLAC is written.

    Not the recording's fault, so it never counts toward parking: the pair is retried later.
    The operator frees space in (or enlarges) the worker's temp folder, and looks for what
    filled it: stray ``*.partial.flac`` files or FLACs whose upload never finished.
    """

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(directory, reason)
        self.directory, self.reason = directory, reason
        self.message = f"temp folder {directory!r} is full: {reason}"
