"""``silvasonic-uploader parked``: the pairs whose file failed ``max_file_attempts`` times, and
``retry`` to clear their parking now (``uploader.ledger.leases.unpark``) instead of waiting for
``park_window_hours``. A parked pair holds its recording back from the Janitor."""

from __future__ import annotations

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.operator_common import (
    emit_json,
    iso,
    json_option,
    operator_session,
    short_time,
)
from uploader.db.models import StorageRemote
from uploader.ledger import leases

DEFAULT_LIMIT = 1000


@click.group()
def parked() -> None:
    """List parked pairs, or retry them now."""


@parked.command("list")
@click.option("--remote", "remote_slug", default=None, help="Only this remote's pairs.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=100_000),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="How many to list.",
)
@json_option
def list_cmd(remote_slug: str | None, limit: int, as_json: bool) -> None:
    """Parked pairs: remote, recording, failures, last error (redacted), parked until."""
    with operator_session(read_only=True) as session:
        if remote_slug is not None:
            _require_remote(session, remote_slug)
        pairs = leases.list_parked(session, remote_slug, limit=limit)
    if as_json:
        emit_json(
            {
                "parked": [
                    {
                        "remote": p.remote_slug,
                        "recording_id": p.recording_id,
                        "file_raw": p.file_raw,
                        "file_failures": p.file_failures,
                        "parked_until": iso(p.parked_until),
                        "last_error": p.last_error,
                    }
                    for p in pairs
                ],
                "limit": limit,
            }
        )
        return
    if not pairs:
        click.echo("no parked pair")
        return
    for p in pairs:
        click.echo(
            f"{p.remote_slug}  recording {p.recording_id}  {p.file_failures} failure(s)  "
            f"parked until {short_time(p.parked_until)}  {p.file_raw}"
        )
        if p.last_error:
            click.echo(f"    last error: {p.last_error}")
    if len(pairs) == limit:
        click.echo(f"(first {limit}; use --limit to see more)")


@parked.command()
@click.option("--remote", "remote_slug", default=None, help="Only this remote's pairs.")
@click.option(
    "--recording",
    "recording_ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Only these recordings (repeatable).",
)
@json_option
def retry(remote_slug: str | None, recording_ids: tuple[int, ...], as_json: bool) -> None:
    """Unpark pairs now (all of them, one remote's, or the given recordings'): the dispatcher
    takes them at its next cycle, with their failure count reset."""
    with operator_session() as session:
        if remote_slug is not None:
            _require_remote(session, remote_slug)
            slugs = [remote_slug]
        else:
            slugs = list(session.scalars(select(StorageRemote.slug).order_by(StorageRemote.slug)))
        ids = list(recording_ids) if recording_ids else None
        counts = {slug: leases.unpark(session, slug, ids) for slug in slugs}
    unparked = {slug: n for slug, n in counts.items() if n}
    total = sum(unparked.values())
    if as_json:
        emit_json({"unparked": total, "by_remote": unparked})
        return
    if not total:
        click.echo("nothing to retry: no matching parked pair")
        return
    detail = ", ".join(f"{slug}: {n}" for slug, n in unparked.items())
    click.echo(f"unparked {total} pair(s) ({detail}); they are tried at the next dispatch cycle")


def _require_remote(session: Session, slug: str) -> None:
    if session.get(StorageRemote, slug) is None:
        raise click.ClickException(
            f"no remote {slug!r}; `silvasonic-uploader remotes list` shows them"
        )
