"""flac_encoder without a real ffmpeg: a fake Popen reaches the subprocess branches (exit codes,
timeouts, interrupts, ENOSPC); the in-process libflac engine and the checks are real."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from structlog.testing import capture_logs

from tests.factories import write_pcm_wav, write_wav
from uploader.audio import flac_encoder
from uploader.audio.flac_encoder import (
    default_engine,
    default_timeout_s,
    encode_wav_to_flac,
    file_md5,
    remove_partial_outputs,
    resolve_ffmpeg,
    verify_lossless,
)
from uploader.errors import (
    FileRejected,
    FlacEncodingError,
    SourceMissing,
    TempSpaceExhausted,
    UploaderError,
)

FAKE_PID = 999_999_999  # never a real pid: a stray killpg could not hit anything


class FakeProc:
    """What ``subprocess.Popen`` returns, acting out one ffmpeg run (see FakeFfmpeg)."""

    def __init__(self, cmd: list[str], behaviour: str, stderr: bytes, returncode: int) -> None:
        self.cmd, self.behaviour = cmd, behaviour
        self.pid = FAKE_PID
        self.returncode: int | None = None
        self._stderr_bytes, self._rc = stderr, returncode
        self.stderr = io.BytesIO()

    @property
    def input(self) -> Path:
        return Path(self.cmd[self.cmd.index("-i") + 1].removeprefix("file:"))

    @property
    def output(self) -> Path:
        return Path(self.cmd[-1].removeprefix("file:"))

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        b = self.behaviour
        if b == "ok":  # what ffmpeg does, done with libsndfile
            info = sf.info(str(self.input))
            data, rate = sf.read(str(self.input), dtype="int32", always_2d=True)
            sub = "PCM_16" if info.subtype == "PCM_16" else "PCM_24"
            sf.write(str(self.output), data, rate, subtype=sub, format="FLAC")
        elif b in ("partial", "enospc"):
            self.output.write_bytes(b"fLaC\x00\x00\x00\x22")
        elif b == "garbage":
            self.output.write_bytes(b"RIFF....WAVEfmt ")
        elif b == "empty":
            self.output.write_bytes(b"")
        elif b == "hang":
            self.output.write_bytes(b"fLaC")
            raise subprocess.TimeoutExpired(self.cmd, timeout or 0)
        elif b == "interrupt":
            self.output.write_bytes(b"fLaC")
            raise KeyboardInterrupt
        self.returncode = self._rc
        return b"", self._stderr_bytes

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = -signal.SIGKILL
        return self.returncode


class FakeFfmpeg:
    """Replaces ``subprocess.Popen`` in flac_encoder; records every call."""

    def __init__(self, behaviour: str = "ok", *, stderr: bytes = b"", returncode: int = 0):
        self.behaviour, self.stderr, self.returncode = behaviour, stderr, returncode
        self.procs: list[FakeProc] = []
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> FakeProc:
        proc = FakeProc(cmd, self.behaviour, self.stderr, self.returncode)
        self.procs.append(proc)
        self.kwargs.append(kwargs)
        return proc


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "in" / "2026-03-26T01-35-10Z_10s_1a2b3c4d_00000001.wav", 1.0)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def killpg_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: calls.append((pid, sig)))
    return calls


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeFfmpeg) -> FakeFfmpeg:
    monkeypatch.setattr(subprocess, "Popen", fake)
    monkeypatch.setenv("SILVASONIC_FFMPEG_BINARY", "/bin/true")  # resolvable, never run
    return fake


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- the seed's table -------------------------------------------------------------------


def test_encode_creates_flac_file(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    use_fake(monkeypatch, FakeFfmpeg("ok"))
    result = encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert result.is_file()
    assert sf.info(str(result)).format == "FLAC"


def test_encode_returns_correct_path(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    use_fake(monkeypatch, FakeFfmpeg("ok"))
    assert encode_wav_to_flac(wav, out_dir, engine="ffmpeg") == out_dir / f"{wav.stem}.flac"


def test_encode_fails_on_ffmpeg_error(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    use_fake(monkeypatch, FakeFfmpeg("partial", stderr=b"Invalid data found", returncode=1))
    with pytest.raises(FlacEncodingError, match=r"exited with 1.*Invalid data found"):
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")


def test_encode_cleanup_on_failure(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    fake = use_fake(monkeypatch, FakeFfmpeg("partial", stderr=b"boom", returncode=1))
    with pytest.raises(FlacEncodingError):
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert fake.procs[0].output.parent == out_dir  # it did write there…
    assert files_in(out_dir) == []  # …and nothing is left


def test_encode_preserves_filename_stem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, out_dir: Path
) -> None:
    use_fake(monkeypatch, FakeFfmpeg("ok"))
    src = write_wav(tmp_path / "raw_20260329_143000.v2.WAV", 0.5)
    assert encode_wav_to_flac(src, out_dir, engine="ffmpeg").name == "raw_20260329_143000.v2.flac"


# ---- ffmpeg: command line, errors, process group -----------------------------------------


def test_ffmpeg_command_line_and_process_group(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    fake = use_fake(monkeypatch, FakeFfmpeg("ok"))
    encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    cmd, kwargs = fake.procs[0].cmd, fake.kwargs[0]
    assert cmd[0] == "/bin/true"
    assert cmd[1:6] == ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    assert cmd[cmd.index("-i") + 1] == f"file:{wav}"  # "a:b.wav" is never read as a protocol
    assert cmd[cmd.index("-c:a") + 1] == "flac"
    assert cmd[cmd.index("-compression_level") + 1] == "5"
    assert kwargs["start_new_session"] is True
    assert kwargs["stdin"] == subprocess.DEVNULL


def test_ffmpeg_message_is_redacted_and_trimmed(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    noise = b"x" * 5000 + b" https://user:hunter2@dav.example/in.wav: I/O error"
    use_fake(monkeypatch, FakeFfmpeg("partial", stderr=noise, returncode=1))
    with pytest.raises(FlacEncodingError) as caught:
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert "hunter2" not in str(caught.value)
    assert "I/O error" in str(caught.value)
    assert len(str(caught.value)) < 1500


@pytest.mark.parametrize("returncode", [0, 228])
def test_ffmpeg_enospc_is_temp_space_exhausted(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path, returncode: int
) -> None:
    # ffmpeg 5.1 exits 0 after "No space left on device"; newer ones exit 228
    stderr = b"Error writing trailer of out.flac: No space left on device\n"
    use_fake(monkeypatch, FakeFfmpeg("enospc", stderr=stderr, returncode=returncode))
    with pytest.raises(TempSpaceExhausted) as caught:
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert not isinstance(caught.value, FileRejected)  # never counts toward parking
    assert files_in(out_dir) == []


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [("garbage", "is not FLAC"), ("empty", "wrote nothing"), ("partial", "not lossless")],
)
def test_output_checked_even_when_ffmpeg_says_success(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path, behaviour: str, message: str
) -> None:
    use_fake(monkeypatch, FakeFfmpeg(behaviour, returncode=0))
    with pytest.raises(FlacEncodingError, match=message):
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert files_in(out_dir) == []


def test_ffmpeg_timeout_kills_process_group(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path, killpg_calls: list[Any]
) -> None:
    fake = use_fake(monkeypatch, FakeFfmpeg("hang"))
    with pytest.raises(FlacEncodingError, match="in time"):
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg", timeout_s=0.5)
    assert killpg_calls == [(FAKE_PID, signal.SIGKILL)]
    assert fake.procs[0].returncode == -signal.SIGKILL  # reaped
    assert fake.procs[0].stderr.closed
    assert files_in(out_dir) == []


def test_interrupt_while_waiting_kills_process_group(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path, killpg_calls: list[Any]
) -> None:
    # Celery's SoftTimeLimitExceeded arrives the same way: raised inside the wait
    use_fake(monkeypatch, FakeFfmpeg("interrupt"))
    with capture_logs() as logs, pytest.raises(KeyboardInterrupt):
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert killpg_calls == [(FAKE_PID, signal.SIGKILL)]
    assert files_in(out_dir) == []
    assert [e["event"] for e in logs] == ["encode.aborted"]


def test_finished_process_is_not_signalled(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path, killpg_calls: list[Any]
) -> None:
    use_fake(monkeypatch, FakeFfmpeg("ok"))
    encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert killpg_calls == []


# ---- input problems (both engines) -------------------------------------------------------


@pytest.mark.parametrize("engine", ["ffmpeg", "libflac"])
def test_missing_wav_raises_source_missing(tmp_path: Path, out_dir: Path, engine: str) -> None:
    with pytest.raises(SourceMissing) as caught:
        encode_wav_to_flac(tmp_path / "gone.wav", out_dir, engine=engine)
    assert isinstance(caught.value, FileRejected)
    assert files_in(out_dir) == []


@pytest.mark.parametrize("engine", ["ffmpeg", "libflac"])
@pytest.mark.parametrize(
    "content", [b"", b"not a wav at all" * 10, b"RIFF\x10\x00\x00\x00WAVEfmt "]
)
def test_corrupt_wav_raises_flac_encoding_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, out_dir: Path, engine: str, content: bytes
) -> None:
    fake = use_fake(monkeypatch, FakeFfmpeg("ok"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(FlacEncodingError, match="unreadable or corrupt"):
        encode_wav_to_flac(bad, out_dir, engine=engine)
    assert fake.procs == []  # refused before any process starts
    assert files_in(out_dir) == []


def test_directory_is_not_a_wav(tmp_path: Path, out_dir: Path) -> None:
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(FlacEncodingError, match="not a regular file"):
        encode_wav_to_flac(tmp_path / "dir.wav", out_dir, engine="libflac")


@pytest.mark.parametrize("engine", ["ffmpeg", "libflac"])
def test_float_wav_refused(tmp_path: Path, out_dir: Path, engine: str) -> None:
    src = tmp_path / "float.wav"
    sf.write(str(src), np.zeros(4800), 48000, subtype="FLOAT", format="WAV")
    with pytest.raises(FlacEncodingError, match="only integer PCM"):
        encode_wav_to_flac(src, out_dir, engine=engine)


# ---- libflac engine (real, in-process) ---------------------------------------------------


@pytest.mark.parametrize(("bits", "channels"), [(16, 1), (24, 2)])
def test_libflac_engine_is_lossless(
    tmp_path: Path, out_dir: Path, bits: int, channels: int
) -> None:
    expected = write_pcm_wav(tmp_path / "a.wav", 0.5, 48000, bits, channels)
    result = encode_wav_to_flac(tmp_path / "a.wav", out_dir, engine="libflac")
    decoded, rate = sf.read(str(result), dtype="int32", always_2d=True)
    assert rate == 48000
    assert np.array_equal(decoded, expected)
    assert sf.info(str(result)).subtype == f"PCM_{bits}"


def test_32bit_wav_using_only_24_bits_is_kept(tmp_path: Path, out_dir: Path) -> None:
    expected = write_pcm_wav(tmp_path / "24in32.wav", 0.3, 48000, 24, 1)
    sf.write(str(tmp_path / "a.wav"), expected, 48000, subtype="PCM_32", format="WAV")
    result = encode_wav_to_flac(tmp_path / "a.wav", out_dir, engine="libflac")
    assert np.array_equal(sf.read(str(result), dtype="int32", always_2d=True)[0], expected)


def test_32bit_wav_using_all_bits_is_refused(tmp_path: Path, out_dir: Path) -> None:
    write_pcm_wav(tmp_path / "a.wav", 0.3, 48000, 32, 1)
    with pytest.raises(FlacEncodingError, match=r"not lossless.*more than 24 bits"):
        encode_wav_to_flac(tmp_path / "a.wav", out_dir, engine="libflac")
    assert files_in(out_dir) == []


def test_libflac_timeout(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pcm_wav(tmp_path / "a.wav", 3.0, 48000, 16, 1)
    monkeypatch.setattr(flac_encoder, "_BLOCK_FRAMES", 1024)
    with pytest.raises(FlacEncodingError, match="in time"):
        encode_wav_to_flac(tmp_path / "a.wav", out_dir, engine="libflac", timeout_s=1e-6)
    assert files_in(out_dir) == []


# ---- output handling ---------------------------------------------------------------------


def test_existing_output_is_replaced_atomically(wav: Path, out_dir: Path) -> None:
    out_dir.mkdir()
    (out_dir / f"{wav.stem}.flac").write_bytes(b"stale")
    result = encode_wav_to_flac(wav, out_dir, engine="libflac")
    assert result.read_bytes()[:4] == b"fLaC"
    assert files_in(out_dir) == [f"{wav.stem}.flac"]  # no .partial.flac left


def test_full_temp_dir_when_creating_output(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    def full(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(TempSpaceExhausted, match="is full"):
        encode_wav_to_flac(wav, out_dir, engine="libflac")


def test_broken_output_on_a_full_disk_is_not_the_files_fault(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    # ffmpeg sometimes says nothing about the full disk: a short FLAC plus no free space
    use_fake(monkeypatch, FakeFfmpeg("partial", returncode=0))
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.raises(TempSpaceExhausted) as caught:
        encode_wav_to_flac(wav, out_dir, engine="ffmpeg")
    assert isinstance(caught.value.__cause__, FlacEncodingError)
    assert files_in(out_dir) == []


def test_other_output_dir_problems_are_not_the_files_fault(wav: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as caught:
        encode_wav_to_flac(wav, blocker / "out", engine="libflac")
    assert not isinstance(caught.value, UploaderError)


def test_remove_partial_outputs(tmp_path: Path) -> None:
    (tmp_path / ".a.x1.partial.flac").write_bytes(b"x")
    (tmp_path / ".b.x2.partial.flac").write_bytes(b"x")
    (tmp_path / "a.flac").write_bytes(b"x")
    assert remove_partial_outputs(tmp_path) == 2
    assert files_in(tmp_path) == ["a.flac"]


def test_failure_is_logged(tmp_path: Path, out_dir: Path) -> None:
    with capture_logs() as logs, pytest.raises(SourceMissing):
        encode_wav_to_flac(tmp_path / "gone.wav", out_dir, engine="libflac")
    assert logs == []  # refused before work: the caller decides (local_deleted or not)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    with capture_logs() as logs, pytest.raises(FlacEncodingError):
        encode_wav_to_flac(bad, out_dir, engine="libflac")
    assert logs == []
    write_pcm_wav(tmp_path / "x.wav", 0.2, 48000, 32, 1)
    with capture_logs() as logs, pytest.raises(FlacEncodingError):
        encode_wav_to_flac(tmp_path / "x.wav", out_dir, engine="libflac")
    assert [(e["event"], e["engine"], e["error_kind"]) for e in logs] == [
        ("encode.failed", "libflac", "FlacEncodingError")
    ]


# ---- configuration -----------------------------------------------------------------------


def test_default_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SILVASONIC_FLAC_ENGINE", raising=False)
    assert default_engine() == "libflac"  # issue 7: ~10x less CPU per file (bench/README.md)
    monkeypatch.setenv("SILVASONIC_FLAC_ENGINE", " LibFLAC ")
    assert default_engine() == "libflac"


def test_unknown_engine_refused(monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path) -> None:
    monkeypatch.setenv("SILVASONIC_FLAC_ENGINE", "lame")
    with pytest.raises(ValueError, match="SILVASONIC_FLAC_ENGINE='lame'"):
        default_engine()
    with pytest.raises(ValueError, match="ffmpeg, libflac"):
        encode_wav_to_flac(wav, out_dir, engine="sox")


def test_engine_from_environment_is_used(
    monkeypatch: pytest.MonkeyPatch, wav: Path, out_dir: Path
) -> None:
    fake = use_fake(monkeypatch, FakeFfmpeg("ok"))
    monkeypatch.setenv("SILVASONIC_FLAC_ENGINE", "libflac")
    encode_wav_to_flac(wav, out_dir)
    assert fake.procs == []
    monkeypatch.setenv("SILVASONIC_FLAC_ENGINE", "ffmpeg")
    encode_wav_to_flac(wav, out_dir)
    assert len(fake.procs) == 1


def test_non_positive_timeout_refused(wav: Path, out_dir: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        encode_wav_to_flac(wav, out_dir, engine="libflac", timeout_s=0)


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_resolve_ffmpeg_prefers_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine = make_executable(tmp_path / "custom" / "my-ffmpeg")
    make_executable(tmp_path / "bin" / "ffmpeg")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("SILVASONIC_FFMPEG_BINARY", str(mine))
    assert resolve_ffmpeg() == str(mine)


def test_resolve_ffmpeg_refuses_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "not-exec").write_text("")
    for value in (str(tmp_path / "nowhere"), str(tmp_path / "not-exec")):
        monkeypatch.setenv("SILVASONIC_FFMPEG_BINARY", value)
        with pytest.raises(FileNotFoundError, match="SILVASONIC_FFMPEG_BINARY"):
            resolve_ffmpeg()


def test_resolve_ffmpeg_then_path_then_wheel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import imageio_ffmpeg

    monkeypatch.delenv("SILVASONIC_FFMPEG_BINARY", raising=False)
    on_path = make_executable(tmp_path / "bin" / "ffmpeg")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert resolve_ffmpeg() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert resolve_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()


def test_default_timeout_grows_with_size() -> None:
    assert default_timeout_s(0) == 30.0
    assert default_timeout_s(10_000_000) == 40.0
    assert default_timeout_s(100_000_000) == 130.0


# ---- helpers -----------------------------------------------------------------------------


def test_file_md5_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    assert file_md5(tmp_path / "f") == hashlib.md5(data).hexdigest()


def test_verify_lossless_detects_differences(tmp_path: Path) -> None:
    expected = write_pcm_wav(tmp_path / "a.wav", 0.3, 48000, 16, 2)
    flac = tmp_path / "a.flac"
    sf.write(str(flac), expected, 48000, subtype="PCM_16", format="FLAC")
    assert verify_lossless(tmp_path / "a.wav", flac)

    changed = expected.copy()
    changed[-1, 1] += 1 << 16  # one LSB of one sample in the last frame
    sf.write(str(flac), changed, 48000, subtype="PCM_16", format="FLAC")
    assert not verify_lossless(tmp_path / "a.wav", flac)

    sf.write(str(flac), expected[:-1], 48000, subtype="PCM_16", format="FLAC")
    assert not verify_lossless(tmp_path / "a.wav", flac)  # one frame short

    sf.write(str(flac), expected, 44100, subtype="PCM_16", format="FLAC")
    assert not verify_lossless(tmp_path / "a.wav", flac)  # same samples, other rate

    flac.write_bytes(b"fLaC and then nothing")
    assert not verify_lossless(tmp_path / "a.wav", flac)
    assert not verify_lossless(tmp_path / "missing.wav", flac)
