"""How big a worker container's temp tmpfs may be: the one place that knows the tmpfs is RAM
inside the worker's memory limit. :class:`controller_ext.container_spec.UploaderEnvConfig`
asks it for the size of the worker's ``/tmp``.

A tmpfs page is charged to the memory cgroup of the container that writes it and cannot be
reclaimed without swap. A temp folder allowed to grow past what the worker's own processes leave
of the limit therefore never ends in "disk full", which the encode step handles (the pair is
retried later and never parked, ``TempSpaceExhausted``): the kernel's OOM killer strikes first,
and it may pick the worker's main process rather than the writer (both seen on Podman 4.3,
cgroup v1). So the tmpfs is capped at the memory limit minus what the worker itself takes, and
by default it is exactly that: raising ``SILVASONIC_UPLOADER_MEMORY_LIMIT`` raises both.
"""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024 * KIB
# What a worker's own processes (main process, pool child, rclone rcd) hold at most, with
# margin: measured ~125 MB resident when idle and ~162 MB while encoding and sending 10 s
# 384 kHz segments to two remotes (tests/system, cgroup v1 memory.stat total_rss).
WORKER_RESERVE_BYTES = 192 * MIB
# a derived temp folder smaller than this is a memory limit too small for the worker
MIN_DERIVED_TEMP_BYTES = 32 * MIB

MEMORY_VAR = "SILVASONIC_UPLOADER_MEMORY_LIMIT"
TEMP_VAR = "SILVASONIC_UPLOADER_TEMP_SIZE"
# Podman's grammar for sizes (podman-py's ``to_bytes``): bytes, or a number with b/k/m/g
_SIZE = re.compile(r"([1-9][0-9]*)([bkmg]?)", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": 1024 * MIB}


def size_bytes(text: str, variable: str) -> int:
    """``text`` (``256m``, ``1g``, ``268435456``) in bytes; ValueError naming ``variable``."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{variable}={text!r} is not a size: use a number with k, m or g (256m)")
    return int(match[1]) * _UNIT[match[2].lower()]


def _render(size: int) -> str:
    return f"{size // MIB}m" if size % MIB == 0 else f"{size // KIB}k"


def worker_temp_size(memory_limit: str, temp_size: str | None) -> str:
    """The size of a worker's temp tmpfs, for Podman's ``size=`` option.

    ``temp_size`` (``SILVASONIC_UPLOADER_TEMP_SIZE``; None or blank: derive it) must leave
    :data:`WORKER_RESERVE_BYTES` of ``memory_limit`` to the worker; a derived size is the memory
    limit minus that reserve, whole MiB. Raises ValueError saying which setting to change.
    """
    memory = size_bytes(memory_limit, MEMORY_VAR)
    room = memory - WORKER_RESERVE_BYTES
    reserve = _render(WORKER_RESERVE_BYTES)
    if temp_size is None or not temp_size.strip():
        if room < MIN_DERIVED_TEMP_BYTES:
            raise ValueError(
                f"{MEMORY_VAR}={memory_limit} leaves no room for the worker's temp folder (a "
                f"tmpfs inside that limit; the worker itself takes up to {reserve}): set it to "
                f"at least {_render(WORKER_RESERVE_BYTES + MIN_DERIVED_TEMP_BYTES)}"
            )
        return _render(room - room % MIB)
    temp = size_bytes(temp_size, TEMP_VAR)
    if temp > room:
        raise ValueError(
            f"{TEMP_VAR}={temp_size} does not fit in {MEMORY_VAR}={memory_limit}: the temp "
            f"folder is a tmpfs, RAM inside that limit, and the worker itself takes up to "
            f"{reserve}. Raise {MEMORY_VAR} to at least {_render(temp + WORKER_RESERVE_BYTES)}, "
            f"or leave {TEMP_VAR} unset (it is then the limit minus {reserve})"
        )
    return temp_size.strip().lower()
