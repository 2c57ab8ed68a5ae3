"""Pointing a remote somewhere else, through the real CLI against a real PostgreSQL: what
`remotes set` says, what the dispatcher then claims, what `status` names, and `--moved`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.main import main
from tests.factories import make_recording, make_remote, make_upload, set_config
from uploader.ledger import leases

pytestmark = pytest.mark.integration


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str, redis_url: str) -> None:
    monkeypatch.delenv("SILVASONIC_ENCRYPTION_KEY", raising=False)
    monkeypatch.setenv("SILVASONIC_DATABASE_URL", db_url)
    monkeypatch.setenv("SILVASONIC_REDIS_URL", redis_url)


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def _station(engine: Engine, tmp_path: Path, slug: str) -> dict[str, int]:
    """Three recordings uploaded to ``slug``'s folder and flagged; one's audio deleted since."""
    with Session(engine) as s:
        set_config(s, "uploader", {"batch_size": 10})
        make_remote(s, slug, type="local", target_path=str(tmp_path / f"{slug}-old"))
        ids = {
            "on_disk": make_recording(s, duration=1.0).id,
            "deleted": make_recording(s, duration=1.0, local_deleted=True).id,
            "on_disk_2": make_recording(s, duration=1.0).id,
        }
        for rid in ids.values():
            make_upload(s, rid, slug)
        s.execute(text("UPDATE recordings SET uploaded = true, uploaded_at = now()"))
        leases.claim(s, slug, 10, lease_s=60)  # the dispatcher made the remote's cursor
        s.commit()
    return ids


def _claim(engine: Engine, slug: str) -> list[int]:
    with Session(engine) as s:
        claimed = [lease.recording_id for lease in leases.claim(s, slug, 10, lease_s=60)]
        s.commit()
    return sorted(claimed)


def _status(slug: str) -> dict[str, object]:
    report = json.loads(run("status", "--json").stdout)
    return next(r for r in report["remotes"] if r["slug"] == slug)


def test_a_new_target_path_says_what_follows_and_status_names_what_stays_behind(
    env: None, engine: Engine, tmp_path: Path, redis_url: str
) -> None:
    ids = _station(engine, tmp_path, "nas")
    assert _claim(engine, "nas") == []  # everything is done where it points now

    out = run("remotes", "set", "nas", "--target-path", str(tmp_path / "nas-new")).output
    assert "2 recording(s) still on disk will be uploaded again to the new place" in out
    assert (
        f"1 recording(s) no longer exist locally and remain only at the old place (ids {ids['deleted']})"
        in out
    )
    assert "--moved" in out

    # the dispatcher's next claim takes the recordings still on disk again, for the new place
    assert _claim(engine, "nas") == sorted([ids["on_disk"], ids["on_disk_2"]])
    # nothing is unflagged, and status names the one whose only copy is at the old place
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM recordings WHERE uploaded")).scalar() == 3
    remote = _status("nas")
    assert remote["only_at_earlier_destination"] == 1
    assert remote["only_at_earlier_destination_ids"] == [ids["deleted"]]
    assert "only at an earlier destination" in run("status").output
    redis.Redis.from_url(redis_url).close()


def test_moved_carries_the_successes_over_audited_and_nothing_is_uploaded_again(
    env: None, engine: Engine, tmp_path: Path
) -> None:
    ids = _station(engine, tmp_path, "usb")
    new = tmp_path / "usb-new"
    result = run("remotes", "set", "usb", "--target-path", str(new), "--moved", "--json")
    change = json.loads(result.stdout)["destination"]
    assert change["moved"] is True and change["carried_over"] == 3
    assert change["upload_again"] == 0 and change["only_at_old_place"] == 0

    assert _claim(engine, "usb") == []
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT recording_id, remote_path, verified_by FROM uploads "
                 "WHERE success AND verified_by = 'moved' ORDER BY recording_id")
        ).all()  # fmt: skip
    assert [r.recording_id for r in rows] == sorted(ids.values())
    assert all(r.remote_path is None or r.remote_path.startswith(str(new)) for r in rows)
    assert _status("usb")["only_at_earlier_destination"] == 0


def test_moved_without_a_new_destination_is_refused(
    env: None, engine: Engine, tmp_path: Path
) -> None:
    _station(engine, tmp_path, "usb")
    result = CliRunner().invoke(main, ["remotes", "set", "usb", "--name", "USB", "--moved"])
    assert result.exit_code != 0
    assert "--moved goes with a new destination" in result.output
