"""What kind of failure an rclone error is: the classification table of docs/rclone.md.

Part of the rclone client (``uploader.rclone.client`` is the front door and re-exports these
names); the one place that reads rclone's error text.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum


class RcloneErrorKind(StrEnum):
    """What the caller does about a failed upload (docs/design/0007-failure-kinds.md)."""

    #: it worked
    NONE = "none"
    #: network, DNS, timeout, TLS, 5xx, 429: retry later, mark the remote unavailable
    CONNECTION = "connection"
    #: this object was rejected (or the local file is missing): counts toward parking
    FILE = "file"
    #: credentials, host key, missing bucket, bad settings: mark the remote misconfigured
    CONFIG = "config"


# -- the table --------------------------------------------------------------------------------

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
