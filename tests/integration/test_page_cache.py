"""A recording the worker has encoded leaves the page cache (uploader/audio/page_cache.py).

The real kernel decides: ``fincore`` (util-linux) reads which of the file's pages are resident.
Pages the worker reads from disk are charged to its container's memory cgroup; a backlog of
recordings it is done with filled a 256m worker to its limit (bench/README.md, #14).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.factories import write_wav
from tests.fixtures.residency import resident_bytes
from uploader.audio import page_cache
from uploader.audio.flac_encoder import encode_checked
from uploader.errors import FlacEncodingError

pytestmark = pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """A folder on a disk-backed filesystem: tmpfs pages cannot be dropped, whatever we ask."""
    kind = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if kind == "tmpfs":
        pytest.skip(f"{tmp_path} is on tmpfs; the page cache of tmpfs files cannot be dropped")
    return tmp_path


def cached(path: Path) -> Path:
    """Written back and wholly resident, as a recording the recorder finished a while ago
    (the kernel drops only clean pages)."""
    with path.open("rb+") as f:
        os.fsync(f.fileno())
    path.read_bytes()
    assert resident_bytes(path) >= path.stat().st_size  # the positive control (whole pages)
    return path


def test_an_encoded_wav_is_no_longer_resident(disk_dir: Path) -> None:
    wav = cached(write_wav(disk_dir / "rec.wav", seconds=10.0))
    encoded = encode_checked(wav, disk_dir / "out", engine="libflac")
    assert encoded.size_bytes > 0
    assert resident_bytes(wav) == 0
    assert wav.exists()  # only its cached pages went, never the file


def test_a_wav_that_fails_to_encode_is_released_too(disk_dir: Path) -> None:
    wav = disk_dir / "corrupt.wav"
    wav.write_bytes(b"RIFF" + os.urandom(512 * 1024))
    cached(wav)
    with pytest.raises(FlacEncodingError):
        encode_checked(wav, disk_dir / "out", engine="libflac")
    assert resident_bytes(wav) == 0


def test_release_never_raises_for_a_missing_file(tmp_path: Path) -> None:
    page_cache.release(tmp_path / "gone.wav")  # nothing to release, nothing to report


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_path_that_is_no_regular_file_is_refused_without_hanging(
    tmp_path: Path, kind: str
) -> None:
    """A hostile or mistaken path: opening a FIFO for reading blocks until a writer comes, so
    the release after a refused encode must never open one."""
    path = tmp_path / "rec.wav"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    outcome: list[BaseException] = []

    def encode() -> None:
        try:
            encode_checked(path, tmp_path / "out", engine="libflac")
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=encode, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the encode hung on a path that is not a regular file"
    assert len(outcome) == 1 and isinstance(outcome[0], FlacEncodingError), outcome
