"""Give a recording's pages back to the kernel once the worker has read it.

A worker reads each WAV once (header, encode, check) and never again. Pages the kernel had to
read from disk for it are charged to the memory cgroup that read them, which is the worker's
container (256m on a station): ~1 MB per 10 s at 48 kHz, ~11.5 MB at 384 kHz / 24-bit. Left
there, a backlog fills the container to its limit with recordings it is done with, and every
further allocation has to reclaim first (bench/README.md, "the worker inside 200 MB": with every
WAV read from disk, 98–113 MB of the peak and failcnt 28,637 after 300 pairs; none left with
this). ``POSIX_FADV_DONTNEED`` drops the clean pages of the file at once, which also uncharges
them.

The trade-off: the pages are dropped for everyone, so another reader of the same recording (the
next remote's worker, an analyser) reads it from the card again, ~1 MB per 10 s segment, which
is cheap next to the upload it is read for. rclone's local backend does the same for what it
reads. Dirty, mapped or locked pages, and files on tmpfs, are left alone by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def release(path: Path) -> None:
    """Drop ``path``'s clean pages from the page cache; never raises (a missing file, a
    platform without ``posix_fadvise``: there is nothing to release).

    Only a regular file is opened: the path may be anything a caller was handed, and opening
    a FIFO for reading blocks until a writer comes, a device may act on open. ``O_NONBLOCK``
    covers a file swapped for a FIFO between the check and the open.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
