"""What `remotes add|set|remove` refuse, and in which order they speak, through the real CLI
against a real PostgreSQL (each case was accepted, or misordered, before)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.main import main
from tests.factories import make_recording, make_remote, make_upload

pytestmark = pytest.mark.integration
PASSWORD = "Pw-d0-not-echo-7731"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, db_url: str, redis_url: str) -> None:
    monkeypatch.delenv("SILVASONIC_ENCRYPTION_KEY", raising=False)
    monkeypatch.setenv("SILVASONIC_DATABASE_URL", db_url)
    monkeypatch.setenv("SILVASONIC_REDIS_URL", redis_url)


def cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def _add_webdav(url: str, slug: str = "dav") -> Result:
    return cli("remotes", "add", slug, "--type", "webdav", "--name", "Dav", "--option",
               f"url={url}", "--secrets-from-stdin", stdin=f"user=alice\npass={PASSWORD}\n")  # fmt: skip


@pytest.mark.parametrize(
    "url", ["not-a-url", "ftp://files.example.org/x", "http://", "javascript:alert(1)"]
)
def test_a_webdav_url_must_be_http_or_https_with_a_host(engine: Engine, url: str) -> None:
    result = _add_webdav(url)
    assert result.exit_code != 0
    assert "http:// or https:// URL with a host" in result.output
    assert "nothing was saved" in result.output
    assert "PLAINTEXT" not in result.output  # no storage warning for a refused remote
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM storage_remotes")).scalar() == 0


def test_credentials_inside_a_url_are_refused_without_echoing_them(engine: Engine) -> None:
    result = _add_webdav(f"http://alice:{PASSWORD}@cloud.example.org/dav")
    assert result.exit_code != 0
    assert "--secret" in result.output
    assert PASSWORD not in result.output


def test_an_s3_endpoint_must_be_a_url(engine: Engine) -> None:
    result = cli("remotes", "add", "box", "--type", "s3", "--name", "Box", "--option",
                 "endpoint=notaurl", "--secrets-from-stdin",
                 stdin="access_key_id=AK1\nsecret_access_key=sk1\n")  # fmt: skip
    assert result.exit_code != 0 and "http:// or https:// URL" in result.output


@pytest.mark.parametrize("slug", ["-x", "---", "-"])
def test_a_slug_starts_with_a_letter_or_a_digit(engine: Engine, slug: str) -> None:
    result = cli("remotes", "add", "--type", "local", "--name", "X", "--target-path", "/mnt/x",
                 "--", slug)  # fmt: skip
    assert result.exit_code != 0
    assert "starting with a letter or a digit" in result.output


def test_a_valid_remote_is_added_and_warned_about_plaintext_only_then(engine: Engine) -> None:
    result = _add_webdav("https://cloud.example.org/remote.php/dav/files/alice/")
    assert result.exit_code == 0, result.output
    assert "PLAINTEXT" in result.output and PASSWORD not in result.output


def test_a_remote_that_only_ever_failed_can_be_removed_and_its_rows_stay(
    engine: Engine,
) -> None:
    with Session(engine) as s:
        make_remote(s, "typo", type="local", target_path="/mnt/typo")
        rec = make_recording(s)
        make_upload(s, rec.id, "typo", success=False, attempt_key="a1")
        make_upload(s, rec.id, "typo", success=False, attempt_key="a2")
        s.commit()
    result = cli("remotes", "remove", "typo")
    assert result.exit_code == 0, result.output
    assert "2 failed attempt(s) stay in the audit" in result.output
    assert "WHERE remote_slug = 'typo'" in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM storage_remotes")).scalar() == 0
        kept = conn.execute(text("SELECT count(*) FROM uploads WHERE remote_slug='typo'"))
        assert kept.scalar() == 2


def test_a_remote_that_holds_recordings_cannot_be_removed(engine: Engine) -> None:
    with Session(engine) as s:
        make_remote(s, "nas", type="local", target_path="/mnt/nas")
        make_upload(s, make_recording(s).id, "nas")
        s.commit()
    result = cli("remotes", "remove", "nas")
    assert result.exit_code != 0
    assert "holds 1 uploaded recording" in result.output and "deactivate" in result.output


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("/", "the root folder"),
        ("/etc/silvasonic", "a system folder"),
        ("/mnt/../usr/lib", "a system folder"),
        ("/home/pi/archive", "not below an allowed root"),
        ("/mnt", "not below an allowed root"),  # a root itself: the whole mount point
        ("/srv/station/workspace/recorder", "overlaps the recorder workspace"),
        ("/srv/station", "overlaps the recorder workspace"),
    ],
)
def test_a_local_remote_writes_only_below_an_allowed_root(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, target: str, says: str
) -> None:
    # given: the station's defaults (USB disks and archive mounts) and its workspace
    monkeypatch.delenv("SILVASONIC_LOCAL_REMOTE_ROOTS", raising=False)
    monkeypatch.setenv("SILVASONIC_WORKSPACE_PATH", "/srv/station/workspace")
    # when
    result = cli("remotes", "add", "usb", "--type", "local", "--name", "USB",
                 "--target-path", target)  # fmt: skip
    # then
    assert result.exit_code != 0
    assert says in result.output and "nothing was saved" in result.output, result.output
    with Session(engine) as s:
        assert s.execute(text("SELECT count(*) FROM storage_remotes")).scalar() == 0
    # and a folder below an allowed root is taken, as is one below a root the operator added
    assert cli("remotes", "add", "usb", "--type", "local", "--name", "USB",
               "--target-path", "/media/usb/silvasonic").exit_code == 0  # fmt: skip
    monkeypatch.setenv("SILVASONIC_LOCAL_REMOTE_ROOTS", "/home/pi")
    assert cli("remotes", "set", "usb", "--target-path", "/home/pi/archive").exit_code == 0
