"""What a worker proved about a pair, kept in ``pair_state`` under the lease token that
proved it: the one source the audit step writes a success row from.

A task message is a hint, never evidence: anyone who can reach Redis can publish one. So the
steps of a pair leave their findings in PostgreSQL, each bound to the pair's current lease:

- the encode step records the FLAC it made (size, md5) and the object path it claimed at the
  remote's destination (:func:`record_encoded`); the upload step checks the file against it
  before any transfer, so a FLAC swapped in the temp folder is never sent;
- the upload step records the transfer it verified on the remote (path, size, which check
  proved it, the destination) (:func:`record_verified`);
- the audit step takes that record (:func:`take_verified`) and nothing from its message. A
  forged, replayed or misrouted audit message finds no record under its token and changes
  nothing.

A new lease (a new token) makes both records stale at once: they match only their own token.
Nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader.ledger import leases


@dataclass(frozen=True)
class Encoded:
    """The FLAC the encode step made for this lease, and where it is to go."""

    size: int
    md5: str
    remote_path: str
    destination: str


@dataclass(frozen=True)
class Verified:
    """A transfer the upload step verified on the remote, under this lease."""

    remote_path: str
    size: int
    md5: str
    verified_by: str  # "md5", "sha1" or "size": the strongest check the remote allowed
    destination: str


_PAIR = "recording_id = :rid AND remote_slug = :slug AND lease_token = :token"
_RECORD_ENCODED = text(
    f"""
    UPDATE pair_state
    SET flac_token = :token, flac_size = :size, flac_md5 = :md5,
        verified_path = :path, verified_destination = :dest,
        verified_token = NULL, verified_size = NULL, verified_by = NULL, updated_at = now()
    WHERE {_PAIR}
    RETURNING 1
    """
)
# verified_path/verified_destination hold the claimed object until the transfer is verified
# (then verified_token marks them proven): one pair of columns, never two paths to confuse
_RECORD_VERIFIED = text(
    f"""
    UPDATE pair_state
    SET verified_token = :token, verified_size = :size, verified_by = :check, updated_at = now()
    WHERE {_PAIR} AND flac_token = :token AND flac_md5 = :md5 AND flac_size = :size
      AND verified_path = :path AND verified_destination = :dest
    RETURNING 1
    """
)
#: the encode record of a lease, as a LEFT JOIN for ``pipeline.begin_step``'s one statement
ENCODED_JOIN = """
    LEFT JOIN pair_state ev ON ev.recording_id = :rid AND ev.remote_slug = :slug
        AND ev.flac_token = CAST(:token AS uuid) AND ev.lease_token = CAST(:token AS uuid)
"""
ENCODED_COLUMNS = "ev.flac_size, ev.flac_md5, ev.verified_path, ev.verified_destination"
_TAKE_VERIFIED = text(
    f"""
    UPDATE pair_state
    SET lease_until = now() + make_interval(secs => :lease_s), updated_at = now()
    WHERE {_PAIR} AND verified_token = :token
    RETURNING verified_path, verified_size, flac_md5, verified_by, verified_destination
    """
)


def encoded_from_row(row: Any) -> Encoded | None:
    """The :data:`ENCODED_COLUMNS` of a row, or None when this lease recorded no FLAC."""
    if row.flac_size is None or row.flac_md5 is None or row.verified_path is None:
        return None
    return Encoded(
        int(row.flac_size), str(row.flac_md5), str(row.verified_path), row.verified_destination
    )


def record_encoded(
    session: Session,
    recording_id: int,
    remote_slug: str,
    token: str,
    *,
    size: int,
    md5: str,
    remote_path: str,
    destination: str,
) -> bool:
    """Record the FLAC and its claimed object under ``token``; False when the lease is lost."""
    params = _params(recording_id, remote_slug, token)
    if params is None:
        return False
    values = {**params, "size": size, "md5": md5, "path": remote_path, "dest": destination}
    return session.execute(_RECORD_ENCODED, values).first() is not None


def record_verified(
    session: Session,
    recording_id: int,
    remote_slug: str,
    token: str,
    encoded: Encoded,
    verified_by: str,
) -> bool:
    """Record that the encoded FLAC is on the remote at its claimed path, as ``verified_by``
    proved. False when the lease is lost or the encode record changed meanwhile."""
    params = _params(recording_id, remote_slug, token)
    if params is None:
        return False
    values = {
        **params,
        "size": encoded.size,
        "md5": encoded.md5,
        "path": encoded.remote_path,
        "dest": encoded.destination,
        "check": verified_by,
    }
    return session.execute(_RECORD_VERIFIED, values).first() is not None


def take_verified(
    session: Session, recording_id: int, remote_slug: str, token: str, lease_s: float
) -> Verified | None:
    """Renew the lease and read its verified transfer; None for a token that holds no lease
    or a lease whose transfer was never verified (a forged or replayed audit message)."""
    params = _params(recording_id, remote_slug, token)
    if params is None:
        return None
    row = session.execute(_TAKE_VERIFIED, {**params, "lease_s": lease_s}).first()
    if row is None:
        return None
    return Verified(
        str(row.verified_path),
        int(row.verified_size),
        str(row.flac_md5),
        str(row.verified_by),
        str(row.verified_destination),
    )


def _params(recording_id: int, remote_slug: str, token: str) -> dict[str, Any] | None:
    params = leases.renew_params(recording_id, remote_slug, token, 0.0)
    if params is None:
        return None
    params.pop("lease_s")
    return params
