"""One long-lived ``rclone rcd`` per worker process and remote: the fast transport.

A process per file costs rclone ~40-50 ms of start-up; one daemon costs 2-6 ms per file
(docs/design/0006-transports.md). Part of the rclone client (``uploader.rclone.client`` builds
the flags and the environment and classifies what comes back); this module knows the rc protocol:
``operations/copyfile`` as an async job, ``job/status`` polling, ``job/stop``.

Security: the daemon listens only on a Unix socket inside a private ``0700`` directory (the
socket itself ``0600``), and on top of that asks for a random user and password that reach it
through its environment (``RCLONE_RC_USER``/``RCLONE_RC_PASS``), never its argv. The remote's
credentials also reach it only through its environment. Nobody but our own user can call
``config/dump`` or anything else on it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from uploader.rclone.process_group import kill_group, spawn
from uploader.redact import redact

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 15.0
# one rc request (they are all quick: the transfer itself runs as an async job)
RC_REQUEST_TIMEOUT_S = 10.0
# job/status polling: a small file on loopback finishes in 1-5 ms, a slow link takes minutes.
# Each poll is one 0.2 ms round trip; 1 ms growing by 1.3 measured 6.7 ms/file for 100 KiB to
# a local remote against 8.8 ms for 2 ms growing by 1.5 (bench/rclone_transport.py, loaded box)
POLL_FIRST_S = 0.001
POLL_FACTOR = 1.3
POLL_MAX_S = 0.1
# after job/stop, how long the job gets to report itself finished before we kill the daemon
STOP_WAIT_S = 5.0
# the daemon's stderr log is truncated past this size (it is for diagnosis, not a record)
LOG_MAX_BYTES = 1 << 20


class DaemonUnavailable(RuntimeError):
    """The daemon could not be started or stopped answering; the message is redacted."""


class RcCallFailed(RuntimeError):
    """An rc method answered with an error (HTTP status != 200)."""

    def __init__(self, method: str, status: int, error: str) -> None:
        self.method, self.status, self.error = method, status, error
        super().__init__(f"rc {method} failed ({status}): {error}")


@dataclass(frozen=True)
class JobOutcome:
    """What became of one ``operations/copyfile`` job."""

    success: bool
    error: str  # rclone's error text (unredacted: the client redacts before keeping it)
    timed_out: bool = False  # our hard limit fired and the job was stopped
    daemon_lost: bool = False  # the daemon died or stopped answering meanwhile


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class RcloneDaemon:
    """An ``rclone rcd`` child with its private socket.

    Started by :meth:`start` (the client does it lazily, on the first upload). :meth:`close`
    kills it and is registered with ``atexit``; only the process that started it may kill it
    (after a fork the child leaves its parent's daemon alone).
    """

    def __init__(
        self,
        binary: str,
        flags: Sequence[str],
        env: Mapping[str, str],
        *,
        fingerprint: str = "",
        secrets_to_mask: frozenset[str] = frozenset(),
        label: str = "",
    ) -> None:
        self.binary = binary
        self.flags = tuple(flags)
        self.fingerprint = fingerprint
        self.label = label
        self._env = dict(env)
        self._user = "rc-" + secrets.token_hex(8)
        self._password = secrets.token_urlsafe(24)
        self._secrets = secrets_to_mask | {self._password}
        self._auth = "Basic " + base64.b64encode(f"{self._user}:{self._password}".encode()).decode()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: _UnixHTTPConnection | None = None
        self._lock = threading.Lock()
        self.owner_pid = os.getpid()
        #: the id of the most recent copyfile job (for diagnosis and tests)
        self.last_jobid: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path | None:
        return self._dir / "rc.sock" if self._dir else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path | None:
        return self._dir / "rcd.log" if self._dir else None

    def alive(self) -> bool:
        return (
            self._proc is not None and self._proc.poll() is None and os.getpid() == self.owner_pid
        )

    def start(self) -> None:
        """Start the daemon and wait until it answers; raises :class:`DaemonUnavailable`
        (with the redacted tail of its log) if it does not within ``START_TIMEOUT_S``, and
        ``FileNotFoundError`` if the binary is missing."""
        if self.alive():
            return
        self._dir = Path(tempfile.mkdtemp(prefix="silvasonic-rcd-"))  # mode 0700
        sock = self._dir / "rc.sock"
        argv = [self.binary, "rcd", "--rc-addr", f"unix://{sock}", *self.flags]
        env = {**self._env, "RCLONE_RC_USER": self._user, "RCLONE_RC_PASS": self._password}
        with open(self._dir / "rcd.log", "ab") as log_file:
            try:
                self._proc = spawn(argv, env, stdout=subprocess.DEVNULL, stderr=log_file)
            except OSError:
                self._cleanup_dir()
                raise
        self.owner_pid = os.getpid()
        atexit.register(self.close)
        started = time.monotonic()
        deadline = started + START_TIMEOUT_S
        version = ""
        while True:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise DaemonUnavailable(f"rclone rcd exited at start: {tail}")
            if sock.exists():
                try:
                    version = str(self.rc("core/version").get("version", ""))
                    break
                except (DaemonUnavailable, RcCallFailed):
                    pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.close()
                raise DaemonUnavailable(
                    f"rclone rcd did not answer within {START_TIMEOUT_S}s: {tail}"
                )
            time.sleep(0.005)
        # the directory already keeps others out; a 0600 socket says so twice
        os.chmod(sock, 0o600)
        log.info(
            "rclone.daemon_started",
            remote=self.label,
            pid=self._proc.pid,
            version=version,
            start_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def close(self) -> None:
        """Kill the daemon (its whole process group) and remove its private directory.

        Idempotent. In a forked child that did not start it, only forgets it."""
        atexit.unregister(self.close)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        proc, self._proc = self._proc, None
        if proc is not None and os.getpid() == self.owner_pid:
            code = kill_group(proc, grace_s=1.0)
            log.info("rclone.daemon_stopped", remote=self.label, pid=proc.pid, exit_code=code)
            self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The end of the daemon's log, redacted (for error messages)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
        return redact(text.strip(), self._secrets)

    def _trim_log(self) -> None:
        path = self.log_path
        # rclone writes with O_APPEND (we opened it "ab"), so a truncate just restarts the file
        with contextlib.suppress(OSError):
            if path is not None and path.stat().st_size > LOG_MAX_BYTES:
                os.truncate(path, 0)

    # -- the rc protocol ---------------------------------------------------------------------

    def rc(
        self, method: str, timeout_s: float = RC_REQUEST_TIMEOUT_S, **params: Any
    ) -> dict[str, Any]:
        """Call one rc method; raises :class:`RcCallFailed` when rclone answers with an error
        and :class:`DaemonUnavailable` when it does not answer (one reconnect is tried)."""
        path = self.socket_path
        if path is None or self._proc is None:
            raise DaemonUnavailable("rclone rcd is not running")
        body = json.dumps(params).encode()
        headers = {"Content-Type": "application/json", "Authorization": self._auth}
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = _UnixHTTPConnection(str(path), timeout_s)
                self._conn.timeout = timeout_s
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout_s)
                try:
                    self._conn.request("POST", "/" + method, body, headers)
                    resp = self._conn.getresponse()
                    raw = resp.read()
                    status = resp.status
                    break
                except BaseException as exc:
                    # a half-read response poisons the connection: drop it whatever happened
                    self._conn.close()
                    self._conn = None
                    if not isinstance(exc, (OSError, http.client.HTTPException)):
                        raise
                    if attempt == 2 or self._proc is None or self._proc.poll() is not None:
                        raise DaemonUnavailable(
                            f"rclone rcd did not answer {method}: {type(exc).__name__}"
                        ) from None
        try:
            data: Any = json.loads(raw or b"{}")
        except ValueError:
            data = {"error": raw.decode("utf-8", "replace")[:500]}
        if status != 200:
            error = data.get("error", "") if isinstance(data, dict) else str(data)
            raise RcCallFailed(method, status, str(error))
        return data if isinstance(data, dict) else {"result": data}

    def start_copy(
        self,
        src_fs: str,
        src_remote: str,
        dst_fs: str,
        dst_remote: str,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> int | JobOutcome:
        """Start ``operations/copyfile`` as an async job: its job id, or the failure.

        Wait for it with :meth:`wait_job`, or stop it with :meth:`stop_job`: a transfer must
        never outlive the task that needs it.
        """
        params: dict[str, Any] = {
            "srcFs": src_fs,
            "srcRemote": src_remote,
            "dstFs": dst_fs,
            "dstRemote": dst_remote,
            "_async": True,
        }
        if config:
            params["_config"] = dict(config)
        try:
            jobid = int(self.rc("operations/copyfile", **params)["jobid"])
        except DaemonUnavailable as exc:
            return JobOutcome(False, str(exc), daemon_lost=True)
        except RcCallFailed as exc:
            return JobOutcome(False, exc.error)
        self.last_jobid = jobid
        return jobid

    def transferring(self) -> bool:
        """Whether a transfer is in progress (``core/stats``); a daemon that does not answer
        transfers nothing."""
        try:
            return bool(self.rc("core/stats").get("transferring"))
        except (DaemonUnavailable, RcCallFailed):
            return False

    def job_finished(self, jobid: int) -> bool:
        """Whether the job is over (an unknown job, or a daemon that does not answer, is)."""
        try:
            return bool(self.rc("job/status", jobid=jobid).get("finished"))
        except (DaemonUnavailable, RcCallFailed):
            return True

    def wait_job(self, jobid: int, deadline: float, limit_s: float) -> JobOutcome:
        """Wait for a job started by :meth:`start_copy` until ``deadline`` (monotonic).

        On the deadline the job is stopped (``job/stop``) and the outcome says ``timed_out``.
        If the caller is interrupted while waiting (KeyboardInterrupt, Celery's soft time
        limit: any BaseException) the job is stopped, or the daemon killed if it does not
        answer, and the exception propagates.
        """
        finished = False
        try:
            delay = POLL_FIRST_S
            while True:
                status = self.rc("job/status", jobid=jobid)
                if status.get("finished"):
                    finished = True
                    self._trim_log()
                    ok = bool(status.get("success"))
                    return JobOutcome(ok, "" if ok else str(status.get("error") or "job failed"))
                if time.monotonic() >= deadline:
                    self._stop_job(jobid)
                    finished = True
                    return JobOutcome(
                        False, f"hard limit of {limit_s:.0f}s exceeded", timed_out=True
                    )
                time.sleep(delay)
                delay = min(delay * POLL_FACTOR, POLL_MAX_S)
        except (DaemonUnavailable, RcCallFailed) as exc:
            finished = True  # nothing left to stop
            return JobOutcome(False, f"{exc}; {self.log_tail(500)}", daemon_lost=True)
        finally:
            if not finished:
                # interrupted while waiting: the transfer must not outlive the task
                self._stop_job(jobid)

    def stop_job(self, jobid: int) -> None:
        """Stop a job nobody will wait for (it may have finished already)."""
        if not self.job_finished(jobid):
            self._stop_job(jobid)

    def _stop_job(self, jobid: int) -> None:
        """job/stop, then wait briefly for the job to finish; kill the daemon if it will not."""
        try:
            self.rc("job/stop", timeout_s=2.0, jobid=jobid)
            end = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < end:
                if self.rc("job/status", timeout_s=2.0, jobid=jobid).get("finished"):
                    log.warning("rclone.job_stopped", remote=self.label, jobid=jobid)
                    return
                time.sleep(0.02)
        except (DaemonUnavailable, RcCallFailed):
            pass
        log.warning(
            "rclone.daemon_killed", remote=self.label, jobid=jobid, reason="job did not stop"
        )
        self.close()
