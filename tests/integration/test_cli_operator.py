"""The operator commands (``remotes``, ``status``, ``parked``) against a real PostgreSQL and
Redis, driven through the CLI as an operator would (connection from the environment), with
every output checked for secrets - and, for one ``remotes add`` run as a process, every
process's argument list while it runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from silvasonic_uploader.cli.main import main
from tests.factories import BASE_TIME, make_recording, make_remote, make_upload, set_config
from uploader.completion import audit_logger
from uploader.db.models import PairState, StorageRemote
from uploader.ledger import leases
from uploader.remotes import state as remote_state
from uploader.remotes.secrets import decrypt_value, generate_key

SECRET_USER = "alice-user-7f3k"
SECRET_PASS = "pw-Zq9!rT#4-never-shown"
SECRET_KEY_ID = "AKIA-secret-id-51xw"
SECRET_ACCESS = "s3-secret-access-0b2c9e"
SECRETS = (SECRET_USER, SECRET_PASS, SECRET_KEY_ID, SECRET_ACCESS)

ENV_TO_CLEAR = (
    "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_HOST", "POSTGRES_PORT",
    "SILVASONIC_DB_HOST", "SILVASONIC_DB_PORT", "SILVASONIC_ENCRYPTION_KEY",
)  # fmt: skip


def assert_no_secret(*texts: str) -> None:
    for blob in texts:
        for secret in SECRETS:
            assert secret not in blob


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str, redis_url: str) -> pytest.MonkeyPatch:
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SILVASONIC_DATABASE_URL", db_url)
    monkeypatch.setenv("SILVASONIC_REDIS_URL", redis_url)
    return monkeypatch


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


@pytest.fixture
def nudges(redis_url: str) -> Iterator[redis.client.PubSub]:
    """A subscriber to the controller's nudge channel."""
    client: redis.Redis[Any] = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("silvasonic:nudge")
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    yield pubsub
    pubsub.close()
    client.close()


def nudged(pubsub: redis.client.PubSub) -> list[bytes]:
    seen = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is not None:
            seen.append(message["data"])
        elif seen:
            break
    return seen


def run(args: list[str], input: str | None = None) -> Result:
    result = CliRunner().invoke(main, args, input=input)
    assert_no_secret(result.stdout, result.stderr)
    return result


def config_of(factory: sessionmaker[Session], slug: str) -> dict[str, Any]:
    with factory() as s:
        row = s.get(StorageRemote, slug)
        assert row is not None
        return dict(row.config)


# -- remotes add / list / set -------------------------------------------------------------


def test_add_reads_secrets_from_stdin_and_stores_them_encrypted(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session], nudges: redis.client.PubSub
) -> None:
    key = generate_key()
    env.setenv("SILVASONIC_ENCRYPTION_KEY", key)

    result = run(
        ["remotes", "add", "nextcloud", "--type", "webdav", "--name", "Nextcloud",
         "--option", "url=https://cloud.example.org/remote.php/dav/files/alice/",
         "--option", "vendor=nextcloud", "--target-path", "Silvasonic", "--secrets-from-stdin"],
        input=f"user={SECRET_USER}\npass={SECRET_PASS}\n",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "remote 'nextcloud' added (webdav, active)" in result.stdout
    assert "PLAINTEXT" not in result.stderr
    config = config_of(factory, "nextcloud")
    assert config["url"] == "https://cloud.example.org/remote.php/dav/files/alice/"
    assert config["user"].startswith("enc:") and config["pass"].startswith("enc:")
    assert decrypt_value(config["user"], key) == SECRET_USER
    assert decrypt_value(config["pass"], key) == SECRET_PASS
    assert nudged(nudges) == [b"reconcile"]


def test_add_without_a_key_stores_plaintext_with_a_loud_warning(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    result = run(
        ["remotes", "add", "archive", "--type", "s3", "--name", "Archive",
         "--option", "endpoint=http://127.0.0.1:9000", "--target-path", "bucket",
         "--secrets-from-stdin", "--json"],
        input=f"access_key_id={SECRET_KEY_ID}\nsecret_access_key={SECRET_ACCESS}\n",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "SILVASONIC_ENCRYPTION_KEY is not set" in result.stderr
    assert "IN PLAINTEXT" in result.stderr
    payload = json.loads(result.stdout)
    assert payload["action"] == "added"
    assert payload["encrypted"] is False
    assert payload["secrets_set"] == ["access_key_id", "secret_access_key"]
    assert config_of(factory, "archive")["secret_access_key"] == SECRET_ACCESS


def test_add_prompts_for_the_required_secrets(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    env.setenv("SILVASONIC_ENCRYPTION_KEY", generate_key())
    result = run(
        ["remotes", "add", "nas", "--type", "webdav", "--name", "NAS",
         "--option", "url=https://nas.local/dav/"],
        input=f"{SECRET_PASS}\n{SECRET_USER}\n",  # prompts come in field order: pass, user
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pass for nas" in result.stderr and "user for nas" in result.stderr
    config = config_of(factory, "nas")
    key = os.environ["SILVASONIC_ENCRYPTION_KEY"]
    assert decrypt_value(config["pass"], key) == SECRET_PASS
    assert decrypt_value(config["user"], key) == SECRET_USER


@pytest.mark.parametrize("option", [f"pass={SECRET_PASS}", f"user={SECRET_USER}"])
def test_a_secret_on_the_command_line_is_refused(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session], option: str
) -> None:
    result = run(
        ["remotes", "add", "nextcloud", "--type", "webdav", "--name", "N",
         "--option", "url=https://x.example/", "--option", option, "--secrets-from-stdin"],
        input=f"user={SECRET_USER}\n",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "never taken from the command line" in result.stderr
    assert "--secrets-from-stdin" in result.stderr
    with factory() as s:
        assert s.get(StorageRemote, "nextcloud") is None


def test_invalid_config_is_refused_naming_the_field_not_the_value(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    result = run(
        ["remotes", "add", "box", "--type", "sftp", "--name", "Box", "--option", "host=h",
         "--option", "ssh=/bin/sh -c evil", "--secrets-from-stdin"],
        input=f"pass={SECRET_PASS}\n",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "option 'ssh' is refused" in result.stderr
    assert "nothing was saved" in result.stderr
    with factory() as s:
        assert s.get(StorageRemote, "box") is None


def test_a_local_remote_needs_an_absolute_target_path(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    for target in ([], ["--target-path", "usb/archive"]):
        refused = run(["remotes", "add", "usb", "--type", "local", "--name", "USB", *target])
        assert refused.exit_code == 1
        assert "an absolute folder on this machine" in refused.stderr
    assert run(["remotes", "add", "usb", "--type", "local", "--name", "USB",
                "--target-path", "/mnt/usb"]).exit_code == 0  # fmt: skip
    cleared = run(["remotes", "set", "usb", "--clear-target-path"])
    assert cleared.exit_code == 1 and "nothing was saved" in cleared.stderr
    with factory() as s:
        row = s.get(StorageRemote, "usb")
        assert row is not None and row.target_path == "/mnt/usb"


def test_list_masks_every_secret(env: pytest.MonkeyPatch, factory: sessionmaker[Session]) -> None:
    key = generate_key()
    env.setenv("SILVASONIC_ENCRYPTION_KEY", key)
    assert run(
        ["remotes", "add", "nextcloud", "--type", "webdav", "--name", "Nextcloud",
         "--option", "url=https://cloud.example.org/dav/", "--secrets-from-stdin"],
        input=f"user={SECRET_USER}\npass={SECRET_PASS}\n",
    ).exit_code == 0  # fmt: skip
    env.delenv("SILVASONIC_ENCRYPTION_KEY")
    assert run(
        ["remotes", "add", "archive", "--type", "s3", "--name", "Archive", "--inactive",
         "--option", f"endpoint=https://{SECRET_USER}:{SECRET_PASS}@s3.example.org",
         "--secrets-from-stdin"],
        input=f"access_key_id={SECRET_KEY_ID}\nsecret_access_key={SECRET_ACCESS}\n",
    ).exit_code == 0  # fmt: skip

    text_out = run(["remotes", "list"])
    as_json = run(["remotes", "list", "--json"])

    assert text_out.exit_code == 0 and as_json.exit_code == 0
    assert "nextcloud  (webdav, active, running)  Nextcloud" in text_out.stdout
    assert "archive  (s3, inactive, inactive)  Archive" in text_out.stdout
    listed = {r["slug"]: r for r in json.loads(as_json.stdout)["remotes"]}
    assert listed["nextcloud"]["options"] == {
        "pass": "enc:***",
        "url": "https://cloud.example.org/dav/",
        "user": "enc:***",
    }
    assert listed["archive"]["options"]["secret_access_key"] == "***"
    assert listed["archive"]["options"]["endpoint"] == "https://***@s3.example.org"
    assert listed["archive"]["is_active"] is False


def test_set_replaces_a_secret_and_encrypts_plaintext_ones(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    assert run(
        ["remotes", "add", "nextcloud", "--type", "webdav", "--name", "Nextcloud",
         "--option", "url=https://cloud.example.org/dav/", "--secrets-from-stdin"],
        input=f"user={SECRET_USER}\npass=old-password\n",
    ).exit_code == 0  # fmt: skip
    key = generate_key()
    env.setenv("SILVASONIC_ENCRYPTION_KEY", key)

    result = run(
        ["remotes", "set", "nextcloud", "--name", "Cloud", "--option", "vendor=nextcloud",
         "--secret", "pass", "--encrypt-secrets", "--json"],
        input=f"{SECRET_PASS}\n",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["changed"] == ["name", "config"]
    assert payload["encrypted_in_place"] == ["user"]
    config = config_of(factory, "nextcloud")
    assert config["vendor"] == "nextcloud"
    assert decrypt_value(config["pass"], key) == SECRET_PASS
    assert decrypt_value(config["user"], key) == SECRET_USER


# -- a seeded station: status, status --deletable, parked ------------------------------------


def seed_station(factory: sessionmaker[Session]) -> dict[str, int]:
    """Two required remotes (``nas`` fine, ``cloud`` unavailable), one over the cap (``usb``);
    r1, r2 on both (uploaded), r3 on nas only, r4 parked on nas, r5 and r6 pending everywhere."""
    with factory() as s:
        set_config(s, "system", {"max_uploaders": 2})
        make_remote(s, "nas", created_at=BASE_TIME)
        make_remote(s, "cloud", created_at=BASE_TIME + timedelta(days=1))
        make_remote(s, "usb", created_at=BASE_TIME + timedelta(days=2))
        ids = {
            f"r{i}": make_recording(s, time=BASE_TIME + timedelta(minutes=i)).id
            for i in range(1, 7)
        }
        s.commit()
        for rid in (ids["r1"], ids["r2"]):
            for slug in ("nas", "cloud"):
                audit_logger.log_upload_attempt(s, rid, slug, "x.flac", 100, True, None)
        audit_logger.log_upload_attempt(s, ids["r3"], "nas", "x.flac", 100, True, None)
        audit_logger.log_upload_attempt(
            s, ids["r4"], "nas", "x.flac", 0, False, f"object rejected (pass={SECRET_PASS})",
            error_kind="file", attempt_key="a1",
        )  # fmt: skip
        s.add(
            PairState(
                recording_id=ids["r4"],
                remote_slug="nas",
                file_failures=3,
                parked_until=s.execute(text("SELECT now() + interval '1 day'")).scalar_one(),
                last_error="object rejected (pass=***)",
            )
        )
        remote_state.mark_unavailable(s, "cloud", "dial tcp 127.0.0.1:1: connection refused")
        s.commit()
    return ids


def test_status_reports_a_seeded_station(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    ids = seed_station(factory)

    result = run(["status", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["required"] == ["nas", "cloud"]
    assert report["janitor_gate"] is True
    remotes = {r["slug"]: r for r in report["remotes"]}
    assert list(remotes) == ["nas", "cloud", "usb"]
    nas, cloud, usb = remotes["nas"], remotes["cloud"], remotes["usb"]
    assert (nas["state"], nas["pending"], nas["parked"], nas["in_flight"]) == ("ok", 2, 1, 0)
    assert nas["uploads_last_hour"] == 3 and nas["failures_last_hour"] == 1
    assert nas["last_success_at"] is not None
    assert nas["oldest_pending_at"].startswith((BASE_TIME + timedelta(minutes=5)).isoformat()[:16])
    assert cloud["state"] == "unavailable"
    assert cloud["unavailable_since"] is not None
    assert "connection refused" in cloud["detail"]
    assert (cloud["pending"], cloud["parked"], cloud["uploads_last_hour"]) == (4, 0, 2)
    assert usb["state"] == "over_cap" and usb["required"] is False and usb["running"] is False
    assert report["recordings"] == {"on_disk": 6, "complete": 2, "deletable": 2, "incomplete": 4}
    oldest = report["oldest_incomplete"]
    assert oldest["recording_id"] == ids["r3"]
    assert oldest["waiting_for"] == [
        {"remote": "cloud", "state": "unavailable", "pair": "pending", "file_failures": 0,
         "parked_until": None, "last_error": None},
    ]  # fmt: skip
    assert report["audit_window"]["whole_audit"] is True

    text_out = run(["status"])
    assert text_out.exit_code == 0, text_out.output
    out = text_out.stdout
    assert "nas " in out and "cloud " in out and "over_cap" in out
    assert "cloud: unavailable since" in out
    assert "recordings on disk: 6; complete (the Janitor may delete): 2; incomplete: 4" in out
    assert f"oldest incomplete: recording {ids['r3']}" in out
    assert "waits for cloud (remote unavailable; pair pending)" in out


def test_status_names_a_parked_pair_as_what_holds_the_janitor_back(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    ids = seed_station(factory)
    with factory() as s:  # cloud catches up on r3: r4 is now the oldest incomplete
        audit_logger.log_upload_attempt(s, ids["r3"], "cloud", "x.flac", 100, True, None)
        s.commit()
    report = json.loads(run(["status", "--json"]).stdout)
    oldest = report["oldest_incomplete"]
    assert oldest["recording_id"] == ids["r4"]
    holds = {w["remote"]: w for w in oldest["waiting_for"]}
    assert holds["nas"]["pair"] == "parked" and holds["nas"]["file_failures"] == 3
    assert holds["nas"]["last_error"] == "object rejected (pass=***)"
    assert holds["cloud"]["pair"] == "pending"
    assert report["recordings"]["complete"] == 3


def test_status_deletable_lists_only_uploaded_recordings(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    ids = seed_station(factory)
    with factory() as s:  # an uploaded recording the Janitor already deleted is not listed
        s.execute(
            text("UPDATE recordings SET local_deleted = true WHERE id = :id"), {"id": ids["r2"]}
        )
        s.commit()

    result = run(["status", "--deletable", "--json"])
    text_out = run(["status", "--deletable", "--limit", "5"])

    assert result.exit_code == 0, result.output
    assert [r["recording_id"] for r in json.loads(result.stdout)["deletable"]] == [ids["r1"]]
    assert text_out.stdout.splitlines()[0].startswith(f"{ids['r1']}\t")
    assert len(text_out.stdout.splitlines()) == 1


def test_parked_list_and_retry(env: pytest.MonkeyPatch, factory: sessionmaker[Session]) -> None:
    ids = seed_station(factory)

    listed = run(["parked", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [pair] = json.loads(listed.stdout)["parked"]
    assert (pair["remote"], pair["recording_id"], pair["file_failures"]) == ("nas", ids["r4"], 3)
    assert pair["last_error"] == "object rejected (pass=***)"
    assert "recording" in run(["parked", "list"]).stdout

    assert "no remote 'nope'" in run(["parked", "retry", "--remote", "nope"]).stderr
    other = run(["parked", "retry", "--recording", str(ids["r5"]), "--json"])
    assert json.loads(other.stdout) == {"unparked": 0, "by_remote": {}}

    retried = run(["parked", "retry", "--remote", "nas", "--recording", str(ids["r4"])])
    assert retried.exit_code == 0, retried.output
    assert "unparked 1 pair(s) (nas: 1)" in retried.stdout
    with factory() as s:
        row = s.get(PairState, (ids["r4"], "nas"))
        assert row is not None
        assert (row.parked_until, row.file_failures) == (None, 0)
    assert json.loads(run(["parked", "list", "--json"]).stdout)["parked"] == []
    status = json.loads(run(["status", "--json"]).stdout)
    assert {r["slug"]: r["pending"] for r in status["remotes"]}["nas"] == 3


# -- activate / deactivate / remove ---------------------------------------------------------


def test_deactivate_purges_the_queue_releases_leases_and_completes_recordings(
    env: pytest.MonkeyPatch,
    factory: sessionmaker[Session],
    redis_url: str,
    nudges: redis.client.PubSub,
) -> None:
    with factory() as s:
        make_remote(s, "nas", created_at=BASE_TIME)
        make_remote(s, "cloud", created_at=BASE_TIME + timedelta(days=1))
        done_on_nas = make_recording(s).id
        for _ in range(3):
            make_recording(s)
        s.commit()
        audit_logger.log_upload_attempt(s, done_on_nas, "nas", "x.flac", 1, True, None)
        s.commit()
        leased = leases.claim(s, "cloud", 3, lease_s=600)
        s.commit()
    assert len(leased) == 3
    client: redis.Redis[Any] = redis.Redis.from_url(redis_url)
    client.rpush("upload.cloud", b"m1", b"m2")
    client.rpush("upload.cloud\x06\x166", b"m3")  # an encode, in its own priority list
    client.sadd("_kombu.binding.upload.cloud", b"upload.cloud")
    client.rpush("upload.nas", b"keep-me")

    result = run(["remotes", "deactivate", "cloud", "--json"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["action"] == "deactivated"
    assert payload["leases_released"] == 3
    assert payload["recordings_completed"] == 1
    assert payload["purged_messages"] == 3
    assert payload["nudged"] is True
    assert client.keys("*upload.cloud*") == []
    assert client.llen("upload.nas") == 1
    with factory() as s:
        live = s.execute(
            text(
                "SELECT count(*) FROM pair_state WHERE remote_slug = 'cloud' AND lease_token IS NOT NULL"
            )
        ).scalar_one()
        assert live == 0
        row = s.get(StorageRemote, "cloud")
        assert row is not None and row.is_active is False
        assert audit_logger.is_deletable(s, done_on_nas)
    assert nudged(nudges) == [b"reconcile"]

    again = run(["remotes", "activate", "cloud"])
    assert again.exit_code == 0 and "remote 'cloud' activated" in again.stdout
    client.close()


def test_remove_refuses_while_the_remote_holds_uploaded_recordings(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    with factory() as s:
        make_remote(s, "nas")
        make_remote(s, "spare")
        make_upload(s, make_recording(s).id, "nas", success=True)
        s.commit()

    refused = run(["remotes", "remove", "nas"])
    removed = run(["remotes", "remove", "spare", "--json"])

    assert refused.exit_code == 1
    assert "cannot be removed" in refused.stderr
    assert "silvasonic-uploader remotes deactivate nas" in refused.stderr
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout)["action"] == "removed"
    with factory() as s:
        assert s.get(StorageRemote, "nas") is not None
        assert s.get(StorageRemote, "spare") is None


def test_redis_unreachable_is_a_warning_not_a_failure(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    with factory() as s:
        make_remote(s, "nas", is_active=False)
        s.commit()
    env.setenv("SILVASONIC_REDIS_URL", "redis://127.0.0.1:1/0")

    result = run(["remotes", "activate", "nas", "--json"])

    assert result.exit_code == 0, result.output
    assert "could not nudge the controller" in result.stderr
    payload = json.loads(result.stdout)
    assert payload["nudged"] is False and payload["warnings"]
    with factory() as s:
        row = s.get(StorageRemote, "nas")
        assert row is not None and row.is_active is True


def test_an_unreachable_database_says_what_to_check(env: pytest.MonkeyPatch) -> None:
    env.setenv("SILVASONIC_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing")
    for args in (["status"], ["remotes", "list"], ["parked", "list"]):
        result = run(args)
        assert result.exit_code == 1
        assert "cannot reach the database" in result.stderr
        assert "SILVASONIC_DATABASE_URL" in result.stderr


# -- no secret in any process's argument list -----------------------------------------------


def _cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            out.append(
                (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
    return out


def test_no_secret_in_any_argument_list_while_remotes_add_runs(
    env: pytest.MonkeyPatch, factory: sessionmaker[Session]
) -> None:
    binary = shutil.which("silvasonic-uploader") or str(
        Path(sys.executable).with_name("silvasonic-uploader")
    )
    child_env = {**os.environ, "SILVASONIC_ENCRYPTION_KEY": generate_key()}
    proc = subprocess.Popen(
        [binary, "remotes", "add", "nextcloud", "--type", "webdav", "--name", "Nextcloud",
         "--option", "url=https://cloud.example.org/dav/", "--secrets-from-stdin", "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        proc.stdin.write(f"user={SECRET_USER}\npass={SECRET_PASS}\n".encode())
        proc.stdin.flush()
        # the secrets are in the child's pipe, the pipe is held open: it is still reading
        seen_running = 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            assert proc.poll() is None
            assert_no_secret(*_cmdlines())
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
            assert_no_secret(ps.stdout)
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
            assert_no_secret(environ)
            seen_running += 1
            if seen_running >= 5:
                break
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise
    stdout, stderr = proc.communicate(timeout=60)  # closes stdin: the child reads end of input
    assert proc.returncode == 0, stderr.decode()
    assert_no_secret(stdout.decode(), stderr.decode())
    assert json.loads(stdout)["encrypted"] is True
    stored = config_of(factory, "nextcloud")
    assert decrypt_value(stored["pass"], child_env["SILVASONIC_ENCRYPTION_KEY"]) == SECRET_PASS
