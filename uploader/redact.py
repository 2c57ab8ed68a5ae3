"""The one redaction helper: anything URL-like or foreign (rclone stderr, ffmpeg output)
passes through here before it is logged, stored in the audit, or put in an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_KEY_VALUE = re.compile(
    r"(?i)\b(?P<key>[\w-]*(?:pass|password|secret|token|key|authorization)[\w-]*)"
    r"(?P<sep>\s*[=:]\s*)"
    # an HTTP auth scheme is followed by the credential itself (rclone's --dump headers)
    r"(?P<value>(?:(?:basic|bearer|digest|token|negotiate|aws4-hmac-sha256)\s+)?"
    r"(?:\"[^\"]*\"|'[^']*'|[^\s,;&]+))"
)
MASK = "***"
_MAX_EXCERPT = 2000


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask user:password@ in URLs, ``key=value`` pairs whose key sounds secret, and every
    literal secret given. Long text is cut to an excerpt an operator can still read."""
    out = text
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", out)
    out = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", out)
    if len(out) > _MAX_EXCERPT:
        out = out[: _MAX_EXCERPT // 2] + " … " + out[-_MAX_EXCERPT // 2 :]
    return out
