"""Remote configuration: per-type schemas, the allowlist, key-file locations, ``enc:`` secrets,
the slug rule and the config fingerprint (docs/design/0011-runtime.md). Every refusal names the field and
never the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from uploader.errors import RemoteConfigInvalid, RemoteMisconfigured, SecretUnavailable
from uploader.remotes.config import (
    KEYS_DIR_ENV,
    RESERVED_SLUGS,
    ResolvedRemote,
    config_fingerprint,
    resolve_remote,
    supported_types,
    validate_remote_config,
    validate_remote_slug,
)
from uploader.remotes.secrets import KEY_ENV, encrypt_value, generate_key

SECRET = "hunter2-very-secret-value"

VALID: dict[str, dict[str, Any]] = {
    "webdav": {
        "url": "https://cloud.example.org/remote.php/webdav/",
        "user": "station",
        "pass": SECRET,
        "vendor": "nextcloud",
    },
    "s3": {
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": SECRET,
        "endpoint": "https://s3.example.org",
        "region": "eu-central-1",
        "acl": "private",
        "provider": "Minio",
    },
    "sftp": {"host": "backup.example.org", "user": "station", "pass": SECRET, "port": 2222},
    "local": {},
    "drive": {"client_id": "id", "client_secret": SECRET, "token": '{"access_token": "x"}'},
}


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "id_ed25519").write_text("not a real key\n")
    monkeypatch.setenv(KEYS_DIR_ENV, str(folder))
    return folder


def _refused(remote_type: str, config: dict[str, Any]) -> RemoteConfigInvalid:
    with pytest.raises(RemoteConfigInvalid) as info:
        validate_remote_config("nas", remote_type, config)
    return info.value


# -- per-type schemas ---------------------------------------------------------------------------


def test_supported_types() -> None:
    assert supported_types() == ["drive", "local", "s3", "sftp", "webdav"]


@pytest.mark.parametrize("remote_type", sorted(VALID))
def test_valid_config_per_type(remote_type: str) -> None:
    validate_remote_config("nas", remote_type, VALID[remote_type])


@pytest.mark.parametrize(
    ("remote_type", "config"),
    [
        ("webdav", {"url": "https://x/", "user": "u", "pass": "p"}),
        ("s3", {"access_key_id": "a", "secret_access_key": "s"}),
        ("sftp", {"host": "h", "user": "u"}),
        ("drive", {}),
    ],
)
def test_minimal_config_per_type(remote_type: str, config: dict[str, Any]) -> None:
    validate_remote_config("nas", remote_type, config)


@pytest.mark.parametrize(
    ("remote_type", "missing"),
    [
        ("webdav", "url"),
        ("webdav", "user"),
        ("webdav", "pass"),
        ("s3", "access_key_id"),
        ("s3", "secret_access_key"),
        ("sftp", "host"),
        ("sftp", "user"),
    ],
)
def test_missing_required_field_is_named(remote_type: str, missing: str) -> None:
    config = {k: v for k, v in VALID[remote_type].items() if k != missing}
    err = _refused(remote_type, config)
    assert f"{missing}: Field required" in err.reason
    assert err.remote_slug == "nas"
    assert SECRET not in str(err)


def test_unknown_type_lists_the_supported_ones() -> None:
    err = _refused("ftp", {"host": "h"})
    assert "'ftp' is not supported" in str(err)
    for name in supported_types():
        assert name in str(err)


def test_config_must_be_an_object() -> None:
    err = _refused("webdav", [SECRET])  # type: ignore[arg-type]
    assert "JSON object" in str(err)
    assert SECRET not in str(err)


@pytest.mark.parametrize(
    ("remote_type", "config"),
    [
        ("webdav", {**VALID["webdav"], "pass": 12345}),
        ("s3", {**VALID["s3"], "secret_access_key": ["nested", SECRET]}),
        ("sftp", {**VALID["sftp"], "port": SECRET}),
        ("sftp", {**VALID["sftp"], "port": 70000}),
    ],
)
def test_wrong_value_types_are_refused_without_the_value(
    remote_type: str, config: dict[str, Any]
) -> None:
    err = _refused(remote_type, config)
    assert SECRET not in str(err) and "12345" not in str(err) and "70000" not in str(err)
    assert err.__cause__ is None and err.__suppress_context__


def test_refusals_are_config_level_errors() -> None:
    # the worker marks the remote misconfigured; no file is penalised
    assert issubclass(RemoteConfigInvalid, RemoteMisconfigured)
    assert issubclass(SecretUnavailable, RemoteMisconfigured)


# -- the allowlist ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote_type", "option"),
    [
        ("webdav", "bearer_token_command"),
        ("sftp", "ssh"),
        ("sftp", "md5sum_command"),
        ("s3", "shared_credentials_file"),
        ("s3", "env_auth"),
        ("drive", "service_account_file"),
        ("webdav", "unix_socket"),
    ],
)
def test_options_that_run_commands_or_read_files_are_refused(remote_type: str, option: str) -> None:
    err = _refused(remote_type, {**VALID[remote_type], option: f"cat /etc/{SECRET}"})
    assert f"option {option!r} is refused" in str(err)
    assert SECRET not in str(err)


def test_unknown_option_is_refused_with_the_allowed_list() -> None:
    err = _refused("webdav", {**VALID["webdav"], "made_up_option": SECRET})
    assert "'made_up_option'" in str(err)
    assert "allowed extras:" in str(err) and "pacer_min_sleep" in str(err)
    assert SECRET not in str(err)


def test_local_remote_takes_no_options() -> None:
    err = _refused("local", {"copy_links": "true"})
    assert "allowed extras: none" in str(err)


@pytest.mark.parametrize(
    ("remote_type", "option", "value"),
    [
        ("webdav", "pacer_min_sleep", "10ms"),
        ("s3", "force_path_style", True),
        ("s3", "no_check_bucket", True),
        ("sftp", "set_modtime", False),
        ("drive", "root_folder_id", "abc"),
    ],
)
def test_allowlisted_options_pass(remote_type: str, option: str, value: object) -> None:
    validate_remote_config("nas", remote_type, {**VALID[remote_type], option: value})


# -- key files ----------------------------------------------------------------------------------


def test_key_file_inside_the_keys_folder_is_accepted(keys: Path) -> None:
    validate_remote_config("nas", "sftp", {**VALID["sftp"], "key_file": str(keys / "id_ed25519")})


@pytest.mark.parametrize(
    "value",
    [
        "/etc/shadow",
        "/root/.ssh/id_rsa",
        "{keys}/../outside",
        "~/.ssh/id_rsa",  # rclone expands a leading ~
        "$HOME/.ssh/id_rsa",  # ... and environment variables
        "${{RCLONE_CONFIG_DIR}}/key",
        "id_ed25519",  # relative: rclone would read it from its working directory
    ],
)
@pytest.mark.parametrize("option", ["key_file", "known_hosts_file", "pubkey_file"])
def test_key_file_outside_the_keys_folder_is_refused(keys: Path, option: str, value: str) -> None:
    err = _refused("sftp", {**VALID["sftp"], option: value.format(keys=keys)})
    assert repr(option) in str(err)
    assert str(keys) in str(err)  # says where keys must live
    assert KEYS_DIR_ENV in str(err)


def test_symlink_out_of_the_keys_folder_is_refused(keys: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.write_text("x")
    (keys / "link").symlink_to(outside)
    _refused("sftp", {**VALID["sftp"], "key_file": str(keys / "link")})


# -- secrets ------------------------------------------------------------------------------------


def test_enc_round_trip() -> None:
    key = generate_key()
    config = {**VALID["webdav"], "user": encrypt_value("station", key)}
    config["pass"] = encrypt_value(SECRET, key)
    assert config["pass"].startswith("enc:") and SECRET not in config["pass"]

    remote = resolve_remote("nas", "webdav", config, "/archive", encryption_key=key)

    assert remote.options["pass"] == SECRET
    assert remote.options["user"] == "station"
    assert remote.options["url"] == VALID["webdav"]["url"]
    assert remote.target_path == "/archive"
    assert SECRET in remote.secrets and "station" in remote.secrets


def test_key_is_read_from_the_environment_mapping() -> None:
    key = generate_key()
    config = {**VALID["s3"], "secret_access_key": encrypt_value(SECRET, key)}
    remote = resolve_remote("nas", "s3", config, environ={KEY_ENV: key})
    assert remote.options["secret_access_key"] == SECRET


def test_wrong_key_is_secret_unavailable_without_value_or_key() -> None:
    right, wrong = generate_key(), generate_key()
    token = encrypt_value(SECRET, right)
    with pytest.raises(SecretUnavailable) as info:
        resolve_remote("nas", "webdav", {**VALID["webdav"], "pass": token}, encryption_key=wrong)
    text = str(info.value) + repr(info.value)
    assert "'pass'" in text and KEY_ENV in text
    for leak in (SECRET, token, token[4:], right, wrong):
        assert leak not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_encrypted_value_without_a_key_is_secret_unavailable() -> None:
    token = encrypt_value(SECRET, generate_key())
    with pytest.raises(SecretUnavailable) as info:
        resolve_remote("nas", "webdav", {**VALID["webdav"], "pass": token}, environ={})
    assert "is not set" in str(info.value)
    assert SECRET not in str(info.value) and token not in str(info.value)


def test_malformed_key_is_secret_unavailable_without_the_key() -> None:
    token = encrypt_value(SECRET, generate_key())
    bad_key = "not-a-fernet-key-" + SECRET
    with pytest.raises(SecretUnavailable) as info:
        resolve_remote("nas", "webdav", {**VALID["webdav"], "pass": token}, encryption_key=bad_key)
    assert "not a valid Fernet key" in str(info.value)
    assert SECRET not in str(info.value)


def test_plaintext_secret_without_key_is_accepted_with_a_warning() -> None:
    with capture_logs() as logs:
        remote = resolve_remote("nas", "webdav", VALID["webdav"], environ={})
    assert remote.options["pass"] == SECRET
    warned = {e["field"] for e in logs if e["event"] == "remote.plaintext_secret"}
    assert warned == {"user", "pass"}
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "remote.plaintext_secret")
    assert SECRET not in repr(logs)


def test_no_warning_when_every_secret_is_encrypted() -> None:
    key = generate_key()
    config = {**VALID["webdav"], "user": encrypt_value("u", key), "pass": encrypt_value("p", key)}
    with capture_logs() as logs:
        resolve_remote("nas", "webdav", config, encryption_key=key)
    assert [e for e in logs if e["event"] == "remote.plaintext_secret"] == []


def test_resolve_refuses_an_invalid_config_before_decrypting() -> None:
    with pytest.raises(RemoteConfigInvalid):
        resolve_remote("nas", "webdav", {"url": "https://x/"}, environ={})


def test_options_become_rclone_strings() -> None:
    config = {**VALID["s3"], "force_path_style": True, "no_check_bucket": False}
    remote = resolve_remote("nas", "s3", config, environ={})
    assert remote.options["force_path_style"] == "true"
    assert remote.options["no_check_bucket"] == "false"
    sftp = resolve_remote("nas", "sftp", VALID["sftp"], environ={})
    assert sftp.options["port"] == "2222"


def test_resolved_remote_repr_hides_options_and_secrets() -> None:
    remote = resolve_remote("nas", "webdav", VALID["webdav"], environ={})
    assert isinstance(remote, ResolvedRemote)
    assert SECRET not in repr(remote) and SECRET not in str(remote)
    assert "nas" in repr(remote) and "webdav" in repr(remote)


# -- slugs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["nextcloud-main", "s3", "a", "x" * 40, "nas-2", "0-backup"])
def test_valid_slugs(slug: str) -> None:
    assert validate_remote_slug(slug) == slug


@pytest.mark.parametrize(
    "slug",
    ["", "x" * 41, "Nextcloud", "next cloud", "next_cloud", "nas.2", "nas/2", "müller", "a\n"],
)
def test_malformed_slugs(slug: str) -> None:
    with pytest.raises(ValueError, match="1-40 characters"):
        validate_remote_slug(slug)


@pytest.mark.parametrize(
    "slug", ["controller", "processor", "recorder", "birdnet", "web", "uploader", "celery"]
)
def test_reserved_slugs(slug: str) -> None:
    assert slug in RESERVED_SLUGS
    with pytest.raises(ValueError, match="reserved"):
        validate_remote_slug(slug)


# -- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = config_fingerprint("webdav", {"url": "u", "user": "x", "pass": "p"}, "/t")
    b = config_fingerprint("webdav", {"pass": "p", "user": "x", "url": "u"}, "/t")
    assert a == b
    assert len(a) == 16 and int(a, 16) >= 0
    assert SECRET not in config_fingerprint("webdav", VALID["webdav"], None)


@pytest.mark.parametrize(
    ("remote_type", "config", "target"),
    [
        ("s3", {"url": "u", "user": "x", "pass": "p"}, "/t"),
        ("webdav", {"url": "u", "user": "x", "pass": "p2"}, "/t"),
        ("webdav", {"url": "u", "user": "x", "pass": "p", "vendor": "nextcloud"}, "/t"),
        ("webdav", {"url": "u", "user": "x", "pass": "p"}, "/t2"),
        ("webdav", {"url": "u", "user": "x", "pass": "p"}, None),
    ],
)
def test_fingerprint_changes_with_any_part(
    remote_type: str, config: dict[str, Any], target: str | None
) -> None:
    base = config_fingerprint("webdav", {"url": "u", "user": "x", "pass": "p"}, "/t")
    assert config_fingerprint(remote_type, config, target) != base
