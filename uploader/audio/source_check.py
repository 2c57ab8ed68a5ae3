"""Does a WAV hold what its header and its index row promise? Checked before every encode.

A WAV cut short (a recorder that crashed mid-write, a copy that stopped, a disk error) still
decodes: libsndfile reads what is there. Encoded and uploaded, it would be flagged and then
deleted, leaving a short archive copy as the only one. So before encoding, the WAV must agree
with three things:

1. **its own header**: the ``data`` chunk may not promise more bytes than the file holds
   (RIFF, and RF64's ``ds64`` size);
2. **``recordings.duration``** (seconds, written by upstream's indexer from soundfile, i.e.
   frames / sample rate): within :data:`DURATION_TOLERANCE_S`, which allows an indexer that
   rounds to milliseconds; 0 or less means unknown and is not compared. For a recording with a
   processed twin (``file_processed`` set) upstream's indexer stores the *processed* file's
   duration, which ffmpeg's segmenter cuts at its own packet boundary: then within
   :data:`TWIN_DURATION_TOLERANCE_S`;
3. **``recordings.filesize_raw``** (bytes): exactly, when it is not 0 (upstream writes 0 when
   the raw file was missing at index time).

A mismatch raises :class:`SourceMismatch`; the pair is parked at once with error kind
``source_mismatch`` (trying again cannot change the file) and the recording is never flagged.
Cost: one ``stat``, one read of the header (a few KiB); the frame count comes from the same
libsndfile open the encoder makes anyway.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from uploader.errors import SourceMismatch

#: ``recordings.duration`` may differ from frames / sample rate by this much (rounding by an
#: indexer); a truncated segment is off by far more (seconds)
DURATION_TOLERANCE_S = 0.01
#: the same for a duration measured on the processed twin (another stream, cut elsewhere)
TWIN_DURATION_TOLERANCE_S = 0.5
#: how much of the file is read to find the ``data`` chunk (the ``fmt``/``LIST``/``bext``
#: chunks in front of it are small)
_HEADER_READ = 64 * 1024


@dataclass(frozen=True)
class Expectation:
    """What the index row says about the WAV."""

    duration_s: float
    filesize_raw: int
    #: ``duration`` was measured on the processed twin (``recordings.file_processed`` is set)
    duration_from_processed: bool = False


@dataclass(frozen=True)
class DataChunk:
    """Where the samples are and how many bytes the header promises."""

    offset: int
    declared_bytes: int


def data_chunk(path: Path) -> DataChunk | None:
    """The ``data`` chunk of a RIFF/RF64 WAVE file, or None when there is none in the first
    :data:`_HEADER_READ` bytes (then libsndfile's own checks decide)."""
    with path.open("rb") as f:
        head = f.read(_HEADER_READ)
    if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RF64", b"BW64"):
        return None
    rf64_data_size: int | None = None
    pos = 12
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (size,) = struct.unpack_from("<I", head, pos + 4)
        if chunk_id == b"ds64" and pos + 8 + 16 <= len(head):
            (rf64_data_size,) = struct.unpack_from("<Q", head, pos + 8 + 8)
        if chunk_id == b"data":
            declared = rf64_data_size if size == 0xFFFFFFFF and rf64_data_size else size
            return DataChunk(pos + 8, int(declared))
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def check(
    path: Path,
    expect: Expectation,
    *,
    frames: int,
    samplerate: int,
    block_align: int,
    size_bytes: int,
    recording_id: int | None = None,
) -> None:
    """Raise :class:`SourceMismatch` when the WAV at ``path`` (``frames`` decodable at
    ``samplerate``, ``block_align`` bytes a frame, ``size_bytes`` on disk) disagrees with its
    header or with ``expect``."""
    problems: list[str] = []
    chunk = data_chunk(path)
    if chunk is not None and block_align > 0:
        available = max(0, size_bytes - chunk.offset)
        if available < chunk.declared_bytes:
            promised = chunk.declared_bytes // block_align / samplerate
            held = available // block_align / samplerate
            problems.append(
                f"it holds {held:.3f} s of audio but its header promises {promised:.3f} s "
                "(the file is cut short)"
            )
    actual_s = frames / samplerate if samplerate else 0.0
    tolerance = (
        TWIN_DURATION_TOLERANCE_S if expect.duration_from_processed else DURATION_TOLERANCE_S
    )
    if not math.isfinite(expect.duration_s):
        problems.append("the index holds no finite duration")
    elif expect.duration_s > 0 and abs(actual_s - expect.duration_s) > tolerance:
        problems.append(f"it decodes to {actual_s:.3f} s, the index says {expect.duration_s:.3f} s")
    if expect.filesize_raw > 0 and size_bytes != expect.filesize_raw:
        problems.append(f"it is {size_bytes} bytes, the index says {expect.filesize_raw}")
    if problems:
        raise SourceMismatch(
            f"WAV {path.name!r} does not match its recording: {'; '.join(problems)}. It is "
            "parked, never flagged uploaded; check the recorder and the indexer, then "
            "`parked retry` once the file or its row is right",
            recording_id=recording_id,
        )
