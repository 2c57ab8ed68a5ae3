"""flac_encoder end to end: real ffmpeg (the one on PATH and the imageio-ffmpeg wheel's), real
libsndfile, real processes killed, a real full file system. Expected samples come from the test
factory, not from the code under test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf

from tests.factories import write_pcm_wav, write_wav
from uploader.audio import flac_encoder
from uploader.audio.flac_encoder import encode_wav_to_flac, verify_lossless
from uploader.errors import FileRejected, FlacEncodingError, TempSpaceExhausted

# "ffmpeg-path": what resolve_ffmpeg finds by default (the machine's ffmpeg, else the wheel's);
# "ffmpeg-wheel": always the imageio-ffmpeg binary. Both must be lossless.
ENGINE_VARIANTS = ["libflac", "ffmpeg-path", "ffmpeg-wheel"]


@pytest.fixture(params=ENGINE_VARIANTS)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    variant: str = request.param
    if variant == "ffmpeg-wheel":
        monkeypatch.setenv("SILVASONIC_FFMPEG_BINARY", imageio_ffmpeg.get_ffmpeg_exe())
    else:
        monkeypatch.delenv("SILVASONIC_FFMPEG_BINARY", raising=False)
    return "libflac" if variant == "libflac" else "ffmpeg"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every process flac_encoder starts (a spy: the real Popen does the work)."""
    procs: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kwargs)
        procs.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", spy)
    return procs


def live_members(pgid: int) -> list[int]:
    """Pids of processes in group ``pgid`` that are not zombies (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_soon(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """True once ``check()`` holds; a generous deadline for "eventually", not a timing."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def big_wav(path: Path, seconds: float = 30.0) -> Path:
    """A WAV ffmpeg needs several hundred ms for (384 kHz noise), written fast."""
    rng = np.random.default_rng(3)
    data = rng.integers(-3000, 3000, int(seconds * 384_000), dtype=np.int16)
    sf.write(str(path), data, 384_000, subtype="PCM_16", format="WAV")
    return path


def sh_wrapper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> Path:
    """An ffmpeg that first starts a child in its own group: the group kill must reach it.
    ``delay_s``: it starts ffmpeg only after that long, so it is certainly still running then."""
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "ffmpeg-with-child"
    delay = f"sleep {delay_s}\n" if delay_s else ""
    script.write_text(
        '#!/bin/sh\nsleep 300 &\necho $! > "$CHILD_PIDFILE"\n'
        + delay
        + 'exec "$REAL_FFMPEG" "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("CHILD_PIDFILE", str(pidfile))
    monkeypatch.setenv("REAL_FFMPEG", flac_encoder.resolve_ffmpeg())
    monkeypatch.setenv("SILVASONIC_FFMPEG_BINARY", str(script))
    return pidfile


# ---- the seed's table -------------------------------------------------------------------


def test_real_wav_to_flac(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "raw_20260329_143000.wav", seconds=10.0)
    flac = encode_wav_to_flac(wav, tmp_path / "out", engine="ffmpeg")
    assert flac == tmp_path / "out" / "raw_20260329_143000.flac"
    assert flac.read_bytes()[:4] == b"fLaC"
    info = sf.info(str(flac))
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 48000, 1)
    assert info.frames == 480_000
    assert verify_lossless(wav, flac)


def test_flac_smaller_than_wav(tmp_path: Path, engine: str) -> None:
    wav = write_wav(tmp_path / "a.wav", seconds=10.0)
    flac = encode_wav_to_flac(wav, tmp_path / "out", engine=engine)
    assert flac.stat().st_size < 0.8 * wav.stat().st_size


# ---- lossless, every format the recorders produce ------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [48_000, 384_000])
@pytest.mark.parametrize("bits", [16, 24])
def test_flac_decodes_to_the_wav_samples(
    tmp_path: Path, engine: str, bits: int, rate: int, channels: int
) -> None:
    expected = write_pcm_wav(tmp_path / "a.wav", 1.0, rate, bits, channels, seed=bits + channels)
    flac = encode_wav_to_flac(tmp_path / "a.wav", tmp_path / "out", engine=engine)
    decoded, decoded_rate = sf.read(str(flac), dtype="int32", always_2d=True)
    assert decoded_rate == rate
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)
    assert sf.info(str(flac)).subtype == f"PCM_{bits}"


def test_24_bits_in_a_32_bit_wav_are_kept(tmp_path: Path, engine: str) -> None:
    expected = write_pcm_wav(tmp_path / "src.wav", 0.5, 48_000, 24, 2)
    sf.write(str(tmp_path / "a.wav"), expected, 48_000, subtype="PCM_32", format="WAV")
    flac = encode_wav_to_flac(tmp_path / "a.wav", tmp_path / "out", engine=engine)
    assert np.array_equal(sf.read(str(flac), dtype="int32", always_2d=True)[0], expected)


def test_full_32_bit_wav_is_refused_not_truncated(tmp_path: Path, engine: str) -> None:
    # ffmpeg silently writes such a file as 24-bit FLAC and exits 0; the check must catch it
    write_pcm_wav(tmp_path / "a.wav", 0.5, 48_000, 32, 1)
    with pytest.raises(FlacEncodingError, match="not lossless"):
        encode_wav_to_flac(tmp_path / "a.wav", tmp_path / "out", engine=engine)
    assert list((tmp_path / "out").iterdir()) == []


def test_colon_in_file_name(tmp_path: Path, engine: str) -> None:
    wav = write_wav(tmp_path / "concat:a.wav", seconds=0.5)
    flac = encode_wav_to_flac(wav, tmp_path / "out", engine=engine)
    assert flac.name == "concat:a.flac"
    assert verify_lossless(wav, flac)


# ---- failures leave nothing behind ---------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is not audio" * 100, b"RIFF\xff\xff\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00"],
    ids=["garbage", "truncated-header"],
)
def test_corrupt_wav_raises_and_leaves_nothing(tmp_path: Path, engine: str, content: bytes) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(FlacEncodingError) as caught:
        encode_wav_to_flac(bad, tmp_path / "out", engine=engine)
    assert isinstance(caught.value, FileRejected)
    assert list((tmp_path / "out").glob("*")) == []


def test_timeout_kills_ffmpeg(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    wav = big_wav(tmp_path / "big.wav")
    with pytest.raises(FlacEncodingError, match="in time"):
        encode_wav_to_flac(wav, tmp_path / "out", engine="ffmpeg", timeout_s=0.05)
    (proc,) = started
    assert proc.returncode == -signal.SIGKILL  # killed by us, and reaped
    assert gone_soon(lambda: live_members(proc.pid) == [])
    assert list((tmp_path / "out").iterdir()) == []


def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[subprocess.Popen[bytes]]
) -> None:
    pidfile = sh_wrapper(tmp_path, monkeypatch)
    wav = write_wav(tmp_path / "a.wav", seconds=1.0)
    # the child keeps stderr open, so the wait ends only by the timeout, whatever ffmpeg does
    with pytest.raises(FlacEncodingError, match="in time"):
        encode_wav_to_flac(wav, tmp_path / "out", engine="ffmpeg", timeout_s=1.0)
    (proc,) = started
    child = int(pidfile.read_text())
    # SIGKILL is delivered asynchronously: give the kernel a moment on a loaded machine
    assert gone_soon(lambda: live_members(proc.pid) == [] and not alive(child))
    assert list((tmp_path / "out").iterdir()) == []


class SoftTimeLimit(Exception):
    """Stands for Celery's SoftTimeLimitExceeded: raised by a SIGUSR1 handler, as billiard does."""


@pytest.fixture
def soft_time_limit_in(request: pytest.FixtureRequest) -> Iterator[Any]:
    def handler(_signum: int, _frame: Any) -> None:
        raise SoftTimeLimit

    previous = signal.signal(signal.SIGUSR1, handler)
    timers: list[threading.Timer] = []

    def arm(seconds: float) -> None:
        timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR1))
        timers.append(timer)
        timer.start()

    yield arm
    for timer in timers:
        timer.cancel()
        timer.join()
    signal.signal(signal.SIGUSR1, previous)


def test_soft_time_limit_kills_the_process_group(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: list[subprocess.Popen[bytes]],
    soft_time_limit_in: Any,
) -> None:
    # still running at the soft limit, however fast this machine encodes (a 30 s 384 kHz WAV
    # alone was done within 0.3 s on a quiet machine, and the test then saw exit code 0)
    pidfile = sh_wrapper(tmp_path, monkeypatch, delay_s=5)
    wav = big_wav(tmp_path / "big.wav")
    soft_time_limit_in(0.3)
    with pytest.raises(SoftTimeLimit):
        encode_wav_to_flac(wav, tmp_path / "out", engine="ffmpeg", timeout_s=60)
    (proc,) = started
    assert proc.returncode == -signal.SIGKILL
    child = int(pidfile.read_text())
    assert gone_soon(lambda: live_members(proc.pid) == [] and not alive(child))
    assert list((tmp_path / "out").iterdir()) == []


# ---- a full temp folder is not the file's fault -------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root / CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine: cannot make a small file system")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a 64k tmpfs ({done.stderr.strip()}): needs root"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_full_temp_folder_raises_temp_space_exhausted(
    tmp_path: Path, tiny_tmpfs: Path, engine: str
) -> None:
    wav = write_wav(tmp_path / "a.wav", seconds=3.0)  # about 290 KB of WAV, 150 KB of FLAC
    with pytest.raises(TempSpaceExhausted) as caught:
        encode_wav_to_flac(wav, tiny_tmpfs, engine=engine)
    assert not isinstance(caught.value, FileRejected)  # never counts toward parking
    assert list(tiny_tmpfs.iterdir()) == []
    # and the folder works again once there is room: a small file fits
    small = write_wav(tmp_path / "b.wav", seconds=0.1)
    assert verify_lossless(small, encode_wav_to_flac(small, tiny_tmpfs, engine=engine))
