"""The worker's temp folder is private (uploader/audio/temp_dir.py), on real folders: the tests run
as root, so "another user" is ``nobody`` made the owner with chown."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from uploader.audio import temp_dir
from uploader.audio.temp_dir import private_dir, worker_temp_dir
from uploader.errors import TempDirUnsafe

pytestmark = pytest.mark.unit
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_folder_is_made_for_us_alone(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "b" / "worker")
    assert made.is_dir() and _mode(made) == 0o700
    assert os.lstat(made).st_uid == os.geteuid()


def test_our_own_folder_with_a_wide_mode_is_narrowed(tmp_path: Path) -> None:
    folder = tmp_path / "worker"
    folder.mkdir()
    folder.chmod(0o777)
    assert private_dir(folder) == folder and _mode(folder) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a folder to nobody")
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "worker"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(TempDirUnsafe, match="belongs to uid 65534"):
        private_dir(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a folder to nobody")
def test_a_parent_of_another_user_is_refused(tmp_path: Path) -> None:
    squatted = tmp_path / "silvasonic"
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, NOBODY, NOBODY)
    with pytest.raises(TempDirUnsafe, match="could replace it"):
        private_dir(squatted / "dav")


def test_a_group_writable_parent_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(TempDirUnsafe, match="no sticky bit"):
        private_dir(shared / "dav")
    shared.chmod(0o1777)  # like /tmp: fine
    assert _mode(private_dir(shared / "dav")) == 0o700


def test_a_symlink_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "worker").symlink_to(elsewhere)
    with pytest.raises(TempDirUnsafe, match="symlink"):
        private_dir(tmp_path / "worker")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a folder to nobody")
def test_a_squatted_default_is_passed_over_an_explicit_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given another user made $TMPDIR/silvasonic first (the review's attack)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    squatted = tmp / "silvasonic"
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, NOBODY, NOBODY)
    monkeypatch.setattr(temp_dir.tempfile, "tempdir", str(tmp))
    monkeypatch.delenv(temp_dir.TEMP_DIR_ENV, raising=False)
    # then the default is not used: a fresh private folder is
    chosen = worker_temp_dir("dav")
    assert not chosen.is_relative_to(squatted)
    assert chosen.name == "dav" and _mode(chosen) == 0o700
    # but a folder the operator named is refused with what to do
    monkeypatch.setenv(temp_dir.TEMP_DIR_ENV, str(squatted))
    with pytest.raises(TempDirUnsafe, match="SILVASONIC_TEMP_DIR"):
        worker_temp_dir("dav")
