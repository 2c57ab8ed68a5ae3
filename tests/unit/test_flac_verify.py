"""The per-file check of an encoder's output (SILVASONIC_FLAC_VERIFY, issue 7): ``fast`` checks
a libflac output of a 16/24-bit WAV by STREAMINFO and its last block; everything else (ffmpeg,
8/32-bit sources, ``full``) is decoded and compared in full. The engine itself is proven
lossless for the recorders' formats by test_flac_encoder_e2e's sample-by-sample tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.factories import write_pcm_wav, write_wav
from uploader.audio import flac_encoder
from uploader.audio.flac_encoder import encode_wav_to_flac, verify_mode
from uploader.errors import FlacEncodingError


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count which check ran."""
    counted = {"full": 0, "fast": 0}
    full, fast = flac_encoder._mismatch, flac_encoder._tail_mismatch

    def count_full(*a: Any) -> str | None:
        counted["full"] += 1
        return full(*a)

    def count_fast(*a: Any) -> str | None:
        counted["fast"] += 1
        return fast(*a)

    monkeypatch.setattr(flac_encoder, "_mismatch", count_full)
    monkeypatch.setattr(flac_encoder, "_tail_mismatch", count_fast)
    return counted


def test_verify_mode_default_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SILVASONIC_FLAC_VERIFY", raising=False)
    assert verify_mode() == "fast"
    monkeypatch.setenv("SILVASONIC_FLAC_VERIFY", " FULL ")
    assert verify_mode() == "full"
    monkeypatch.setenv("SILVASONIC_FLAC_VERIFY", "never")
    with pytest.raises(ValueError, match="SILVASONIC_FLAC_VERIFY='never'"):
        verify_mode()


@pytest.mark.parametrize(("bits", "channels"), [(16, 1), (24, 2)])
def test_fast_mode_checks_libflac_by_its_tail_and_the_output_is_lossless(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, calls: dict[str, int], bits: int, channels: int
) -> None:
    monkeypatch.delenv("SILVASONIC_FLAC_VERIFY", raising=False)
    expected = write_pcm_wav(tmp_path / "a.wav", 1.5, 48_000, bits, channels)
    flac = encode_wav_to_flac(tmp_path / "a.wav", tmp_path / "out", engine="libflac")
    assert calls == {"full": 0, "fast": 1}
    assert np.array_equal(sf.read(str(flac), dtype="int32", always_2d=True)[0], expected)


def test_full_mode_and_ffmpeg_decode_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, calls: dict[str, int]
) -> None:
    wav = write_wav(tmp_path / "a.wav", seconds=0.5)
    monkeypatch.setenv("SILVASONIC_FLAC_VERIFY", "full")
    encode_wav_to_flac(wav, tmp_path / "out", engine="libflac")
    assert calls == {"full": 1, "fast": 0}
    monkeypatch.setenv("SILVASONIC_FLAC_VERIFY", "fast")  # never applies to ffmpeg
    encode_wav_to_flac(wav, tmp_path / "out", engine="ffmpeg")
    assert calls == {"full": 2, "fast": 0}


def test_32_bit_sources_are_always_checked_in_full(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, calls: dict[str, int]
) -> None:
    monkeypatch.setenv("SILVASONIC_FLAC_VERIFY", "fast")
    write_pcm_wav(tmp_path / "a.wav", 0.3, 48_000, 32, 1)  # uses all 32 bits: lossy as 24
    with pytest.raises(FlacEncodingError, match="not lossless"):
        encode_wav_to_flac(tmp_path / "a.wav", tmp_path / "out", engine="libflac")
    assert calls["full"] == 1 and calls["fast"] == 0
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("cut", [100, 5_000, 40_000], ids=["last-bytes", "last-frames", "half"])
def test_fast_mode_refuses_a_libflac_output_cut_short(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cut: int
) -> None:
    """What a per-file check must still catch with a proven encoder: a file not written to its
    end (a full disk at close)."""
    monkeypatch.delenv("SILVASONIC_FLAC_VERIFY", raising=False)
    wav = write_wav(tmp_path / "a.wav", seconds=2.0)
    real = flac_encoder._run_libflac

    def cut_short(wav_path: Path, partial: Path, *rest: Any) -> None:
        real(wav_path, partial, *rest)
        data = partial.read_bytes()
        partial.write_bytes(data[: len(data) - min(cut, len(data) // 2)])

    monkeypatch.setattr(flac_encoder, "_run_libflac", cut_short)
    with pytest.raises(FlacEncodingError, match="not lossless"):
        encode_wav_to_flac(wav, tmp_path / "out", engine="libflac")
    assert list((tmp_path / "out").iterdir()) == []


def test_fast_mode_refuses_a_wrong_frame_count(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", seconds=1.0)
    shorter = write_wav(tmp_path / "b.wav", seconds=0.9)
    other = encode_wav_to_flac(shorter, tmp_path / "out", engine="libflac")
    assert flac_encoder._tail_mismatch(wav, other) is not None
    assert flac_encoder._tail_mismatch(shorter, other) is None
