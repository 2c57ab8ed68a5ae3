"""A WAV must hold what its header and its index row promise (uploader/audio/source_check.py),
checked on real files through the encoder that calls it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import soundfile as sf

from tests.factories import write_wav
from uploader.audio import source_check
from uploader.audio.flac_encoder import encode_checked
from uploader.audio.source_check import Expectation
from uploader.errors import SourceMismatch

pytestmark = pytest.mark.unit


def _wav(tmp_path: Path, seconds: float = 2.0, rate: int = 48000, bits: int = 16) -> Path:
    return write_wav(tmp_path / "in" / "rec.wav", seconds=seconds, rate=rate, bits=bits)


def _cut(path: Path, keep_s: float, rate: int = 48000, sample_bytes: int = 2) -> None:
    """Cut the file after ``keep_s`` of samples, leaving its header as it was."""
    data = path.read_bytes()
    path.write_bytes(data[: 44 + int(keep_s * rate) * sample_bytes])


def test_a_whole_wav_that_matches_its_row_is_encoded(tmp_path: Path) -> None:
    wav = _wav(tmp_path)
    out = encode_checked(wav, tmp_path / "out", expect=Expectation(2.0, wav.stat().st_size))
    assert out.size_bytes > 0 and len(out.md5) == 32
    assert sf.info(str(out.path)).frames == 96000


def test_a_wav_cut_short_under_its_header_is_refused(tmp_path: Path) -> None:
    # the review's case: 1.7 s of audio under a header that promises 5 s
    wav = _wav(tmp_path, seconds=5.0)
    size = wav.stat().st_size
    _cut(wav, 1.7)
    with pytest.raises(SourceMismatch) as info:
        encode_checked(wav, tmp_path / "out", expect=Expectation(5.0, size), recording_id=9)
    text = str(info.value)
    assert "recording 9" in text and "header promises 5.000 s" in text and "1.700 s" in text
    assert "parked" in text
    assert not list((tmp_path / "out").glob("*"))  # nothing encoded, nothing left behind


def test_the_header_is_checked_even_when_the_row_says_nothing(tmp_path: Path) -> None:
    wav = _wav(tmp_path, seconds=2.0)
    _cut(wav, 1.0)
    with pytest.raises(SourceMismatch, match="cut short"):
        encode_checked(wav, tmp_path / "out", expect=Expectation(0.0, 0))


def test_a_duration_other_than_the_index_says_is_refused(tmp_path: Path) -> None:
    wav = _wav(tmp_path, seconds=2.0)
    with pytest.raises(SourceMismatch, match=re.escape("the index says 10.000 s")):
        encode_checked(wav, tmp_path / "out", expect=Expectation(10.0, 0))


def test_the_duration_tolerance_allows_an_indexer_that_rounds(tmp_path: Path) -> None:
    wav = _wav(tmp_path, seconds=2.0)
    near = 2.0 + source_check.DURATION_TOLERANCE_S * 0.9
    encode_checked(wav, tmp_path / "out", expect=Expectation(near, 0))


def test_a_size_other_than_filesize_raw_is_refused_unless_unknown(tmp_path: Path) -> None:
    wav = _wav(tmp_path, seconds=1.0)
    size = wav.stat().st_size
    with pytest.raises(SourceMismatch, match=f"the index says {size + 1}"):
        encode_checked(wav, tmp_path / "out", expect=Expectation(1.0, size + 1))
    encode_checked(wav, tmp_path / "out", expect=Expectation(1.0, 0))  # 0: unknown, skipped


def test_24_bit_high_rate_wavs_are_measured_in_their_own_frames(tmp_path: Path) -> None:
    wav = _wav(tmp_path, seconds=1.0, rate=384000, bits=24)
    size = wav.stat().st_size
    encode_checked(wav, tmp_path / "out", expect=Expectation(1.0, size))
    _cut(wav, 0.5, rate=384000, sample_bytes=3)
    with pytest.raises(SourceMismatch, match=re.escape("0.500 s of audio")):
        encode_checked(wav, tmp_path / "out", expect=Expectation(1.0, 0))


def test_data_chunk_skips_padded_chunks_before_the_samples(tmp_path: Path) -> None:
    wav = _wav(tmp_path, seconds=0.5)
    raw = wav.read_bytes()
    fmt_end = 12 + 8 + int.from_bytes(raw[16:20], "little")
    odd = b"junk" + (3).to_bytes(4, "little") + b"abc" + b"\0"  # odd size, padded
    patched = raw[:fmt_end] + odd + raw[fmt_end:]
    riff = (len(patched) - 8).to_bytes(4, "little")
    wav.write_bytes(patched[:4] + riff + patched[8:])
    chunk = source_check.data_chunk(wav)
    assert chunk is not None
    assert chunk.offset == fmt_end + len(odd) + 8
    assert chunk.declared_bytes == 0.5 * 48000 * 2


def test_no_wave_header_leaves_the_decision_to_the_decoder(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a riff file at all")
    assert source_check.data_chunk(path) is None


def test_a_duration_measured_on_the_processed_twin_gets_half_a_second(tmp_path: Path) -> None:
    # upstream's indexer stores the processed file's duration when there is one: ffmpeg cuts
    # that stream at its own packet boundary, so it may differ from the raw file's by a period
    wav = _wav(tmp_path, seconds=2.0)
    encode_checked(wav, tmp_path / "out", expect=Expectation(2.3, 0, True))
    with pytest.raises(SourceMismatch):
        encode_checked(wav, tmp_path / "out", expect=Expectation(2.3, 0, False))
    with pytest.raises(SourceMismatch):
        encode_checked(wav, tmp_path / "out", expect=Expectation(2.7, 0, True))
