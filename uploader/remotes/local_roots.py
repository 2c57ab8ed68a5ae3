"""Where a ``local`` remote may write: strictly below a root the operator allowed.

A ``local`` remote's ``target_path`` becomes a read-write bind mount of that host folder in its
worker container (controller_ext/container_spec.py), so a typo or a hostile row could hand a
worker ``/`` or ``/etc``. The rule, checked by ``remotes add``/``remotes set`` and again by the
controller before it builds a worker:

- the folder is absolute and lies strictly below one of ``SILVASONIC_LOCAL_REMOTE_ROOTS``
  (colon-separated; default ``/mnt:/media:/srv``, where USB disks and archive mounts go);
- it is not inside a system folder (``/etc``, ``/usr``, ``/root``, ...), whatever the roots say;
- it neither contains nor lies inside the recorder workspace (recordings are never mounted
  read-write).

Paths are compared after normalising ``.`` and ``..``; symbolic links are not followed here
(the CLI may run where the folder does not exist), so keep roots free of links you do not own.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence

from uploader.errors import RemoteConfigInvalid

ROOTS_ENV = "SILVASONIC_LOCAL_REMOTE_ROOTS"
DEFAULT_ROOTS = ("/mnt", "/media", "/srv")
SYSTEM_FOLDERS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
)


def allowed_roots(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The configured roots, normalised; the defaults when the variable is unset or empty."""
    raw = (os.environ if environ is None else environ).get(ROOTS_ENV, "")
    roots = tuple(_norm(r) for r in raw.split(":") if r.strip())
    return roots or DEFAULT_ROOTS


def _norm(path: str) -> str:
    return posixpath.normpath(path.strip()) if path.strip() else ""


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_local_target(
    slug: str,
    target_path: str | None,
    *,
    roots: Sequence[str] | None = None,
    workspaces: Iterable[str] = (),
) -> str:
    """The normalised folder, or :class:`RemoteConfigInvalid` saying what is allowed."""
    raw = (target_path or "").strip()
    if not raw.startswith("/"):
        raise RemoteConfigInvalid(
            slug,
            "a 'local' remote needs target_path set to an absolute folder on this machine "
            "(e.g. /mnt/usb/silvasonic)",
        )
    folder = _norm(raw)
    roots = tuple(roots) if roots is not None else allowed_roots()
    system = next((s for s in SYSTEM_FOLDERS if _within(folder, s)), None)
    if folder == "/" or system is not None:
        raise RemoteConfigInvalid(
            slug,
            f"target_path {folder} is {'the root folder' if folder == '/' else 'a system folder'}"
            f": a 'local' remote writes below {' or '.join(roots)} (a USB disk or an archive "
            f"mount)",
        )
    for workspace in filter(None, (_norm(w) for w in workspaces)):
        if _within(folder, workspace) or _within(workspace, folder):
            raise RemoteConfigInvalid(
                slug,
                f"target_path {folder} overlaps the recorder workspace {workspace}, which is "
                f"never written to: pick a folder below {' or '.join(roots)}",
            )
    if not any(_within(folder, root) and folder != root for root in roots if root != "/"):
        raise RemoteConfigInvalid(
            slug,
            f"target_path {folder} is not below an allowed root ({', '.join(roots)}): pick a "
            f"folder there, or add its parent to {ROOTS_ENV} (colon-separated) in the "
            f"environment of the CLI and the controller",
        )
    return folder
