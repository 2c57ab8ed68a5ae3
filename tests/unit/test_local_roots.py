"""The allowlist of a ``local`` remote's folder (uploader/remotes/local_roots.py), and the controller's
second check of it when it builds a worker (a row may have been written without the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controller_ext.container_spec import UploaderEnvConfig, build_uploader_spec
from uploader.errors import RemoteConfigInvalid
from uploader.remotes.local_roots import DEFAULT_ROOTS, allowed_roots, check_local_target


@dataclass(frozen=True)
class Remote:
    slug: str
    type: str
    target_path: str | None


def test_the_roots_come_from_the_environment_or_the_defaults() -> None:
    assert allowed_roots({}) == DEFAULT_ROOTS
    assert allowed_roots({"SILVASONIC_LOCAL_REMOTE_ROOTS": " "}) == DEFAULT_ROOTS
    assert allowed_roots({"SILVASONIC_LOCAL_REMOTE_ROOTS": "/data/:/mnt/usb"}) == (
        "/data",
        "/mnt/usb",
    )


@pytest.mark.parametrize(
    "target",
    [None, "", "usb", "./mnt/x", "/", "/etc", "/usr/share/x", "/root/a", "/proc/1",
     "/mnt", "/mnt/../etc/x", "/mntx/a", "/home/pi"],
)  # fmt: skip
def test_refused(target: str | None) -> None:
    with pytest.raises(RemoteConfigInvalid):
        check_local_target("usb", target, roots=DEFAULT_ROOTS)


@pytest.mark.parametrize(
    ("target", "folder"),
    [("/mnt/usb", "/mnt/usb"), ("/media/usb/./a/", "/media/usb/a"), ("/srv/a/../b", "/srv/b")],
)
def test_taken_and_normalised(target: str, folder: str) -> None:
    assert check_local_target("usb", target, roots=DEFAULT_ROOTS) == folder


def test_a_root_of_slash_allows_nothing_and_system_folders_stay_closed() -> None:
    with pytest.raises(RemoteConfigInvalid):
        check_local_target("usb", "/opt/archive", roots=["/"])
    with pytest.raises(RemoteConfigInvalid, match="system folder"):
        check_local_target("usb", "/etc/archive", roots=["/etc"])


def test_the_controller_builds_no_worker_for_a_local_remote_outside_the_roots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: a row written without the CLI
    monkeypatch.delenv("SILVASONIC_LOCAL_REMOTE_ROOTS", raising=False)
    env = UploaderEnvConfig(workspace_path="/srv/silvasonic")
    # when / then
    with pytest.raises(RemoteConfigInvalid, match="the root folder"):
        build_uploader_spec(Remote("usb", "local", "/"), env)
    with pytest.raises(RemoteConfigInvalid, match="workspace"):
        build_uploader_spec(Remote("usb", "local", "/srv/silvasonic/recorder/x"), env)
    spec = build_uploader_spec(Remote("usb", "local", "/mnt/usb"), env)
    assert [m.source for m in spec.mounts if not m.read_only] == ["/mnt/usb"]
