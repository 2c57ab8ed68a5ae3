"""The size of a worker's temp tmpfs: RAM inside its memory limit, with room for the worker."""

from __future__ import annotations

import pytest

from controller_ext.temp_budget import MIB, WORKER_RESERVE_BYTES, size_bytes, worker_temp_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256m", 256 * MIB), ("1G", 1024 * MIB), ("512k", 512 * 1024), ("268435456", 256 * MIB),
     ("100b", 100), (" 64m ", 64 * MIB)],
)  # fmt: skip
def test_sizes_in_podmans_grammar(text: str, expected: int) -> None:
    assert size_bytes(text, "X") == expected


@pytest.mark.parametrize("text", ["", "lots", "256mb", "0m", "-5m", "1.5g"])
def test_a_size_podman_would_not_take_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="SILVASONIC_UPLOADER_TEMP_SIZE="):
        size_bytes(text, "SILVASONIC_UPLOADER_TEMP_SIZE")


@pytest.mark.parametrize(
    ("memory", "derived"), [("256m", "64m"), ("512m", "320m"), ("1g", "832m"), ("300000k", "100m")]
)
def test_unset_the_temp_size_is_the_memory_limit_minus_the_workers_reserve(
    memory: str, derived: str
) -> None:
    assert worker_temp_size(memory, None) == derived
    assert worker_temp_size(memory, "  ") == derived  # compose passes an empty value through
    assert size_bytes(derived, "") + WORKER_RESERVE_BYTES <= size_bytes(memory, "")


def test_an_explicit_temp_size_that_fits_is_kept() -> None:
    assert worker_temp_size("256m", "32M") == "32m"
    assert worker_temp_size("704m", "512m") == "512m"  # exactly the room there is


def test_an_explicit_temp_size_that_does_not_fit_says_what_to_change() -> None:
    with pytest.raises(ValueError) as refused:
        worker_temp_size("256m", "512m")

    message = str(refused.value)
    assert "SILVASONIC_UPLOADER_TEMP_SIZE=512m does not fit" in message
    assert "SILVASONIC_UPLOADER_MEMORY_LIMIT to at least 704m" in message


def test_a_memory_limit_with_no_room_for_a_temp_folder_is_refused() -> None:
    with pytest.raises(ValueError, match="set it to at least 224m"):
        worker_temp_size("200m", None)
    with pytest.raises(ValueError, match="SILVASONIC_UPLOADER_MEMORY_LIMIT='lots'"):
        worker_temp_size("lots", None)
