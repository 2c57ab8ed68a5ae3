"""A remote's *destination*: the one module that knows what decides where its bytes land.

A success row proves that a recording is on a remote only at the place the worker wrote it to.
When an operator points a remote somewhere else (``remotes set dav1 --target-path new``, a new
WebDAV URL, another S3 endpoint or bucket, another SFTP host), the recordings uploaded before
are not at the new place. So every success row records the destination fingerprint it was
verified at (``uploads.destination``), and the completion rule, the pending walk and the
``pair_state`` clean-up count only successes at the remote's *current* destination
(docs/design/0001-janitor-contract.md).

What is in the fingerprint: the remote's type, its ``target_path`` (the folder, or the S3
bucket and prefix), and per type the options that name the server or the root the path is
resolved against. Credentials, timeouts, vendors and tuning options are not: changing a
password does not move the data. A changed fingerprint means "the bytes may be elsewhere"; it
never unflags a recording (the Janitor may already have deleted its audio).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

#: per remote type, the ``storage_remotes.config`` keys that decide where a path resolves
PLACE_KEYS: dict[str, tuple[str, ...]] = {
    "webdav": ("url",),
    "s3": ("provider", "endpoint", "region"),
    # the user: a relative path resolves in the user's home folder
    "sftp": ("host", "port", "user", "path_override"),
    "local": (),
    "drive": ("root_folder_id", "team_drive"),
}
#: the default SFTP port, so ``port: 22`` and no port are the same place
_SFTP_PORT = 22

_CURRENT = text(
    "SELECT slug, type, config, target_path FROM storage_remotes "
    "WHERE slug = ANY(CAST(:slugs AS text[]))"
)


def _normalise(remote_type: str, key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if remote_type == "sftp" and key == "port":
        return None if int(value) == _SFTP_PORT else str(int(value))
    text_value = str(value).strip()
    if key in ("url", "endpoint"):
        text_value = text_value.rstrip("/")
    return text_value


def _normalise_target(target_path: str | None) -> str:
    """``/mnt/a/`` and ``/mnt//a`` are the same folder; a leading ``/`` is kept (absolute)."""
    if not target_path:
        return ""
    parts = [p for p in target_path.split("/") if p]
    return ("/" if target_path.startswith("/") else "") + "/".join(parts)


def destination_of(remote_type: str, config: dict[str, Any], target_path: str | None) -> str:
    """The destination fingerprint (16 hex digits) of a remote configuration."""
    place = {
        key: _normalise(remote_type, key, (config or {}).get(key))
        for key in PLACE_KEYS.get(remote_type, ())
    }
    blob = json.dumps([remote_type, place, _normalise_target(target_path)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe(remote_type: str, config: dict[str, Any], target_path: str | None) -> str:
    """The destination in words, for ``remotes set`` and the docs (no credential in it)."""
    place = [
        f"{key}={value}"
        for key in PLACE_KEYS.get(remote_type, ())
        if (value := _normalise(remote_type, key, (config or {}).get(key))) is not None
    ]
    folder = _normalise_target(target_path) or "(root)"
    return " ".join([remote_type, *place, f"target_path={folder}"])


def current(session: Session, slugs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The current destination of each named remote that exists, in one statement."""
    if not slugs:
        return {}
    rows = session.execute(_CURRENT, {"slugs": list(slugs)})
    return {row.slug: destination_of(row.type, row.config or {}, row.target_path) for row in rows}


def current_one(session: Session, slug: str) -> str | None:
    """The remote's current destination, or None when the remote is gone."""
    return current(session, [slug]).get(slug)
