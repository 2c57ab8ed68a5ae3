"""The worker's temp folder is its own: created 0700, and refused when anyone else could
write into it or replace it.

The FLACs wait there between the encode and the upload step, and a remote that proves an
upload by its size alone (plain WebDAV) cannot tell a swapped file from ours. The upload step
also compares each FLAC's size and md5 with what the encode step recorded, but a folder that
another local user owns, or may write to, is refused outright: the default
``$TMPDIR/silvasonic/<slug>`` lies in a world-writable folder where anyone could have made it
first.

Rules (checked with ``lstat``, so a symlink is never followed into someone else's folder):

- the folder itself: a real directory, owned by this process's user, mode ``0700`` (a folder
  we created with another mode is narrowed; one we do not own is refused);
- every folder above it: owned by us or by root, and not writable by group or others unless
  the sticky bit is set (``/tmp``), so nobody else can rename or replace what is below.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

import structlog

from uploader.errors import TempDirUnsafe

log = structlog.get_logger(__name__)

TEMP_DIR_ENV = "SILVASONIC_TEMP_DIR"


def worker_temp_dir(remote_slug: str) -> Path:
    """The worker's own temp folder, ``$SILVASONIC_TEMP_DIR/<slug>`` (default: the system
    temp folder + ``/silvasonic``), private (:func:`private_dir`).

    An unsafe folder named by ``SILVASONIC_TEMP_DIR`` raises :class:`TempDirUnsafe` (the
    operator chose it: they fix it). An unsafe *default* — someone else made
    ``/tmp/silvasonic`` first — is passed over for a fresh private folder from ``mkdtemp``,
    with a warning: the worker must not stop working because another user squats a name.
    """
    explicit = os.environ.get(TEMP_DIR_ENV, "").strip()
    base = Path(explicit) if explicit else Path(tempfile.gettempdir()) / "silvasonic"
    try:
        return private_dir(base / remote_slug)
    except TempDirUnsafe as exc:
        if explicit:
            raise
        fresh = Path(tempfile.mkdtemp(prefix="silvasonic-")) / remote_slug
        log.warning("worker.temp_dir_refused", refused=exc.directory, reason=exc.reason,
                    using=str(fresh))  # fmt: skip
        return private_dir(fresh)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) for this user only, or check that an existing
    one is ours alone; returns it. Raises :class:`TempDirUnsafe` with what to do."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        _check_parent(parent)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for parent in reversed(path.parents):  # created just now, or checked before they existed
        _check_parent(parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise TempDirUnsafe(str(path), "it is a symlink or not a folder")
    if st.st_uid != os.geteuid():
        raise TempDirUnsafe(str(path), f"it belongs to uid {st.st_uid}, not to this worker")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours: narrow it (an older version made it with the umask)
        log.warning("worker.temp_dir_narrowed", path=str(path), mode=oct(stat.S_IMODE(st.st_mode)))
    return path


def _check_parent(folder: Path) -> None:
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (0, os.geteuid()):
            raise TempDirUnsafe(str(folder), f"it is a symlink of uid {st.st_uid}")
        target = os.path.realpath(folder)
        _check_parent(Path(target))  # a link (e.g. /tmp → /private/tmp) is as safe as its target
        return
    if st.st_uid not in (0, os.geteuid()):
        raise TempDirUnsafe(str(folder), f"it belongs to uid {st.st_uid}, who could replace it")
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not st.st_mode & stat.S_ISVTX:
        raise TempDirUnsafe(str(folder), "others may write into it and it has no sticky bit")
