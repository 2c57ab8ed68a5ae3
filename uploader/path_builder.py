"""Where a recording goes on a remote, and where it is read from locally.

The only module that knows the remote path convention (docs/design/0011-runtime.md)::

    [<target_path>/]silvasonic/<station_slug>/<sensor_id>/<YYYY-MM-DD>/<stem>.flac

with one exception: when another recording already owns that object at the same destination
(two WAVs of one sensor and day with the same stem in different folders, or ``x.wav`` and
``x.WAV``), the later one is written as ``<stem>~<recording_id>.flac`` (:func:`disambiguated`;
``uploader.ledger.remote_objects`` decides, from the database, before any transfer). Paths are
compared case-insensitively (:func:`object_key`): a USB stick's exFAT or a Nextcloud on a
case-insensitive disk would otherwise merge ``X.flac`` and ``x.flac``.

It is also the only check that ``recordings.file_raw`` stays inside the workspace root. Values
from the database never leave their folder on the remote: an unsafe ``sensor_id`` or file name
is escaped deterministically (so retries and other remotes use the same path) and is never an
error — a pair parked for its name would block the Janitor forever. See docs/encoding.md.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from slugify import slugify

from uploader.errors import UnsafePath

ROOT_FOLDER = "silvasonic"
#: the station folder when the station name has nothing left after slugifying ("!!!", "")
STATION_FALLBACK = "station"
# python-slugify alone turns "ü" into "u"; German speakers write "ue" (seed: Müller → mueller)
_GERMAN = (
    ("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss"),
    ("Ä", "Ae"), ("Ö", "Oe"), ("Ü", "Ue"), ("ẞ", "SS"),
)  # fmt: skip
# Stand-ins for the names a folder cannot have. "%" alone is never produced by escaping a
# character (always "%" + two hex digits), so an empty value cannot collide with a real one.
_DOT, _DOTDOT, _EMPTY = "%2E", "%2E%2E", "%"


def station_slug(station_name: str) -> str:
    """``"Silvasonic Müller-Station [Test]"`` → ``"silvasonic-mueller-station-test"``.

    NFC first, so a decomposed "u + ◌̈" (as macOS file systems and some keyboards produce)
    gets the same slug as "ü".
    """
    normalised = unicodedata.normalize("NFC", station_name)
    return slugify(normalised, replacements=_GERMAN) or STATION_FALLBACK


def escape_segment(value: str, *, keep_percent: bool = False) -> str:
    """Make ``value`` one harmless path segment, deterministically and reversibly.

    ``/``, ``\\``, ``%`` and control characters (Unicode Cc, including NUL and DEL; lone
    surrogates too) become ``%XX`` per UTF-8 byte; then ``.`` → ``%2E``, ``..`` → ``%2E%2E``,
    and the empty string → ``%``. Everything else (letters, digits, spaces, umlauts) passes
    unchanged, so a normal name is its own escape. Escaping ``%`` keeps the mapping
    one-to-one: two different ids never share a folder. ``keep_percent`` is for the
    operator's own ``target_path``, where a ``%`` is meant literally.
    """
    out = []
    for ch in value:
        if (
            ch in "/\\"
            or (ch == "%" and not keep_percent)
            or unicodedata.category(ch) in ("Cc", "Cs")
        ):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    escaped = "".join(out)
    if escaped == ".":
        return _DOT
    if escaped == "..":
        return _DOTDOT
    return escaped or _EMPTY


def flac_name(filename: str) -> str:
    """``raw_1.wav`` → ``raw_1.flac``: the last extension, any case, is replaced (none is
    added to); the stem is escaped like any segment, and ``~`` becomes ``%7E``."""
    stem, dot, extension = filename.rpartition(".")
    if not dot or not stem or "/" in extension or "\\" in extension:
        stem = filename
    # "~" is kept for disambiguated(): a stem of ours never holds one, so "<stem>~<id>" can
    # never be another recording's own name
    return f"{escape_segment(stem).replace('~', '%7E')}.flac"


def build_remote_path(
    station_name: str,
    sensor_id: str,
    time: datetime,
    filename: str,
    target_path: str | None = None,
) -> str:
    """The object path of one recording on a remote, as rclone.client writes it.

    ``time`` is ``recordings.time``; its UTC date names the day folder (a naive value is taken
    as UTC). ``target_path`` is the remote's optional prefix: trailing and repeated slashes go,
    ``.``/``..``/control characters are escaped, so it names exactly one folder and never
    climbs out of it. One leading ``/`` is kept: a ``local`` remote's folder is absolute
    (rclone.client refuses a relative one, which would depend on the working directory), and
    sftp reads it as absolute too; S3 and WebDAV ignore it.
    """
    day = (time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)).date()
    parts = [
        ROOT_FOLDER,
        station_slug(station_name),
        escape_segment(sensor_id),
        day.isoformat(),
        flac_name(filename),
    ]
    return target_prefix(target_path) + "/".join(parts)


def target_prefix(target_path: str | None) -> str:
    """What ``target_path`` puts in front of every remote path: ``""`` for none, else its
    escaped segments and a trailing ``/`` (with the leading ``/`` of an absolute folder)."""
    segments = [
        escape_segment(segment, keep_percent=True)
        for segment in (target_path or "").split("/")
        if segment
    ]
    lead = "/" if (target_path or "").startswith("/") else ""  # "/" alone: the root folder
    return lead + "".join(segment + "/" for segment in segments)


def object_key(remote_path: str) -> str:
    """The key under which two remote paths are the same object: NFC, then lower case."""
    return unicodedata.normalize("NFC", remote_path).lower()


def disambiguated(remote_path: str, recording_id: int) -> str:
    """``…/<stem>.flac`` → ``…/<stem>~<recording_id>.flac``: the name of a recording whose
    usual path another recording already owns. Deterministic, so every retry uses it."""
    folder, slash, name = remote_path.rpartition("/")
    stem = name[: -len(".flac")] if name.endswith(".flac") else name
    return f"{folder}{slash}{stem}~{recording_id}.flac"


def resolve_local_path(workspace_root: Path, file_raw: str) -> Path:
    """The WAV of ``file_raw`` (relative to ``workspace_root``), with every symlink resolved.

    Raises UnsafePath when the result is not strictly inside the root: ``..`` climbing out, an
    absolute ``file_raw``, a NUL, or a symlink — the file or any folder above it, existing or
    dangling — that points outside. Whether the file exists is the caller's question. Callers
    open the returned path (no symlinks left in it), not the unresolved join.
    """
    if not file_raw or "\x00" in file_raw:
        raise UnsafePath(f"file_raw {file_raw!r} is empty or contains NUL")
    relative = PurePosixPath(file_raw)
    if relative.is_absolute():
        raise UnsafePath(f"file_raw {file_raw!r} is absolute; it must be relative to the root")
    root = workspace_root.resolve()
    try:
        resolved = (root / relative).resolve()  # non-strict: follows dangling links too
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise UnsafePath(f"file_raw {file_raw!r} cannot be resolved: {exc}") from exc
    if resolved == root or not resolved.is_relative_to(root):
        raise UnsafePath(f"file_raw {file_raw!r} resolves outside the workspace root {str(root)!r}")
    return resolved
