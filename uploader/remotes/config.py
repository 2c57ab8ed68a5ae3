"""Remote configuration: the schema of ``storage_remotes.config`` per ``type``, the allowlist
of extra rclone options, secret handling, and the remote slug rule
(docs/design/0011-runtime.md).

Field names follow upstream (docs/design/0012-upstream.md §1): webdav ``url/user/pass/vendor``, s3
``access_key_id/secret_access_key/endpoint/region/acl/provider``, sftp
``host/user/pass/key_file/port``; a ``local`` remote has no fields (its folder is
``target_path``). Anything that would make rclone run a command or read an arbitrary local file
is refused. Secrets may be stored ``enc:``-encrypted (``uploader.remotes.secrets``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from uploader.errors import RemoteConfigInvalid, SecretUnavailable
from uploader.remotes.secrets import SecretError, decrypt_value, is_encrypted, load_encryption_key

log = structlog.get_logger(__name__)

KEYS_DIR_ENV = "SILVASONIC_KEYS_DIR"
DEFAULT_KEYS_DIR = "/etc/silvasonic/keys"

# Instance ids the Silvasonic stack already uses: a remote slug becomes a container suffix,
# a Redis instance id and a queue name, so it must not collide with them.
RESERVED_SLUGS = frozenset(
    {
        "controller",
        "processor",
        "recorder",
        "birdnet",
        "batdetect",
        "web",
        "web-mock",
        "database",
        "db",
        "redis",
        "uploader",
        "indexer",
        "janitor",
        "weather",
        "gateway",
        "icecast",
        "tailscale",
        "flower",
        "beat",
        "control",
        "default",
        "celery",
        "all",
    }
)
# starts with a letter or digit: "-x" or "---" would read as an option to every command
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def validate_remote_slug(slug: str) -> str:
    """Return ``slug`` if it is a usable remote slug, else raise ValueError saying why."""
    if not _SLUG_RE.fullmatch(slug or ""):
        raise ValueError(
            f"remote slug {slug!r} must be 1-40 characters of lowercase letters, digits and "
            "'-', starting with a letter or a digit"
        )
    if slug in RESERVED_SLUGS:
        raise ValueError(f"remote slug {slug!r} is reserved by the Silvasonic stack; pick another")
    return slug


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, populate_by_name=True)


def _http_url(value: str | None) -> str | None:
    """An http(s) URL with a host and no credentials in it; the message never repeats the
    value (it may hold a password)."""
    if value is None:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not hold credentials (user:password@): store them with --secret user and "
            "--secret pass (or the web UI's secret fields)"
        )
    return value


class WebDAVConfig(_Schema):
    url: str
    user: str
    pass_: str = Field(alias="pass")
    vendor: str | None = None

    _url = field_validator("url")(_http_url)


class S3Config(_Schema):
    access_key_id: str
    secret_access_key: str
    endpoint: str | None = None
    region: str | None = None
    acl: str = "private"
    provider: str | None = None

    _endpoint = field_validator("endpoint")(_http_url)


class SFTPConfig(_Schema):
    host: str
    user: str
    pass_: str | None = Field(default=None, alias="pass")
    key_file: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class LocalConfig(_Schema):
    pass


class DriveConfig(_Schema):
    client_id: str | None = None
    client_secret: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class RemoteType:
    """What we know about one rclone backend."""

    schema: type[_Schema]
    # harmless extra rclone options (no commands, no arbitrary local files)
    allowed_extra: frozenset[str]
    # fields whose values are secrets (masked everywhere, may be `enc:`)
    secret_fields: frozenset[str]
    # options naming local files: allowed only inside the keys folder
    path_fields: frozenset[str] = frozenset()


REMOTE_TYPES: dict[str, RemoteType] = {
    "webdav": RemoteType(
        WebDAVConfig,
        frozenset(
            {
                "bearer_token",
                "pacer_min_sleep",
                "nextcloud_chunk_size",
                "encoding",
                "owncloud_exclude_shares",
                "owncloud_exclude_mounts",
            }
        ),
        frozenset({"user", "pass", "bearer_token"}),
    ),
    "s3": RemoteType(
        S3Config,
        frozenset(
            {
                "location_constraint",
                "storage_class",
                "server_side_encryption",
                "force_path_style",
                "no_check_bucket",
                "no_head",
                "upload_cutoff",
                "chunk_size",
                "session_token",
                "bucket_acl",
                "requester_pays",
                "disable_checksum",
                "use_multipart_uploads",
                "sts_endpoint",
            }
        ),
        frozenset({"access_key_id", "secret_access_key", "session_token"}),
    ),
    "sftp": RemoteType(
        SFTPConfig,
        frozenset(
            {
                "key_file_pass",
                "key_pem",
                "known_hosts_file",
                "pubkey_file",
                "shell_type",
                "set_modtime",
                "disable_hashcheck",
                "use_insecure_cipher",
                "idle_timeout",
                "chunk_size",
                "concurrency",
                "path_override",
            }
        ),
        frozenset({"pass", "key_file_pass", "key_pem"}),
        frozenset({"key_file", "known_hosts_file", "pubkey_file"}),
    ),
    "local": RemoteType(LocalConfig, frozenset(), frozenset()),
    "drive": RemoteType(
        DriveConfig,
        frozenset({"scope", "root_folder_id", "team_drive", "chunk_size"}),
        frozenset({"client_secret", "token"}),
    ),
}

# Options that make rclone run a program or read a file we do not control: refused by name,
# whatever the backend, with this reason.
_DANGEROUS = {
    "bearer_token_command": "runs a local command",
    "ssh": "runs a local command instead of rclone's own SSH client",
    "md5sum_command": "runs a command on the server for every file",
    "sha1sum_command": "runs a command on the server for every file",
    "shared_credentials_file": "reads an arbitrary local file",
    "env_auth": "takes credentials from the environment or instance metadata",
    "service_account_file": "reads an arbitrary local file",
    "unix_socket": "connects to an arbitrary local socket",
    "config": "loads another rclone config",
}


def supported_types() -> list[str]:
    return sorted(REMOTE_TYPES)


def keys_dir() -> Path:
    return Path(os.environ.get(KEYS_DIR_ENV, DEFAULT_KEYS_DIR))


def _check_path(remote_slug: str, key: str, value: str) -> None:
    base = keys_dir().resolve()
    target = Path(value)
    # rclone expands a leading ~ and environment variables in these options and reads a
    # relative path from its own working directory, so only a literal absolute path can be
    # checked against the keys folder.
    if "$" in value or not target.is_absolute() or not target.resolve().is_relative_to(base):
        raise RemoteConfigInvalid(
            remote_slug,
            f"option {key!r} must be the absolute path of a file inside the keys folder {base} "
            f"(set {KEYS_DIR_ENV} to change it)",
        )


def validate_remote_config(remote_slug: str, remote_type: str, config: dict[str, Any]) -> None:
    """Check field names, required fields, the allowlist and key-file locations without
    decrypting anything. Raises :class:`RemoteConfigInvalid` with a message an operator can act
    on; the message names fields, never values."""
    spec = REMOTE_TYPES.get(remote_type)
    if spec is None:
        raise RemoteConfigInvalid(
            remote_slug,
            f"type {remote_type!r} is not supported; use one of {', '.join(supported_types())}",
        )
    if not isinstance(config, dict):
        raise RemoteConfigInvalid(remote_slug, "config must be a JSON object")
    for key in config:
        if key in _DANGEROUS:
            raise RemoteConfigInvalid(
                remote_slug, f"option {key!r} is refused: it {_DANGEROUS[key]}"
            )
    schema_keys = {f.alias or name for name, f in spec.schema.model_fields.items()}
    core = {k: v for k, v in config.items() if k in schema_keys}
    extra = sorted(k for k in config if k not in schema_keys)
    unknown = [k for k in extra if k not in spec.allowed_extra]
    if unknown:
        raise RemoteConfigInvalid(
            remote_slug,
            f"option(s) {', '.join(map(repr, unknown))} not allowed for type {remote_type!r}; "
            f"allowed extras: {', '.join(sorted(spec.allowed_extra)) or 'none'}",
        )
    try:
        spec.schema.model_validate(core)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise RemoteConfigInvalid(remote_slug, problems) from None
    for key in spec.path_fields:
        value = config.get(key)
        if isinstance(value, str) and value:
            _check_path(remote_slug, key, value)


@dataclass(frozen=True)
class ResolvedRemote:
    """A remote ready for rclone: decrypted options as strings, secrets known for masking.

    ``repr`` never shows option values.
    """

    slug: str
    type: str
    options: dict[str, str] = field(repr=False)
    target_path: str | None = None
    secrets: frozenset[str] = field(default=frozenset(), repr=False)


def _as_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def resolve_remote(
    remote_slug: str,
    remote_type: str,
    config: dict[str, Any],
    target_path: str | None = None,
    *,
    encryption_key: str | None = None,
    environ: dict[str, str] | None = None,
) -> ResolvedRemote:
    """Validate, then decrypt ``enc:`` values in memory.

    Without a key, plaintext secrets are accepted with a loud warning (``remote.plaintext_secret``);
    an encrypted value without the right key raises :class:`SecretUnavailable`.
    """
    validate_remote_config(remote_slug, remote_type, config)
    spec = REMOTE_TYPES[remote_type]
    key = encryption_key if encryption_key is not None else load_encryption_key(environ)
    options: dict[str, str] = {}
    secrets: set[str] = set()
    for name, raw in config.items():
        if raw is None:
            continue
        if isinstance(raw, str):
            try:
                value = decrypt_value(raw, key, field=name)
            except SecretError as exc:
                raise SecretUnavailable(remote_slug, str(exc)) from None
        else:
            value = _as_option(raw)
        if name in spec.secret_fields:
            secrets.add(value)
            if not is_encrypted(raw) and key is None:
                log.warning(
                    "remote.plaintext_secret",
                    remote=remote_slug,
                    field=name,
                    hint="set SILVASONIC_ENCRYPTION_KEY and store secrets encrypted",
                )
        options[name] = value
    return ResolvedRemote(remote_slug, remote_type, options, target_path, frozenset(secrets))


def config_fingerprint(remote_type: str, config: dict[str, Any], target_path: str | None) -> str:
    """A stable hash of what makes a remote work; a misconfigured mark holds only while the
    fingerprint it was set under is unchanged (an operator's fix clears it)."""
    blob = json.dumps([remote_type, config, target_path], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
