"""The Janitor's signal is exact and unforgeable, through real workers, Redis and PostgreSQL.

Regression tests for the ways a recording was flagged ``uploaded`` while a remote lacked its
audio: a forged audit message (sent by a separate process that knows only the Redis URL), a
remote pointed at another folder, and two recordings mapped to one remote path. Each failed on
the code before ``uploader.ledger.evidence`` / ``uploader.remotes.destination`` / ``uploader.ledger.remote_objects``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.factories import make_recording, make_remote, set_config, write_wav
from tests.fixtures.forger import forge_audit_messages
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import scalar, seed_station, uploaded_count

pytestmark = pytest.mark.integration


def _local(folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"type": "local", "target_path": str(folder)}


def test_a_forged_audit_message_changes_nothing(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    # given a paused station with two remotes, their workers running, nothing uploaded
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=2,
        remotes={"usb": _local(tmp_path / "usb"), "usb2": _local(tmp_path / "usb2")},
        uploader={"enabled": False},
    )
    stack.start_worker("usb")
    stack.start_worker("usb2")
    # and a lease that a reader of Redis could have seen, for the second recording
    with Session(engine) as s:
        s.execute(
            text(
                "INSERT INTO pair_state (recording_id, remote_slug, lease_token, lease_until) "
                "VALUES (:rid, 'usb', :token, now() + interval '1 hour')"
            ),
            {"rid": ids[1], "token": str(uuid.UUID(int=7))},
        )
        s.commit()
    # when another process forges success messages for both remotes, on both queues, and one
    # with a real lease token, and one for the wrong remote on a worker's queue
    forged = {"recording_id": ids[0], "token": "forged", "size_bytes": 1}
    stolen = {"recording_id": ids[1], "remote_slug": "usb", "token": str(uuid.UUID(int=7))}
    forge_audit_messages(
        stack.redis_url,
        [
            ("upload.usb", {**forged, "remote_slug": "usb"}),
            ("upload.usb2", {**forged, "remote_slug": "usb2"}),
            ("upload.usb", stolen),
            ("upload.usb", {**stolen, "remote_slug": "usb2"}),
        ],
    )
    # then each is refused and logged once, and nothing is written or flagged
    assert wait_until(
        lambda: (stack.logs("worker-usb") + stack.logs("worker-usb2")).count("audit.refused") >= 4,
        60,
    ), stack.logs("worker-usb")
    assert scalar(engine, "SELECT count(*) FROM uploads") == 0
    assert uploaded_count(engine) == 0
    assert not list((tmp_path / "usb").rglob("*.flac"))


def test_a_retargeted_remote_does_not_count_its_old_folder(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    # given two remotes and a recording uploaded to the first one's folder only
    old, new = tmp_path / "usb-old", tmp_path / "usb-new"
    ids = seed_station(
        engine,
        stack.workspace,
        recordings=1,
        remotes={"usb": _local(old), "nas": _local(tmp_path / "nas")},
    )
    stack.start_dispatcher()
    stack.start_worker("usb")
    assert wait_until(
        lambda: scalar(engine, "SELECT count(*) FROM uploads WHERE success") == 1, 60
    ), stack.logs("worker-usb")
    stack.stop("worker-usb")
    # when the operator points it at a new folder, and the other remote gets the recording
    new.mkdir()
    with Session(engine) as s:
        s.execute(text("UPDATE storage_remotes SET target_path = :p WHERE slug = 'usb'"),
                  {"p": str(new)})  # fmt: skip
        s.commit()
    stack.start_worker("nas")
    assert wait_until(
        lambda: (
            scalar(engine, "SELECT count(*) FROM uploads WHERE success AND remote_slug='nas'") == 1
        ),
        60,
    ), stack.logs("worker-nas")
    # then the recording is not flagged: its only copy for "usb" is in the old folder
    assert uploaded_count(engine) == 0
    # and once the worker runs again it is uploaded to the new folder, then flagged
    stack.start_worker("usb")
    assert wait_until(lambda: uploaded_count(engine) == 1, 60), stack.logs("worker-usb")
    assert len(list(new.rglob("*.flac"))) == 1
    rows = scalar(
        engine,
        "SELECT count(DISTINCT destination) FROM uploads WHERE success AND remote_slug = 'usb' "
        "AND recording_id = :rid",
        rid=ids[0],
    )
    assert rows == 2


def _read(path: Path) -> np.ndarray:
    data, _ = sf.read(str(path), dtype="int16")
    return np.asarray(data)


def test_colliding_paths_get_one_object_each(engine: Engine, stack: Stack, tmp_path: Path) -> None:
    # given four recordings of one sensor and day whose usual remote paths collide:
    # collide/a/same.wav + collide/b/same.wav, and x.wav + x.WAV
    usb = tmp_path / "usb"
    names = ["collide/a/same.wav", "collide/b/same.wav", "collide/x.wav", "collide/x.WAV"]
    with Session(engine) as s:
        set_config(s, "uploader", {"poll_interval": 1, "batch_size": 10})
        make_remote(s, "usb", **_local(usb))  # type: ignore[arg-type]
        recs = []
        for i, name in enumerate(names):
            rec = make_recording(s, file_raw=name, duration=1.0)
            wav = write_wav(stack.workspace / name, seconds=1.0, seed=100 + i)
            rec.filesize_raw = wav.stat().st_size
            recs.append((rec.id, stack.workspace / name))
        s.commit()
    # when the station uploads them
    stack.start_worker("usb")
    stack.start_dispatcher()
    assert wait_until(lambda: uploaded_count(engine) == 4, 90), stack.logs("worker-usb")
    # then there are four objects, and each holds its own recording's audio
    with Session(engine) as s:
        paths = dict(
            s.execute(text("SELECT recording_id, remote_path FROM uploads WHERE success")).all()
        )
    assert len(set(paths.values())) == 4
    assert len(list(usb.rglob("*.flac"))) == 4
    for rid, wav in recs:
        assert np.array_equal(_read(Path(paths[rid])), _read(wav)), (rid, paths[rid])
    # and the later of each colliding pair carries its id in its name
    assert sum(1 for p in paths.values() if "~" in p) == 2


def test_a_worker_refuses_a_temp_folder_another_user_may_write(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    # given the operator's SILVASONIC_TEMP_DIR was made by another user, open to everyone
    seed_station(engine, stack.workspace, recordings=1, remotes={"usb": _local(tmp_path / "u")})
    squatted = tmp_path / "squatted"
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, 65534, 65534)
    # when the worker starts, it stops at once with what to do, and never loops
    proc = stack.start_worker("usb", SILVASONIC_TEMP_DIR=str(squatted))
    assert proc.wait(60) != 0
    log = stack.logs("worker-usb")
    assert "is not private to this worker" in log and "SILVASONIC_TEMP_DIR" in log
