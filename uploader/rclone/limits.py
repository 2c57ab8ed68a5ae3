"""The bandwidth limit (rclone's ``--bwlimit`` syntax) and the hard wall-clock limit of one
upload derived from it.

Part of the rclone client (``uploader.rclone.client`` is the front door and re-exports these
names). Public so that settings can validate ``uploader.bandwidth_limit`` early and the upload
task can set its soft time limit above :func:`hard_limit_s` for the largest file it sends.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from uploader.errors import SettingsInvalid

#: hard wall-clock limit = base + factor x size / rate (see :func:`hard_limit_s`)
HARD_LIMIT_BASE_S = 60.0
HARD_LIMIT_FACTOR = 3.0
#: the rate assumed for the hard limit when it would otherwise be faster: a configured limit
#: is a ceiling, not a promise; 64 KiB/s is a poor GSM uplink
LINK_FLOOR_BPS = 64 * 1024

# rclone's grammar for --bwlimit (fs.BwTimetable and fs.SizeSuffix of rclone 1.75), checked
# value by value against the binary (tests/integration/test_bwlimit_grammar.py): a number as Go
# parses floats (sign, decimals, exponent), then one optional suffix B/K/M/G/T/P/E, optionally
# followed by "i" or "iB"; a bare number means KiB/s.
_UNITS = {
    "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60,
}  # fmt: skip
_RATE_RE = re.compile(
    r"^(?P<num>\+?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(?P<unit>[bkmgtpe](?:i|ib)?)?$",
    re.IGNORECASE,
)
_DAY = (
    r"mon(?:day)?|tue(?:sday)?|wed(?:nesday)?|thu(?:rsday)?|fri(?:day)?|sat(?:urday)?"
    r"|sun(?:day)?"
)
_SLOT_RE = re.compile(
    rf"^(?:(?P<day>{_DAY})-)?(?P<hh>[01]\d|2[0-3]):(?P<mm>[0-5]\d),(?P<rate>.+)$",
    re.IGNORECASE,
)
#: the largest rate kept as a number (bytes/s); rclone takes anything finite, which above
#: this is no limit in practice
_MAX_BPS = (1 << 63) - 1


@dataclass(frozen=True)
class BandwidthLimit:
    """A validated ``--bwlimit`` value.

    ``arg`` is what rclone gets (None: no flag, unlimited); ``slowest_bps`` is the slowest
    upload rate the limit can impose at any time of the week (None: never limited), which the
    hard wall-clock limit is computed from.
    """

    arg: str | None
    slowest_bps: int | None


def _rate_bps(text: str, whole: str) -> int | None:
    """One rate, ``UP[:DOWN]``; returns the upload side in bytes/s, None for off/0."""
    up = text.split(":", 1)
    for part in up:
        if part.lower() != "off" and not _RATE_RE.match(part):
            raise SettingsInvalid("uploader", "bandwidth_limit", f"{whole!r}: bad rate {part!r}")
    first = up[0]
    if first.lower() == "off":
        return None
    m = _RATE_RE.match(first)
    assert m is not None
    unit = (m.group("unit") or "k")[0].lower()  # rclone's default unit for --bwlimit is KiB/s
    number = float(m.group("num"))
    if not math.isfinite(number):
        raise SettingsInvalid("uploader", "bandwidth_limit", f"{whole[:40]!r}…: not a number")
    bps = int(min(number * _UNITS[unit], _MAX_BPS))
    return bps or None


def parse_bwlimit(value: str | None) -> BandwidthLimit:
    """Validate a bandwidth limit in rclone's syntax; refuse garbage with :class:`SettingsInvalid`.

    Accepted exactly what rclone's ``--bwlimit`` accepts (one grammar, tested against the
    binary): ``off``/``0`` (no limit), a rate (``1M``, ``500k``, ``512`` = KiB/s, ``1.5MiB``,
    ``1e3``, ``UP:DOWN`` like ``1M:off``), or a timetable of ``[Day-]HH:MM,RATE`` slots separated
    by single spaces (``"08:00,512k 19:00,off"``, ``"Mon-08:00,1M Sat-00:00,off"``). Plus None or
    the empty string for "no limit" (no flag is passed then). Anything else — ``fast``,
    ``1M; rm -rf /``, ``--config=…``, padding spaces — raises :class:`SettingsInvalid`.
    """
    text = value or ""
    if not text or text.lower() == "off":
        return BandwidthLimit(None, None)
    slots = text.split(" ")
    if len(slots) == 1 and "," not in text:
        bps = _rate_bps(text, text)
        return BandwidthLimit(text if bps else None, bps)
    rates: list[int | None] = []
    for slot in slots:
        m = _SLOT_RE.match(slot)
        if m is None:
            raise SettingsInvalid(
                "uploader",
                "bandwidth_limit",
                f"{text!r}: {slot!r} is not [Day-]HH:MM,RATE (e.g. '08:00,512k 19:00,off')",
            )
        rates.append(_rate_bps(m.group("rate"), text))
    limited = [r for r in rates if r]
    return BandwidthLimit(text, min(limited) if limited else None)


def hard_limit_s(
    size_bytes: int, limit: BandwidthLimit, *, base_s: float = HARD_LIMIT_BASE_S
) -> float:
    """The wall-clock limit for one upload: ``base + 3 x size / rate``, where rate is the
    slowest the bandwidth limit allows, and never faster than ``LINK_FLOOR_BPS``.

    Generous on purpose: the idle timeout catches a dead link; this catches a hung rclone or a
    trickle. A task's soft time limit must exceed it for the largest file it sends.
    """
    rate = min(limit.slowest_bps or LINK_FLOOR_BPS, LINK_FLOOR_BPS)
    return base_s + HARD_LIMIT_FACTOR * size_bytes / rate
