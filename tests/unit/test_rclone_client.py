"""rclone client units: config rendering, flags, classification, bandwidth limits, obscuring.

Where a branch needs rclone to fail in a particular way, a tiny shell script stands in for the
binary (``binary=``): it is still a real child process, spawned, waited for and killed the
same way, so only rclone's own behaviour is replaced.
"""

from __future__ import annotations

import configparser
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from uploader.errors import FileRejected, RemoteMisconfigured, RemoteUnavailable, SettingsInvalid
from uploader.rclone.client import (
    HARD_LIMIT_BASE_S,
    LINK_FLOOR_BPS,
    BandwidthLimit,
    RcloneClient,
    RcloneErrorKind,
    RcloneResult,
    classify_rclone_error,
    extract_error_messages,
    find_rclone_binary,
    hard_limit_s,
    parse_bwlimit,
)
from uploader.rclone.config import obscure, reveal
from uploader.remotes.config import KEYS_DIR_ENV

WEBDAV = {
    "url": "https://cloud.example.org/remote.php/dav/files/u",
    "user": "u",
    "pass": "s3cr3t-pw",
}
S3 = {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "wJalr-secret-key", "region": "eu-1"}


def webdav_client(tmp_path: Path, script: str | None = None, **kw: object) -> RcloneClient:
    binary = fake_rclone(tmp_path, script) if script is not None else None
    return RcloneClient("nextcloud", "webdav", dict(WEBDAV), "archive", binary=binary, **kw)  # type: ignore[arg-type]


def fake_rclone(tmp_path: Path, body: str) -> str:
    """A stand-in binary: records its argv and environment, then runs ``body``."""
    path = tmp_path / "fake-rclone"
    path.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\nenv > "{tmp_path}/env"\n{body}\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    path = tmp_path / "rec.flac"
    path.write_bytes(b"fLaC" + os.urandom(2048))
    return path


def read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return parser


# -- the seed's table ---------------------------------------------------------------------------


def test_generate_rclone_conf_format(tmp_path: Path) -> None:
    conf = webdav_client(tmp_path).generate_rclone_conf(tmp_path)
    try:
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        ini = read_ini(conf)
        assert ini.sections() == ["silvasonic"]
        section = ini["silvasonic"]
        assert section["type"] == "webdav"
        assert section["url"] == WEBDAV["url"]
        assert section["user"] == "u"
        # rclone wants IsPassword options obscured; obscured is not the plain value
        assert section["pass"] != WEBDAV["pass"]
        assert reveal(section["pass"]) == WEBDAV["pass"]
    finally:
        conf.unlink()


def test_generate_rclone_conf_webdav_nextcloud(tmp_path: Path) -> None:
    client = RcloneClient("nextcloud", "webdav", {**WEBDAV, "vendor": "nextcloud"}, None)
    conf = client.generate_rclone_conf(tmp_path)
    assert read_ini(conf)["silvasonic"]["vendor"] == "nextcloud"
    plain = RcloneClient("dav", "webdav", dict(WEBDAV), None).render_rclone_conf()
    assert "vendor" not in plain  # only when configured: rclone's default is "other"


def test_generate_rclone_conf_s3(tmp_path: Path) -> None:
    conf = RcloneClient("aws", "s3", dict(S3), "bucket").generate_rclone_conf(tmp_path)
    section = read_ini(conf)["silvasonic"]
    assert section["type"] == "s3"
    # s3 keys are not IsPassword options in rclone: they go in as they are
    assert section["access_key_id"] == S3["access_key_id"]
    assert section["secret_access_key"] == S3["secret_access_key"]
    assert section["no_check_bucket"] == "true"  # never create buckets on the fly


def test_upload_success(tmp_path: Path, local_file: Path) -> None:
    client = webdav_client(tmp_path, "exit 0")
    result = client.upload_file(local_file, "archive/a/b.flac", "1M")
    assert result == RcloneResult(
        True, local_file.stat().st_size, None, result.duration_s, False, RcloneErrorKind.NONE, 0
    )
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:3] == ["copyto", str(local_file), "silvasonic:archive/a/b.flac"]


ERR = '{"level":"error","msg":"%s","source":"x.go:1"}'


def test_upload_failure_file_error(tmp_path: Path, local_file: Path) -> None:
    line = ERR % "Failed to copy: unchunked simple update failed: Conflict: 409 Conflict"
    result = webdav_client(tmp_path, f"echo '{line}' >&2; exit 1").upload_file(
        local_file, "archive/x.flac", None
    )
    assert not result.success and not result.is_connection_error
    assert result.error_kind is RcloneErrorKind.FILE
    assert result.error_message == "unchunked simple update failed: Conflict: 409 Conflict"
    assert result.exit_code == 1


def test_upload_failure_connection_error(tmp_path: Path, local_file: Path) -> None:
    line = (
        ERR
        % "Attempt 1/1 failed with 1 errors and: dial tcp 10.0.0.1:443: connect: connection refused"
    )
    result = webdav_client(tmp_path, f"echo '{line}' >&2; exit 5").upload_file(
        local_file, "archive/x.flac", None
    )
    assert not result.success and result.is_connection_error
    assert result.error_kind is RcloneErrorKind.CONNECTION


def test_bandwidth_limit_in_args(tmp_path: Path, local_file: Path) -> None:
    client = webdav_client(tmp_path, "exit 0")
    assert client.upload_file(local_file, "archive/x.flac", "08:00,512k 19:00,off").success
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[argv.index("--bwlimit") + 1] == "08:00,512k 19:00,off"
    for no_limit in (None, "", "off", "0"):
        assert "--bwlimit" not in client.build_command(local_file, "a.flac", no_limit)


def test_checksum_flag_in_args(tmp_path: Path, local_file: Path) -> None:
    argv = webdav_client(tmp_path).build_command(local_file, "archive/x.flac", None)
    assert "--checksum" in argv
    # and the rest of the contract: one whole pass, explicit timeouts, JSON log, no config file
    assert argv[argv.index("--retries") + 1] == "1"
    assert "--contimeout" in argv and "--timeout" in argv and "--low-level-retries" in argv
    assert "--use-json-log" in argv
    assert argv[argv.index("--config") + 1] == "/notfound"


def test_upload_timeout(tmp_path: Path, local_file: Path) -> None:
    # given an "rclone" that hangs, and a hard limit of about half a second
    client = webdav_client(tmp_path, "echo $$ > " + str(tmp_path / "pid") + "; exec sleep 60")
    client.hard_limit_base_s = 0.5
    started = time.monotonic()
    result = client.upload_file(local_file, "archive/x.flac", None)
    # then it is a connection error, the child is gone, and the call did not wait for it
    assert result.is_connection_error and result.error_kind is RcloneErrorKind.CONNECTION
    assert "hard limit" in (result.error_message or "")
    assert time.monotonic() - started < 10
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()


# -- credentials ---------------------------------------------------------------------------------


def test_credentials_only_in_child_env(tmp_path: Path, local_file: Path) -> None:
    monkey_parent = {"SILVASONIC_ENCRYPTION_KEY": "parent-secret", "RCLONE_CONFIG_EVIL_TYPE": "x"}
    os.environ.update(monkey_parent)
    try:
        client = webdav_client(tmp_path, "exit 0")
        assert client.upload_file(local_file, "archive/x.flac", None).success
    finally:
        for key in monkey_parent:
            os.environ.pop(key)
    argv = (tmp_path / "argv").read_text()
    env = dict(
        line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line
    )
    assert WEBDAV["pass"] not in argv and "pass" not in argv.lower()
    assert env["RCLONE_CONFIG_SILVASONIC_TYPE"] == "webdav"
    assert env["RCLONE_CONFIG_SILVASONIC_USER"] == "u"
    assert reveal(env["RCLONE_CONFIG_SILVASONIC_PASS"]) == WEBDAV["pass"]
    assert env["RCLONE_CONFIG"] == "/notfound"
    # nothing else of the parent's leaks into rclone: not our key, not foreign rclone remotes
    assert "SILVASONIC_ENCRYPTION_KEY" not in env and "RCLONE_CONFIG_EVIL_TYPE" not in env


def test_sftp_passwords_obscured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_DIR_ENV, str(tmp_path))
    config = {"host": "h", "user": "u", "pass": "pw-secret", "key_file_pass": "kp-secret",
              "key_file": str(tmp_path / "id_ed25519")}  # fmt: skip
    env = RcloneClient("box", "sftp", config, None).child_env()
    assert reveal(env["RCLONE_CONFIG_SILVASONIC_PASS"]) == "pw-secret"
    assert reveal(env["RCLONE_CONFIG_SILVASONIC_KEY_FILE_PASS"]) == "kp-secret"
    assert env["RCLONE_CONFIG_SILVASONIC_KEY_FILE"] == str(tmp_path / "id_ed25519")


def test_secret_in_rclone_output_is_redacted(tmp_path: Path, local_file: Path) -> None:
    line = ERR % f"401 Unauthorized for user u with password {WEBDAV['pass']}"
    result = webdav_client(tmp_path, f"echo '{line}' >&2; exit 1").upload_file(
        local_file, "archive/x.flac", None
    )
    assert result.error_kind is RcloneErrorKind.CONFIG
    assert WEBDAV["pass"] not in (result.error_message or "")
    assert "***" in (result.error_message or "")


def test_pacer_stays_unless_remote_opts_out(tmp_path: Path, local_file: Path) -> None:
    default = webdav_client(tmp_path).child_env()
    assert not any("PACER" in k for k in default)
    argv = webdav_client(tmp_path).build_command(local_file, "a", None)
    assert not any("pacer" in arg for arg in argv[3:])
    opted = RcloneClient("dav", "webdav", {**WEBDAV, "pacer_min_sleep": "0"}, None).child_env()
    assert opted["RCLONE_CONFIG_SILVASONIC_PACER_MIN_SLEEP"] == "0"


def test_failure_logs_a_stable_event(tmp_path: Path, local_file: Path) -> None:
    line = ERR % "dial tcp 10.0.0.1:443: connect: connection refused"
    client = webdav_client(tmp_path, f"echo '{line}' >&2; exit 5")
    with capture_logs() as logs:
        client.upload_file(local_file, "archive/x.flac", None)
    failed = [e for e in logs if e["event"] == "rclone.upload_failed"]
    assert len(failed) == 1
    assert failed[0]["remote"] == "nextcloud" and failed[0]["error_kind"] == "connection"
    assert failed[0]["exit_code"] == 5 and failed[0]["transport"] == "cli"


# -- before rclone runs --------------------------------------------------------------------------


def test_missing_local_file_is_file_error(tmp_path: Path) -> None:
    result = webdav_client(tmp_path, "exit 0").upload_file(tmp_path / "nope.flac", "a.flac", None)
    assert result.error_kind is RcloneErrorKind.FILE
    assert not (tmp_path / "argv").exists()  # rclone never ran


def test_bad_bandwidth_limit_is_config_error(tmp_path: Path, local_file: Path) -> None:
    result = webdav_client(tmp_path, "exit 0").upload_file(local_file, "a.flac", "fast")
    assert result.error_kind is RcloneErrorKind.CONFIG
    assert not (tmp_path / "argv").exists()


@pytest.mark.parametrize("path", ["", "a/../../etc/x.flac", "a/\nb.flac"])
def test_unsafe_remote_path_is_refused(tmp_path: Path, local_file: Path, path: str) -> None:
    result = webdav_client(tmp_path, "exit 0").upload_file(local_file, path, None)
    assert result.error_kind is RcloneErrorKind.CONFIG
    assert not (tmp_path / "argv").exists()


def test_local_remote_needs_absolute_path(tmp_path: Path, local_file: Path) -> None:
    client = RcloneClient("usb", "local", {}, str(tmp_path), binary=fake_rclone(tmp_path, "exit 0"))
    assert (
        client.upload_file(local_file, "relative/x.flac", None).error_kind is RcloneErrorKind.CONFIG
    )
    assert client.upload_file(local_file, f"{tmp_path}/silvasonic/x.flac", None).success


def test_missing_binary_is_config_error(tmp_path: Path, local_file: Path) -> None:
    client = RcloneClient("dav", "webdav", dict(WEBDAV), None, binary=str(tmp_path / "nothing"))
    result = client.upload_file(local_file, "a.flac", None)
    assert result.error_kind is RcloneErrorKind.CONFIG
    assert "nothing" in (result.error_message or "")


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ("echo 'Error: unknown flag: --rc-addr' >&2; exit 2", RcloneErrorKind.CONFIG),
        ("exit 1", RcloneErrorKind.CONNECTION),
    ],
)
def test_rcd_daemon_that_will_not_start(
    tmp_path: Path, local_file: Path, script: str, kind: RcloneErrorKind
) -> None:
    client = webdav_client(tmp_path, script, transport="rcd")
    try:
        result = client.upload_file(local_file, "archive/x.flac", None)
    finally:
        client.close()
    assert result.error_kind is kind, result
    assert (tmp_path / "argv").read_text().splitlines()[0] == "rcd"
    assert WEBDAV["pass"] not in (tmp_path / "argv").read_text()


def test_invalid_config_raises_misconfigured() -> None:
    with pytest.raises(RemoteMisconfigured):
        RcloneClient(
            "dav", "webdav", {"url": "x", "user": "u", "pass": "p", "bearer_token_command": "sh"}
        )
    with pytest.raises(RemoteMisconfigured):
        RcloneClient("dav", "webdav", dict(WEBDAV), None, transport="carrier-pigeon")


def test_transport_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_RCLONE_TRANSPORT", "rcd")
    assert RcloneClient("dav", "webdav", dict(WEBDAV), None).transport == "rcd"
    monkeypatch.delenv("SILVASONIC_RCLONE_TRANSPORT")
    assert RcloneClient("dav", "webdav", dict(WEBDAV), None).transport == "cli"


def test_binary_is_the_pinned_wheel_unless_overridden() -> None:
    pinned = Path(find_rclone_binary({}))
    assert pinned.is_absolute() and pinned.name == "rclone"
    assert pinned.parent == Path(sys.executable).parent  # next to our interpreter, not PATH
    assert find_rclone_binary({"SILVASONIC_RCLONE_BINARY": "/opt/rclone"}) == "/opt/rclone"


def test_result_maps_onto_the_error_tree() -> None:
    def result(kind: RcloneErrorKind) -> RcloneResult:
        return RcloneResult(False, 0, "why", 0.1, kind is RcloneErrorKind.CONNECTION, kind)

    assert isinstance(result(RcloneErrorKind.CONNECTION).as_error("r"), RemoteUnavailable)
    assert isinstance(result(RcloneErrorKind.CONFIG).as_error("r"), RemoteMisconfigured)
    err = result(RcloneErrorKind.FILE).as_error("r", recording_id=7)
    assert isinstance(err, FileRejected) and err.recording_id == 7
    assert RcloneResult(True, 1, None, 0.1, False).as_error("r") is None
    assert str(RcloneErrorKind.CONNECTION) == "connection"  # stored as text in the audit


# -- classification -------------------------------------------------------------------------------

C, F, K = RcloneErrorKind.CONNECTION, RcloneErrorKind.FILE, RcloneErrorKind.CONFIG

CLASSIFICATION = [
    # authentication, authorisation, host keys, bucket, settings → config
    ("read metadata failed: 401 Unauthorized: 401 Unauthorized", 1, K),
    ("operation error S3: HeadObject, https response error StatusCode: 403, RequestID: , "
     "HostID: , api error Forbidden: Forbidden", 1, K),
    ("api error InvalidAccessKeyId: The AWS Access Key Id you provided does not exist", 1, K),
    ("api error SignatureDoesNotMatch: The request signature we calculated does not match", 1, K),
    ("NewFs: couldn't connect SSH: ssh: handshake failed: ssh: unable to authenticate, "
     "attempted methods [none password], no supported methods remain", 1, K),
    ("NewFs: couldn't connect SSH: ssh: handshake failed: knownhosts: key mismatch", 1, K),
    ("NewFs: couldn't connect SSH: ssh: handshake failed: knownhosts: key is unknown", 1, K),
    ("sftp: \"permission denied\" (SSH_FX_PERMISSION_DENIED)", 1, K),
    ("operation error S3: PutObject, https response error StatusCode: 404, RequestID: 78D3, "
     "HostID: NzhE==, api error NoSuchBucket: The specified bucket does not exist", 1, K),
    ("Error: unknown flag: --webdav-pacer-min-sleep", 2, K),
    ('Propfind "https://127.0.0.1:8091/a": http: server gave HTTP response to HTTPS client', 1, K),
    # the network → connection
    ('Propfind "http://127.0.0.1:18099/a/q.bin": dial tcp 127.0.0.1:18099: connect: '
     "connection refused", 5, C),
    ('Propfind "http://nas.invalid/a": dial tcp: lookup nas.invalid on 10.0.0.53:53: '
     "no such host", 1, C),
    ("dial tcp 192.168.1.20:443: i/o timeout", 1, C),
    ("Put \"https://h/x\": net/http: TLS handshake timeout", 1, C),
    ("tls: failed to verify certificate: x509: certificate signed by unknown authority", 1, C),
    ("read tcp 10.0.0.2:5123->10.0.0.1:443: read: connection reset by peer", 1, C),
    ("unchunked simple update failed: 502 Bad Gateway", 1, C),
    ("api error SlowDown: Please reduce your request rate. StatusCode: 503", 1, C),
    ("429 Too Many Requests", 1, C),
    ("unchunked simple update failed: Insufficient Storage: 507 Insufficient Storage", 1, C),
    ("network is unreachable", 1, C),
    ("context deadline exceeded", 1, C),
    ("something rclone retries", 5, C),
    # this object → file
    ("unchunked simple update failed: Conflict: 409 Conflict", 1, F),
    ("unchunked simple update failed: Not Found: 404 Not Found", 1, F),
    ("Update mkParentDir failed: Conflict: 409 Conflict", 1, F),
    ('Put mkParentDir failed: mkdir "/upload/blocker" failed: sftp: "mkdir /srv/upload/blocker: '
     'not a directory" (SSH_FX_FAILURE)', 1, F),
    ("open /mnt/usb/silvasonic/x.flac: is a directory", 1, F),
    ("Source doesn't exist or is a directory and destination is a file", 1, F),
    ("413 Request Entity Too Large", 1, F),
    ("corrupted on transfer: md5 hash differ \"a\" vs \"b\"", 1, F),
    ("directory not found", 3, F),
    # nothing recognisable: the exit code, else the conservative default
    ("fatal error: account suspended", 7, K),
    ("a failure nobody has seen before", 1, F),
    ("a failure nobody has seen before", None, F),
]  # fmt: skip


@pytest.mark.parametrize(("message", "exit_code", "kind"), CLASSIFICATION)
def test_classification_table(message: str, exit_code: int | None, kind: RcloneErrorKind) -> None:
    assert classify_rclone_error([message], exit_code) is kind
    # the same words in a JSON log line, as the cli transport reads them
    line = '{"level":"error","msg":' + __import__("json").dumps(message) + "}"
    assert classify_rclone_error(extract_error_messages(line), exit_code) is kind


def test_numbers_that_are_not_statuses_are_ignored() -> None:
    # ports, IPs, sizes and request ids must not read as HTTP statuses
    assert classify_rclone_error("copy to 10.0.0.200:4430 of 200000 bytes, id AB403CD", None) is F
    assert classify_rclone_error("dial tcp 10.0.4.1:401: connection refused", None) is C


def test_extract_error_messages() -> None:
    stderr = "\n".join(
        [
            '{"level":"notice","msg":"Config file not found - using defaults"}',
            '{"level":"error","msg":"Failed to copy: 409 Conflict","object":"a"}',
            '{"level":"error","msg":"Attempt 1/1 failed with 1 errors and: 409 Conflict"}',
            '{"level":"notice","msg":"Failed to copyto: 409 Conflict"}',
            "panic: runtime error",
        ]
    )
    assert extract_error_messages(stderr) == ["409 Conflict", "panic: runtime error"]


# -- bandwidth limits and the hard limit -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "arg", "slowest"),
    [
        (None, None, None), ("", None, None), ("off", None, None), ("OFF", None, None),
        ("0", None, None), ("1M", "1M", 1 << 20), ("500k", "500k", 500 << 10),
        ("512", "512", 512 << 10), ("1.5M", "1.5M", 3 << 19), ("1MiB", "1MiB", 1 << 20),
        ("100b", "100b", 100), ("10M:100k", "10M:100k", 10 << 20), ("off:1M", None, None),
        ("08:00,512k 19:00,off", "08:00,512k 19:00,off", 512 << 10),
        ("Mon-08:00,1M Sat-00:00,256k", "Mon-08:00,1M Sat-00:00,256k", 256 << 10),
        ("00:00,off 12:00,off", "00:00,off 12:00,off", None),
        ("08:00,512k:1M", "08:00,512k:1M", 512 << 10),
    ],
)  # fmt: skip
def test_parse_bwlimit(value: str | None, arg: str | None, slowest: int | None) -> None:
    assert parse_bwlimit(value) == BandwidthLimit(arg, slowest)


@pytest.mark.parametrize(
    "value",
    ["fast", "1X", "-1M", "1 M", "1M 2M", "25:00,1M", "8:00,1M", "Mon,1M", "08:00,", "08:00,lots",
     "1M:fast", "08:00;1M"],
)  # fmt: skip
def test_parse_bwlimit_refuses_garbage(value: str) -> None:
    with pytest.raises(SettingsInvalid) as info:
        parse_bwlimit(value)
    assert info.value.field == "bandwidth_limit"


def test_hard_limit_grows_with_size_and_shrinking_limit() -> None:
    unlimited = parse_bwlimit(None)
    assert hard_limit_s(0, unlimited) == HARD_LIMIT_BASE_S
    assert hard_limit_s(LINK_FLOOR_BPS, unlimited) == HARD_LIMIT_BASE_S + 3
    # a generous limit never makes the hard limit tighter than the link floor allows …
    assert hard_limit_s(3 << 20, parse_bwlimit("10M")) == hard_limit_s(3 << 20, unlimited)
    # … a tight one makes it longer; a timetable counts by its slowest slot
    assert hard_limit_s(3 << 20, parse_bwlimit("16k")) == HARD_LIMIT_BASE_S + 3 * 192
    assert hard_limit_s(3 << 20, parse_bwlimit("08:00,16k 20:00,off")) == HARD_LIMIT_BASE_S + 576


# -- obscure ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("plain", ["", "p", "hällo wörld", "x" * 100])
def test_obscure_round_trip(plain: str) -> None:
    once, twice = obscure(plain), obscure(plain)
    assert once != twice  # a random IV each time
    assert "=" not in once and "+" not in once and "/" not in once  # base64url, unpadded
    assert reveal(once) == reveal(twice) == plain


def test_reveal_of_known_rclone_value() -> None:
    # produced by `rclone obscure p` (v1.75.2)
    assert reveal("RtYVAejZ-WaaWkoGp8K5T8A") == "p"
