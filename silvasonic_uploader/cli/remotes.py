"""``silvasonic-uploader remotes``: list, add, change, (de)activate and remove remotes
(``storage_remotes``).

Secrets never come from the command line (they would show in ``ps`` and the shell history): the
fields a remote type declares secret (``uploader.remotes.config.REMOTE_TYPES[type].secret_fields``)
are read from a hidden prompt or, with ``--secrets-from-stdin``, as ``key=value`` lines on stdin;
``--option pass=…`` is refused. With ``SILVASONIC_ENCRYPTION_KEY`` set they are stored
``enc:``-encrypted, else in plaintext with a loud warning. Nothing prints a secret: ``list`` masks
them, errors name fields, never values.

Every change nudges the controller (``PUBLISH silvasonic:nudge reconcile``); deactivating
also releases the remote's leases and purges its queue, so queued work ends without trying.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import click
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.operator_common import (
    RedisEffects,
    after_change,
    emit_json,
    iso,
    json_option,
    operator_session,
    warn,
)
from uploader.completion import audit_logger
from uploader.completion.active import ActiveRemotes, SkipReason, active_remotes
from uploader.db.models import StorageRemote
from uploader.errors import RemoteConfigInvalid
from uploader.ledger import leases
from uploader.redact import MASK, redact
from uploader.remotes import retarget
from uploader.remotes import state as remote_state
from uploader.remotes.config import (
    REMOTE_TYPES,
    RemoteType,
    supported_types,
    validate_remote_config,
    validate_remote_slug,
)
from uploader.remotes.destination import destination_of
from uploader.remotes.local_roots import check_local_target
from uploader.remotes.secrets import (
    ENC_PREFIX,
    KEY_ENV,
    SecretError,
    decrypt_value,
    encrypt_value,
    is_encrypted,
    load_encryption_key,
)

_AUDIT_OF = text(
    "SELECT count(*) FILTER (WHERE success) AS successes, count(*) AS attempts "
    "FROM uploads WHERE remote_slug = :slug"
)

secrets_from_stdin_option = click.option(
    "--secrets-from-stdin",
    is_flag=True,
    help="Read secret fields as key=value lines from stdin (until end of input) instead of "
    "prompting.",
)
secret_option = click.option(
    "--secret",
    "secret_names",
    multiple=True,
    metavar="FIELD",
    help="Prompt for this secret field too (e.g. an optional one such as sftp's pass).",
)
option_option = click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A non-secret config field or allowed rclone option (repeatable).",
)


# where the recorder workspace is, as the CLI may know it: a local remote never overlaps it
LOCAL_WORKSPACE_ENV = ("SILVASONIC_RECORDER_WORKSPACE", "SILVASONIC_WORKSPACE_PATH")


@click.group()
def remotes() -> None:
    """List, add, change, (de)activate and remove remotes (storage_remotes)."""


# -- list ---------------------------------------------------------------------------------


@remotes.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every remote, with its role and options; secret values are masked."""
    with operator_session(read_only=True) as session:
        rows = session.scalars(
            select(StorageRemote).order_by(
                StorageRemote.created_at.asc().nulls_last(), StorageRemote.slug.asc()
            )
        ).all()
        active = active_remotes(session)
        listed = [_remote_json(row, active) for row in rows]
    if as_json:
        emit_json({"remotes": listed})
        return
    if not listed:
        click.echo("no remote yet: silvasonic-uploader remotes add SLUG --type TYPE --name NAME …")
        return
    for r in listed:
        flags = "active" if r["is_active"] else "inactive"
        click.echo(f"{r['slug']}  ({r['type']}, {flags}, {r['role']})  {r['name']}")
        if r["target_path"]:
            click.echo(f"    target_path: {r['target_path']}")
        for key, value in r["options"].items():
            click.echo(f"    {key}: {value}")
        if r["role_detail"]:
            click.echo(f"    note: {r['role_detail']}")


def _role(slug: str, is_active: bool | None, active: ActiveRemotes) -> tuple[str, str | None]:
    """(role, why) - ``required``/``running`` follow ``uploader.completion.active``."""
    if not is_active:
        return "inactive", None
    skipped = {s.reason: s.detail for s in active.skipped if s.slug == slug}
    if SkipReason.over_cap in skipped:
        return "over_cap", skipped[SkipReason.over_cap]
    if slug in active.running_slugs:
        return "running", None
    for reason in (SkipReason.misconfigured, SkipReason.paused):
        if reason in skipped:
            return f"required ({reason})", skipped[reason]
    return "required", None


def _remote_json(row: StorageRemote, active: ActiveRemotes) -> dict[str, Any]:
    role, detail = _role(row.slug, row.is_active, active)
    return {
        "slug": row.slug,
        "type": row.type,
        "name": row.name,
        "is_active": bool(row.is_active),
        "role": role,
        "role_detail": detail,
        "target_path": row.target_path,
        "options": masked_options(row.type, row.config or {}),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def masked_options(remote_type: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config for display: secret fields as ``***`` (``enc:***`` when stored encrypted),
    other strings through the redaction helper (a URL with user:password@ is masked too)."""
    spec = REMOTE_TYPES.get(remote_type)
    secret = spec.secret_fields if spec else frozenset()
    shown: dict[str, Any] = {}
    for key, value in sorted(config.items()):
        if key in secret or (spec is None and isinstance(value, str)):
            shown[key] = f"{ENC_PREFIX}{MASK}" if is_encrypted(value) else MASK
        elif isinstance(value, str):
            shown[key] = redact(value)
        else:
            shown[key] = value
    return shown


# -- add / set ----------------------------------------------------------------------------


@remotes.command()
@click.argument("slug")
@click.option(
    "--type",
    "remote_type",
    required=True,
    type=click.Choice(supported_types()),
    help="The rclone backend.",
)
@click.option("--name", required=True, help="A human name (shown in the web UI and status).")
@option_option
@click.option("--target-path", default=None, help="Prefix of every remote path (bucket, folder).")
@secret_option
@secrets_from_stdin_option
@click.option("--inactive", is_flag=True, help="Add it inactive (activate it later).")
@json_option
def add(
    slug: str,
    remote_type: str,
    name: str,
    options: tuple[str, ...],
    target_path: str | None,
    secret_names: tuple[str, ...],
    secrets_from_stdin: bool,
    inactive: bool,
    as_json: bool,
) -> None:
    """Add remote SLUG; secrets are prompted for (or read from stdin), never taken from argv.

    \b
    Example (Nextcloud; user and password are asked for):
      silvasonic-uploader remotes add nextcloud --type webdav --name "Nextcloud" \\
        --option url=https://cloud.example.org/remote.php/dav/files/alice/ \\
        --option vendor=nextcloud --target-path Silvasonic
    """
    try:
        validate_remote_slug(slug)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SLUG") from None
    spec = REMOTE_TYPES[remote_type]
    config: dict[str, Any] = parse_options(options, remote_type, spec)
    key = _encryption_key()
    with operator_session(read_only=True) as session:  # before anyone types a secret
        _refuse_existing(session, slug)
    wanted = _required_secret_fields(spec) | _checked_names(secret_names, remote_type, spec)
    # the options are checked before anyone types a secret, and the secrets before any
    # warning about how they will be stored: a refused remote prints only why it was refused
    _validate(slug, remote_type, {**config, **dict.fromkeys(wanted, "(secret)")}, target_path)
    supplied = _read_secrets(slug, remote_type, spec, wanted, secrets_from_stdin)
    _validate(slug, remote_type, {**config, **supplied}, target_path)
    config.update(_store_secrets(supplied, key))
    with operator_session() as session:
        _refuse_existing(session, slug)
        session.add(
            StorageRemote(
                slug=slug,
                type=remote_type,
                name=name,
                config=config,
                is_active=not inactive,
                target_path=target_path,
            )
        )
    effects = after_change()
    result = {"slug": slug, "action": "added", "is_active": not inactive}
    state = "inactive" if inactive else "active"
    _report(
        as_json,
        {**result, **_secret_summary(supplied, key)},
        effects,
        f"remote {slug!r} added ({remote_type}, {state})",
    )


def _refuse_existing(session: Session, slug: str) -> None:
    if session.get(StorageRemote, slug) is not None:
        raise click.ClickException(
            f"remote {slug!r} exists already; change it with "
            f"`silvasonic-uploader remotes set {slug} …`"
        )


@remotes.command("set")
@click.argument("slug")
@click.option("--name", default=None, help="A new human name.")
@option_option
@click.option("--unset", "unset", multiple=True, metavar="KEY", help="Remove a config field.")
@click.option("--target-path", default=None, help="A new prefix of every remote path.")
@click.option("--clear-target-path", is_flag=True, help="Remove the target path.")
@secret_option
@secrets_from_stdin_option
@click.option(
    "--encrypt-secrets",
    is_flag=True,
    help=f"Encrypt the remote's plaintext secrets in place (needs {KEY_ENV}).",
)
@click.option(
    "--moved",
    is_flag=True,
    help="With a new destination (target path, URL, endpoint, host): the archive was moved "
    "there too, so what is uploaded counts there (audited as 'moved'); nothing is uploaded again.",
)
@json_option
def set_cmd(
    slug: str,
    name: str | None,
    options: tuple[str, ...],
    unset: tuple[str, ...],
    target_path: str | None,
    clear_target_path: bool,
    secret_names: tuple[str, ...],
    secrets_from_stdin: bool,
    encrypt_secrets: bool,
    moved: bool,
    as_json: bool,
) -> None:
    """Change remote SLUG's name, target path or options; replace secrets with --secret FIELD
    (prompted) or --secrets-from-stdin. A config change clears a worker's misconfigured mark.

    A new destination (target path, URL, endpoint, bucket, host) means the recordings uploaded
    to the old place are not at the new one: those still on disk are uploaded again, those
    already deleted remain only at the old place (it says how many). --moved says the archive
    was moved along."""
    if target_path is not None and clear_target_path:
        raise click.UsageError("--target-path and --clear-target-path exclude each other")
    key = _encryption_key()
    if encrypt_secrets and key is None:
        raise click.ClickException(
            f"--encrypt-secrets needs {KEY_ENV}; generate one with "
            f"`silvasonic-uploader secrets generate-key`"
        )
    with operator_session(read_only=True) as session:  # no transaction open while prompting
        remote_type = _get(session, slug).type
    spec = REMOTE_TYPES.get(remote_type)
    if spec is None:
        raise click.ClickException(
            f"remote {slug!r} has type {remote_type!r}, which this uploader does not support; "
            f"remove it and add it again with one of {', '.join(supported_types())}"
        )
    patch = parse_options(options, remote_type, spec)
    wanted = _checked_names(secret_names, remote_type, spec)
    supplied = _read_secrets(slug, remote_type, spec, wanted, secrets_from_stdin)
    with operator_session() as session:
        row = _get(session, slug)
        config = {**(row.config or {}), **patch, **supplied}
        for field in unset:
            if config.pop(field, None) is None:
                raise click.BadParameter(f"{field!r} is not set", param_hint="--unset")
        new_target = row.target_path
        if clear_target_path or target_path is not None:
            new_target = None if clear_target_path else target_path
        _validate(slug, remote_type, config, new_target)  # before any warning
        config.update(_store_secrets(supplied, key))
        encrypted_now = _encrypt_in_place(config, spec, key) if encrypt_secrets else []
        old_dest = destination_of(remote_type, row.config or {}, row.target_path)
        new_dest = destination_of(remote_type, config, new_target)
        if moved and old_dest == new_dest:
            raise click.UsageError("--moved goes with a new destination; this change keeps it")
        effects_of_move = retarget.change_effects(session, slug, old_dest, new_dest)
        carried = 0
        if moved:
            carried = retarget.carry_over(
                session,
                slug,
                old=old_dest,
                new=new_dest,
                old_target=row.target_path,
                new_target=new_target,
            )
        changes: list[str] = []
        if name is not None and name != row.name:
            row.name = name
            changes.append("name")
        if new_target != row.target_path:
            row.target_path = new_target
            changes.append("target_path")
        if config != (row.config or {}):
            row.config = config
            changes.append("config")
        if not changes:
            raise click.ClickException("nothing to change (see `remotes set --help`)")
    effects = after_change()
    result: dict[str, Any] = {"slug": slug, "action": "changed", "changed": changes,
                              "encrypted_in_place": encrypted_now}  # fmt: skip
    line = f"remote {slug!r} changed: {', '.join(changes)}"
    if old_dest != new_dest:
        result["destination"] = {
            "from": old_dest,
            "to": new_dest,
            "moved": moved,
            "carried_over": carried,
            "upload_again": 0 if moved else effects_of_move.upload_again,
            "only_at_old_place": 0 if moved else effects_of_move.only_at_old_place,
            "only_at_old_place_ids": []
            if moved
            else list(effects_of_move.sample_only_at_old_place),
        }
        line += "\n" + _destination_line(moved, carried, effects_of_move)
    _report(as_json, {**result, **_secret_summary(supplied, key)}, effects, line)


def _destination_line(moved: bool, carried: int, effects: retarget.ChangeEffects) -> str:
    if moved:
        return (
            f"new destination: {carried} recording(s) recorded as moved there (audited as "
            "'moved'); nothing is uploaded again"
        )
    text = (
        f"new destination: {effects.upload_again} recording(s) still on disk will be uploaded "
        "again to the new place"
    )
    if effects.only_at_old_place:
        ids = ", ".join(str(i) for i in effects.sample_only_at_old_place)
        more = " …" if effects.only_at_old_place > len(effects.sample_only_at_old_place) else ""
        text += (
            f"; {effects.only_at_old_place} recording(s) no longer exist locally and remain "
            f"only at the old place (ids {ids}{more}); `status` lists them. If you moved the "
            "old data there, run this command again with --moved instead"
        )
    return text


def parse_options(options: Iterable[str], remote_type: str, spec: RemoteType) -> dict[str, str]:
    """``KEY=VALUE`` pairs; a secret field is refused without ever echoing its value."""
    parsed: dict[str, str] = {}
    for item in options:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter("expected KEY=VALUE", param_hint="--option")
        if key in spec.secret_fields:
            raise click.BadParameter(
                f"{key!r} is a secret of a {remote_type} remote and is never taken from the "
                f"command line (it would show in `ps` and the shell history); leave it out to "
                f"be prompted for it, or pipe a `{key}=…` line into --secrets-from-stdin",
                param_hint="--option",
            )
        if key in parsed:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--option")
        parsed[key] = value
    return parsed


def _schema_fields(spec: RemoteType) -> dict[str, bool]:
    """Field name (as stored) -> required."""
    return {
        (info.alias or name): info.is_required() for name, info in spec.schema.model_fields.items()
    }


def _required_secret_fields(spec: RemoteType) -> set[str]:
    return {f for f, required in _schema_fields(spec).items() if required} & spec.secret_fields


def _checked_names(names: Iterable[str], remote_type: str, spec: RemoteType) -> set[str]:
    for field in names:
        if field not in spec.secret_fields:
            raise click.BadParameter(
                f"{field!r} is not a secret field of a {remote_type} remote (secret fields: "
                f"{', '.join(sorted(spec.secret_fields)) or 'none'}); pass other fields with "
                f"--option",
                param_hint="--secret",
            )
    return set(names)


def _read_secrets(
    slug: str, remote_type: str, spec: RemoteType, wanted: set[str], from_stdin: bool
) -> dict[str, str]:
    """From stdin (``key=value`` lines; any secret field of the type) or one hidden prompt per
    wanted field. Values are never echoed, not even in errors."""
    if from_stdin:
        supplied = parse_secret_lines(sys.stdin.read().splitlines(), remote_type, spec)
        missing = sorted(f for f in wanted if f not in supplied)
        if missing:
            raise click.ClickException(
                f"stdin lacks the secret field(s) {', '.join(missing)}: give one "
                f"`field=value` line each"
            )
        return supplied
    supplied = {}
    for field in sorted(wanted):
        # the prompt goes to stderr: stdout carries the result (--json must stay parseable)
        value = click.prompt(
            f"{field} for {slug}", hide_input=True, default="", show_default=False, err=True
        )
        if not value:
            raise click.ClickException(f"no value given for secret field {field!r}")
        supplied[field] = value
    return supplied


def parse_secret_lines(lines: Iterable[str], remote_type: str, spec: RemoteType) -> dict[str, str]:
    """``key=value`` per line; blank lines and ``#`` comments are skipped. Errors name the line
    number and the field, never a value."""
    supplied: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.ClickException(f"stdin line {number} is not key=value")
        if key not in spec.secret_fields:
            raise click.ClickException(
                f"stdin line {number}: {key!r} is not a secret field of a {remote_type} remote "
                f"(secret fields: {', '.join(sorted(spec.secret_fields)) or 'none'}); pass "
                f"other fields with --option"
            )
        if not value:
            raise click.ClickException(f"stdin line {number}: {key!r} has an empty value")
        if key in supplied:
            raise click.ClickException(f"stdin line {number}: {key!r} is given twice")
        supplied[key] = value
    return supplied


def _encryption_key() -> str | None:
    key = load_encryption_key()
    if key is not None:
        try:
            encrypt_value("probe", key)
        except SecretError as exc:
            raise click.ClickException(str(exc)) from None
    return key


def _store_secrets(supplied: Mapping[str, str], key: str | None) -> dict[str, str]:
    """What goes into the config: encrypted with ``key``, or plaintext with a loud warning.
    A value that is ``enc:`` already is kept (checked against ``key`` when there is one)."""
    stored: dict[str, str] = {}
    plaintext: list[str] = []
    for field, value in supplied.items():
        if is_encrypted(value):
            if key is not None:
                try:
                    decrypt_value(value, key, field=field)
                except SecretError as exc:
                    raise click.ClickException(str(exc)) from None
            stored[field] = value
        elif key is not None:
            stored[field] = encrypt_value(value, key)
        else:
            stored[field] = value
            plaintext.append(field)
    if plaintext:
        warn(
            f"{KEY_ENV} is not set: secret field(s) {', '.join(sorted(plaintext))} are stored "
            f"IN PLAINTEXT in storage_remotes.config. Generate a key with `silvasonic-uploader "
            f"secrets generate-key`, give it to this shell, the controller and the workers, "
            f"then run `silvasonic-uploader remotes set SLUG --encrypt-secrets`."
        )
    return stored


def _encrypt_in_place(config: dict[str, Any], spec: RemoteType, key: str | None) -> list[str]:
    assert key is not None
    done = []
    for field in sorted(spec.secret_fields):
        value = config.get(field)
        if isinstance(value, str) and value and not is_encrypted(value):
            config[field] = encrypt_value(value, key)
            done.append(field)
    return done


def _secret_summary(supplied: Mapping[str, str], key: str | None) -> dict[str, Any]:
    return {"secrets_set": sorted(supplied), "encrypted": bool(supplied) and key is not None}


def _validate(slug: str, remote_type: str, config: dict[str, Any], target_path: str | None) -> None:
    """The config rules of ``uploader.remotes.config``, plus what the controller needs to give the
    remote a worker: a ``local`` remote's folder is an absolute ``target_path``."""
    try:
        validate_remote_config(slug, remote_type, config)
    except RemoteConfigInvalid as exc:
        raise click.ClickException(f"{exc}; nothing was saved") from None
    if remote_type == "local":
        workspaces = [os.environ.get(v, "") for v in LOCAL_WORKSPACE_ENV]
        try:
            check_local_target(slug, target_path, workspaces=workspaces)
        except RemoteConfigInvalid as exc:
            raise click.ClickException(f"{exc} (--target-path); nothing was saved") from None


# -- probe ----------------------------------------------------------------------------------


@remotes.command()
@click.argument("slug")
@json_option
def probe(slug: str, as_json: bool) -> None:
    """Try remote SLUG again now, when it is marked misconfigured or unavailable (after a fix on
    the server's side): one probe pair at the next dispatch, instead of at its next scheduled
    probe (misconfigured remotes are probed after 1, 5, 15, then every 60 minutes)."""
    with operator_session() as session:
        _get(session, slug)
        state = remote_state.get_state(session, slug)
        probing = remote_state.request_probe(session, slug)
    effects = after_change() if probing else RedisEffects()
    if probing:
        line = (
            f"remote {slug!r} ({state.state}) is probed with one pair at the next dispatch; "
            "`silvasonic-uploader status` shows the outcome"
        )
    else:
        line = f"remote {slug!r} is ok: nothing to probe"
    _report(as_json, {"slug": slug, "action": "probe", "state": str(state.state),
                      "probing": probing}, effects, line)  # fmt: skip


# -- activate / deactivate / remove ---------------------------------------------------------


@remotes.command()
@click.argument("slug")
@json_option
def activate(slug: str, as_json: bool) -> None:
    """Make remote SLUG count again: the controller starts its worker."""
    with operator_session() as session:
        row = _get(session, slug)
        changed = not row.is_active
        row.is_active = True
    effects = after_change() if changed else RedisEffects()
    _report(
        as_json,
        {"slug": slug, "action": "activated" if changed else "unchanged"},
        effects,
        f"remote {slug!r} {'activated' if changed else 'was active already'}",
    )


@remotes.command()
@click.argument("slug")
@json_option
def deactivate(slug: str, as_json: bool) -> None:
    """Stop counting remote SLUG: release its leases, purge its queue, stop its worker.

    Recordings that every remaining required remote holds are flagged uploaded at once.
    """
    with operator_session() as session:
        row = _get(session, slug)
        changed = bool(row.is_active)
        row.is_active = False
        session.flush()
        released = leases.release_all(session, slug)
        completed = audit_logger.recompute_uploaded(session)
    effects = after_change(purge_slug=slug)
    _report(
        as_json,
        {
            "slug": slug,
            "action": "deactivated" if changed else "unchanged",
            "leases_released": released,
            "recordings_completed": completed,
        },
        effects,
        f"remote {slug!r} {'deactivated' if changed else 'was inactive already'}; "
        f"{released} lease(s) released, {completed} recording(s) now complete",
    )


@remotes.command()
@click.argument("slug")
@json_option
def remove(slug: str, as_json: bool) -> None:
    """Delete remote SLUG - only one that never received a recording (no success row). Its
    failed attempts stay in the audit, which is never rewritten."""
    with operator_session() as session:
        row = _get(session, slug)
        audit = session.execute(_AUDIT_OF, {"slug": slug}).one()
        if audit.successes:
            raise click.ClickException(
                f"remote {slug!r} holds {audit.successes} uploaded recording(s) (success rows "
                f"in the audit), so it cannot be removed; deactivate it instead: "
                f"silvasonic-uploader remotes deactivate {slug}"
            )
        was_active = bool(row.is_active)
        session.delete(row)  # pair_state, remote_cursor, remote_status go with it (CASCADE)
        session.flush()
        completed = audit_logger.recompute_uploaded(session) if was_active else 0
    effects = after_change(purge_slug=slug)
    line = f"remote {slug!r} removed"
    if audit.attempts:
        line += (
            f"; its {audit.attempts} failed attempt(s) stay in the audit: SELECT attempt_at, "
            f"error_kind, error_message FROM uploads WHERE remote_slug = '{slug}'"
        )
    _report(
        as_json,
        {"slug": slug, "action": "removed", "recordings_completed": completed,
         "failed_attempts_kept": int(audit.attempts)},
        effects,
        line,
    )  # fmt: skip


def _get(session: Session, slug: str) -> StorageRemote:
    row = session.get(StorageRemote, slug)
    if row is None:
        raise click.ClickException(
            f"no remote {slug!r}; `silvasonic-uploader remotes list` shows them"
        )
    return row


def _report(as_json: bool, result: dict[str, Any], effects: RedisEffects, line: str) -> None:
    if as_json:
        emit_json({**result, **effects.as_dict()})
        return
    click.echo(line)
    if effects.purged_messages:
        click.echo(f"purged {effects.purged_messages} queued message(s)")
    if effects.nudged:
        click.echo("controller nudged")
