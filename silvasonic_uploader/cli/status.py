"""``silvasonic-uploader status``: per-remote progress and what holds the Janitor back;
``status --deletable``: the recordings the Janitor may delete. Read-only, one snapshot
(``uploader.station_status``), cheap on a station with a million recordings."""

from __future__ import annotations

from typing import Any

import click

from silvasonic_uploader.cli.operator_common import (
    emit_json,
    human_age,
    iso,
    json_option,
    operator_session,
    short_time,
)
from uploader.completion.audit_logger import list_deletable
from uploader.station_status import (
    OldestIncomplete,
    RemoteProgress,
    StationStatus,
    settings_summary,
    station_status,
)

DEFAULT_DELETABLE_LIMIT = 100


@click.command()
@json_option
@click.option(
    "--deletable",
    is_flag=True,
    help="List the recordings the Janitor may delete (uploaded, still on disk), oldest first.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=100_000),
    default=DEFAULT_DELETABLE_LIMIT,
    show_default=True,
    help="With --deletable: how many to list.",
)
def status(as_json: bool, deletable: bool, limit: int) -> None:
    """Per remote: state, pending, oldest pending, parked, last success, uploads in the last
    hour; recordings complete and incomplete; the oldest incomplete recording and the remotes
    it waits for (what holds the Janitor back)."""
    with operator_session(read_only=True) as session:
        if deletable:
            rows = list_deletable(session, limit)
            if as_json:
                emit_json(
                    {
                        "deletable": [
                            {"recording_id": r.recording_id, "time": iso(r.time),
                             "file_raw": r.file_raw}
                            for r in rows
                        ],
                        "limit": limit,
                    }
                )  # fmt: skip
                return
            if not rows:
                click.echo("no recording may be deleted yet (none is on every required remote)")
                return
            for r in rows:
                click.echo(f"{r.recording_id}\t{short_time(r.time)}\t{r.file_raw}")
            return
        report = station_status(session)
    if as_json:
        emit_json(status_json(report))
    else:
        click.echo(render(report))


# -- JSON -------------------------------------------------------------------------------------


def status_json(report: StationStatus) -> dict[str, Any]:
    """The stable shape of ``status --json`` (documented in docs/operator-guide.md)."""
    return {
        "generated_at": iso(report.now),
        "settings": settings_summary(report.settings),
        "settings_error": report.settings_error,
        "window_open": report.window_open,
        "janitor_gate": report.janitor_gate,
        "required": list(report.required),
        "remotes": [_remote_json(report, r) for r in report.remotes],
        "recordings": {
            "on_disk": report.recordings.on_disk,
            "complete": report.recordings.complete,
            "deletable": report.recordings.deletable,
            "incomplete": report.recordings.incomplete,
        },
        "oldest_incomplete": _oldest_json(report, report.oldest_incomplete),
        "audit_window": {
            "rows": report.audit.rows,
            "since": iso(report.audit.since),
            "covers_hour": report.audit.covers_hour,
            "whole_audit": report.audit.whole_audit,
        },
    }


def _age_s(report: StationStatus, value: Any) -> float | None:
    return None if value is None else round((report.now - value).total_seconds(), 1)


def _remote_json(report: StationStatus, r: RemoteProgress) -> dict[str, Any]:
    return {
        "slug": r.slug,
        "name": r.name,
        "type": r.type,
        "required": r.required,
        "running": r.running,
        "state": str(r.state),
        "detail": r.detail,
        "unavailable_since": iso(r.unavailable_since),
        "pending": r.pending,
        "oldest_pending_at": iso(r.oldest_pending_at),
        "oldest_pending_age_s": _age_s(report, r.oldest_pending_at),
        "in_flight": r.in_flight,
        "parked": r.parked,
        "last_success_at": iso(r.last_success_at),
        "uploads_last_hour": r.uploads_last_hour,
        "failures_last_hour": r.failures_last_hour,
        "next_probe_at": iso(r.next_probe_at),
        "only_at_earlier_destination": r.only_at_earlier_destination,
        "only_at_earlier_destination_ids": list(r.only_at_earlier_destination_ids),
    }


def _oldest_json(report: StationStatus, oldest: OldestIncomplete | None) -> dict[str, Any] | None:
    if oldest is None:
        return None
    return {
        "recording_id": oldest.recording_id,
        "time": iso(oldest.time),
        "age_s": _age_s(report, oldest.time),
        "file_raw": oldest.file_raw,
        "waiting_for": [
            {
                "remote": w.remote,
                "state": str(w.state),
                "pair": str(w.hold),
                "file_failures": w.file_failures,
                "parked_until": iso(w.parked_until),
                "last_error": w.last_error,
            }
            for w in oldest.waiting_for
        ],
    }


# -- text -------------------------------------------------------------------------------------


def render(report: StationStatus) -> str:
    lines = [f"silvasonic-uploader status at {short_time(report.now)}"]
    if report.settings_error:
        lines.append(
            f"SETTINGS INVALID — nothing is uploaded until it is fixed: {report.settings_error}"
        )
    else:
        lines.append(_settings_line(report))
    lines.append("")
    if report.remotes:
        lines.extend(_remote_table(report))
    else:
        lines.append("no active remote (add one: silvasonic-uploader remotes add …)")
    lines.append("")
    lines.extend(_recordings_lines(report))
    return "\n".join(lines)


def _settings_line(report: StationStatus) -> str:
    s = settings_summary(report.settings)
    start, end = s["schedule_start_hour"], s["schedule_end_hour"]
    if start is None or end is None or start == end:
        window = "no window (always)"
    else:
        window = f"window {start:02d}-{end:02d} UTC ({'open' if report.window_open else 'closed'})"
    state = "enabled" if s["enabled"] else "PAUSED (uploader.enabled = false)"
    return (
        f"uploader {state}; bandwidth {s['bandwidth_limit']}; {window}; "
        f"batch {s['batch_size']}; max_uploaders {s['max_uploaders']}"
    )


def _remote_table(report: StationStatus) -> list[str]:
    header = (
        "REMOTE", "STATE", "PENDING", "OLDEST", "IN FLIGHT", "PARKED", "LAST SUCCESS", "LAST HOUR",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    notes: dict[str, str] = {}
    for r in report.remotes:
        last = (
            f"{human_age(_age_s(report, r.last_success_at))} ago"
            if r.last_success_at is not None
            else ("never" if report.audit.whole_audit else "-")
        )
        hour = f"{r.uploads_last_hour}{'' if report.audit.covers_hour else '+'} ok"
        if r.failures_last_hour:
            hour += f", {r.failures_last_hour} failed"
        rows.append(
            (
                r.slug,
                str(r.state),
                f"{r.pending:,}",
                human_age(_age_s(report, r.oldest_pending_at)),
                str(r.in_flight),
                str(r.parked),
                last,
                hour,
            )
        )
        parts = []
        if r.unavailable_since is not None:
            age = human_age(_age_s(report, r.unavailable_since))
            parts.append(f"unavailable since {short_time(r.unavailable_since)} ({age})")
        if r.detail:
            parts.append(r.detail)
        if r.next_probe_at is not None:
            parts.append(
                f"next probe {short_time(r.next_probe_at)} (or now: "
                f"`silvasonic-uploader remotes probe {r.slug}`)"
            )
        if parts:
            notes[r.slug] = ": ".join(parts)
        if r.only_at_earlier_destination:
            ids = ", ".join(str(i) for i in r.only_at_earlier_destination_ids)
            more = (
                " …"
                if r.only_at_earlier_destination > len(r.only_at_earlier_destination_ids)
                else ""
            )
            stranded = (
                f"{r.only_at_earlier_destination} flagged recording(s) with deleted audio are "
                f"only at an earlier destination (ids {ids}{more}): keep that place, or "
                "`remotes set --moved` if you moved them"
            )
            notes[r.slug] = f"{notes[r.slug]}; {stranded}" if r.slug in notes else stranded
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
           for row in rows]  # fmt: skip
    for slug, note in notes.items():
        out.append(f"  {slug}: {note}")
    if not report.audit.whole_audit:
        out.append(
            f"  (last success and last hour read from the newest {report.audit.rows:,} "
            f"upload attempts, since {short_time(report.audit.since)})"
        )
    return out


def _recordings_lines(report: StationStatus) -> list[str]:
    rec = report.recordings
    lines = [
        f"recordings on disk: {rec.on_disk:,}; complete (the Janitor may delete): "
        f"{rec.complete:,}; incomplete: {rec.incomplete:,}"
    ]
    if not report.janitor_gate:
        lines.append(
            "janitor: no active remote, so the Janitor ignores `uploaded` (its fallback) and "
            "deletes by disk pressure alone"
        )
    elif not report.required:
        lines.append(
            "janitor: WARNING active remotes exist but none counts (system.max_uploaders is 0): "
            "nothing is ever flagged uploaded; the Janitor keeps audio until panic mode"
        )
    oldest = report.oldest_incomplete
    if oldest is None:
        lines.append("nothing holds the Janitor back: every recording on disk is complete")
        return lines
    lines.append(
        f"oldest incomplete: recording {oldest.recording_id} of {short_time(oldest.time)} "
        f"({human_age(_age_s(report, oldest.time))} old), {oldest.file_raw}"
    )
    if not oldest.waiting_for:
        lines.append("  every required remote has it; it is flagged at the next completion sweep")
    for w in oldest.waiting_for:
        what = str(w.hold)
        if w.parked_until is not None:
            what += f" until {short_time(w.parked_until)}"
        if w.file_failures:
            what += f", {w.file_failures} file failure(s)"
        if w.last_error:
            what += f": {w.last_error}"
        lines.append(f"  waits for {w.remote} (remote {w.state}; pair {what})")
    return lines
