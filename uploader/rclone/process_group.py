"""Child processes that die with the work that started them
(docs/design/0006-transports.md).

A child runs in its own session, hence its own process group, so it can be killed as a group
(rclone has no children today, but a group kill survives that changing) and a Ctrl-C at a
terminal reaches only us, who then decide. On Linux the child also gets ``PR_SET_PDEATHSIG``:
if the thread that started it dies (a ``kill -9`` of a prefork child) the kernel kills the
child too, instead of leaving an orphan that holds credentials in its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

# grace between SIGTERM (rclone removes its partial files) and SIGKILL of the whole group
TERM_GRACE_S = 2.0
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


# resolved once, here, so the pre-exec hook after fork only makes one C call
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: keep it to one C call (no imports, no locks)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with exactly ``env`` (nothing inherited) in a new process group.

    The child is tied to the calling *thread* by ``PR_SET_PDEATHSIG`` (a Linux detail): start
    long-lived children from a thread that outlives them (a worker's main thread).
    """
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if _PRCTL is not None else None,
        close_fds=True,
    )


def kill_group(proc: subprocess.Popen[bytes], *, grace_s: float = TERM_GRACE_S) -> int | None:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL whatever is left of it.

    Idempotent and safe after the process has exited; returns the exit status (None only if
    the process could not be reaped, which would take an unkillable kernel wait).
    """
    pgid = proc.pid  # the leader of its own session: pgid == pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    # stragglers of the group, even when the leader is already gone
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    try:
        return proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        return None
