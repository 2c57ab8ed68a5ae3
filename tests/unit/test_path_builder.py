"""path_builder: the remote path convention, the escape rules, and the workspace-root check
(on real files and symlinks in a temp folder)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from uploader.errors import FileRejected, UnsafePath
from uploader.path_builder import (
    build_remote_path,
    escape_segment,
    flac_name,
    resolve_local_path,
    station_slug,
)

T = datetime(2026, 3, 29, 14, 30, 0, tzinfo=UTC)


# ---- the seed's table -------------------------------------------------------------------


def test_builds_correct_remote_path() -> None:
    path = build_remote_path("Silvasonic MVP", "ultramic-01", T, "raw_20260329_143000.wav")
    assert path == "silvasonic/silvasonic-mvp/ultramic-01/2026-03-29/raw_20260329_143000.flac"


def test_date_extracted_from_time() -> None:
    path = build_remote_path("s", "m", datetime(2026, 3, 29, 14, 30, 0), "a.wav")
    assert path.split("/")[3] == "2026-03-29"


def test_station_name_slugified() -> None:
    assert station_slug("Silvasonic Müller-Station [Test]") == "silvasonic-mueller-station-test"
    path = build_remote_path("Silvasonic Müller-Station [Test]", "m", T, "a.wav")
    assert path.split("/")[1] == "silvasonic-mueller-station-test"


def test_station_name_simple() -> None:
    assert station_slug("Silvasonic MVP") == "silvasonic-mvp"


def test_filename_extension_replaced() -> None:
    assert build_remote_path("s", "m", T, "raw_1.wav").endswith("/raw_1.flac")


# ---- dates -------------------------------------------------------------------------------


def test_date_is_utc_for_aware_times() -> None:
    # 00:30 in UTC+02:00 is still the previous day in UTC
    local = datetime(2026, 3, 30, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert build_remote_path("s", "m", local, "a.wav").split("/")[3] == "2026-03-29"


def test_naive_time_is_taken_as_utc() -> None:
    naive = datetime(2026, 12, 31, 23, 59, 59)
    assert build_remote_path("s", "m", naive, "a.wav").split("/")[3] == "2026-12-31"


# ---- station slug ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Straße am Bärensee", "strasse-am-baerensee"),
        ("ÄÖÜ Öko", "aeoeue-oeko"),
        ("Mu\u0308ller", "mueller"),  # decomposed ü (NFD) gets the same slug as ü
        ("  --Hide & Seek--  ", "hide-seek"),
        ("", "station"),
        ("!!! ???", "station"),
    ],
)
def test_station_slug_cases(name: str, slug: str) -> None:
    assert station_slug(name) == slug


# ---- file names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("raw_1.WAV", "raw_1.flac"),
        ("raw_1.Wave", "raw_1.flac"),
        ("raw.v2.wav", "raw.v2.flac"),
        ("no_extension", "no_extension.flac"),
        (
            "2026-03-26T01-35-10Z_10s_1a2b3c4d_00000001.wav",
            "2026-03-26T01-35-10Z_10s_1a2b3c4d_00000001.flac",
        ),
    ],
)
def test_flac_name(filename: str, expected: str) -> None:
    assert flac_name(filename) == expected


# ---- unsafe values are escaped, deterministically, never refused -------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("ultramic-384-evo-034f", "ultramic-384-evo-034f"),
        ("Mikrofon Süd", "Mikrofon Süd"),
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("", "%"),
        ("../../etc", "..%2F..%2Fetc"),
        ("a\x00b", "a%00b"),
        ("a\nb\x7f", "a%0Ab%7F"),
        ("a\x85b", "a%C2%85b"),  # C1 control: its UTF-8 bytes
        ("50%", "50%25"),
        ("%2E%2E", "%252E%252E"),  # a value that looks escaped is escaped again
        ("\udcff", "%ED%B3%BF"),  # a lone surrogate never raises
    ],
)
def test_escape_segment(value: str, escaped: str) -> None:
    assert escape_segment(value) == escaped


def test_escape_is_one_to_one() -> None:
    values = ["", ".", "..", "%", "%2E", "%2E%2E", "a/b", "a%2Fb", "a\\b", "a%5Cb", "\x00", "%00"]
    assert len({escape_segment(v) for v in values}) == len(values)


@pytest.mark.parametrize("sensor_id", ["..", ".", "", "../../../etc", "a/b", "x\x00", "\\..\\"])
@pytest.mark.parametrize(
    "filename", ["../../x.wav", "..", ".", "a/b.wav", "a\\..\\b.wav", "\n.wav"]
)
def test_unsafe_sensor_and_filename_stay_in_their_folder(sensor_id: str, filename: str) -> None:
    path = build_remote_path("Station", sensor_id, T, filename)
    segments = path.split("/")
    assert len(segments) == 5
    assert segments[:2] == ["silvasonic", "station"]
    assert segments[3] == "2026-03-29"
    assert segments[4].endswith(".flac")
    for segment in segments:
        assert segment not in ("", ".", "..")
        assert "\\" not in segment
        assert not any(ord(c) < 32 or ord(c) == 127 for c in segment)
    # the same input always gives the same path (retries and every remote agree)
    assert build_remote_path("Station", sensor_id, T, filename) == path


def test_filename_with_folder_is_escaped_not_shortened() -> None:
    assert flac_name("ws/data/raw/a.wav") == "ws%2Fdata%2Fraw%2Fa.flac"
    assert flac_name("a.b/c") == "a.b%2Fc.flac"  # the "extension" holds a slash: none


# ---- target_path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "prefix"),
    [
        (None, ""),
        ("", ""),
        ("/", "/"),  # a local remote at the file system's root
        ("bucket", "bucket/"),
        ("bucket/archive/", "bucket/archive/"),
        ("/mnt/usb/archive/", "/mnt/usb/archive/"),  # absolute stays absolute (local, sftp)
        ("//mnt//usb", "/mnt/usb/"),
        ("a//b", "a/b/"),
        ("a/../../b", "a/%2E%2E/%2E%2E/b/"),
        ("/../../etc", "/%2E%2E/%2E%2E/etc/"),
        ("./x", "%2E/x/"),
        ("Nextcloud/Aufnahmen 100%", "Nextcloud/Aufnahmen 100%/"),  # the operator's % stays
        ("a\\..\\b", "a%5C..%5Cb/"),
        ("tab\there", "tab%09here/"),
    ],
)
def test_target_path_prefix(target: str | None, prefix: str) -> None:
    path = build_remote_path("S", "m", T, "a.wav", target)
    assert path == f"{prefix}silvasonic/s/m/2026-03-29/a.flac"


# ---- resolve_local_path ------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "mic" / "data" / "raw").mkdir(parents=True)
    (root / "mic" / "data" / "raw" / "a.wav").write_bytes(b"RIFF")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF")
    return outside


def test_resolves_inside_the_root(root: Path) -> None:
    assert resolve_local_path(root, "mic/data/raw/a.wav") == root.resolve() / "mic/data/raw/a.wav"


def test_missing_file_is_the_callers_business(root: Path) -> None:
    path = resolve_local_path(root, "mic/data/raw/gone.wav")
    assert path == root.resolve() / "mic/data/raw/gone.wav"
    assert not path.exists()


def test_dotdot_inside_the_root_is_allowed(root: Path) -> None:
    assert resolve_local_path(root, "mic/data/../data/raw/a.wav").name == "a.wav"


@pytest.mark.parametrize(
    "file_raw",
    ["../../etc/passwd", "../outside/secret.wav", "mic/../../x.wav", "..", ".", "mic/..", ""],
)
def test_traversal_refused(root: Path, file_raw: str) -> None:
    with pytest.raises(UnsafePath) as caught:
        resolve_local_path(root, file_raw)
    assert isinstance(caught.value, FileRejected)


def test_absolute_file_raw_refused(root: Path) -> None:
    inside_but_absolute = str(root / "mic" / "data" / "raw" / "a.wav")
    for file_raw in ("/etc/passwd", inside_but_absolute):
        with pytest.raises(UnsafePath, match="absolute"):
            resolve_local_path(root, file_raw)


def test_nul_refused(root: Path) -> None:
    with pytest.raises(UnsafePath, match="NUL"):
        resolve_local_path(root, "mic/a\x00.wav")


def test_symlinked_file_pointing_out_refused(root: Path, outside: Path) -> None:
    os.symlink(outside / "secret.wav", root / "mic" / "data" / "raw" / "link.wav")
    with pytest.raises(UnsafePath, match="outside"):
        resolve_local_path(root, "mic/data/raw/link.wav")


def test_dangling_symlink_pointing_out_refused(root: Path, outside: Path) -> None:
    os.symlink(outside / "does-not-exist.wav", root / "mic" / "data" / "raw" / "dangling.wav")
    with pytest.raises(UnsafePath, match="outside"):
        resolve_local_path(root, "mic/data/raw/dangling.wav")


def test_symlinked_parent_folder_pointing_out_refused(root: Path, outside: Path) -> None:
    os.symlink(outside, root / "mic" / "data" / "evil")
    with pytest.raises(UnsafePath, match="outside"):
        resolve_local_path(root, "mic/data/evil/secret.wav")


def test_symlink_inside_the_root_is_followed(root: Path) -> None:
    os.symlink(root / "mic" / "data" / "raw" / "a.wav", root / "mic" / "alias.wav")
    assert resolve_local_path(root, "mic/alias.wav") == root.resolve() / "mic/data/raw/a.wav"


def test_symlinked_root_itself_is_fine(root: Path, tmp_path: Path) -> None:
    os.symlink(root, tmp_path / "root-link")
    resolved = resolve_local_path(tmp_path / "root-link", "mic/data/raw/a.wav")
    assert resolved == root.resolve() / "mic/data/raw/a.wav"


def test_symlink_loop_refused(root: Path) -> None:
    os.symlink(root / "mic" / "loop-b", root / "mic" / "loop-a")
    os.symlink(root / "mic" / "loop-a", root / "mic" / "loop-b")
    with pytest.raises(UnsafePath):
        resolve_local_path(root, "mic/loop-a")
