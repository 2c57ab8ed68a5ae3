"""``db upgrade`` against real PostgreSQL: empty, second run, SEED-ERA, v0.8 refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from uploader.db import schema
from uploader.errors import IncompatibleDatabase, SchemaOutdated

SEED_ERA_DDL = Path(__file__).parent.parent / "fixtures" / "seed_era_schema.sql"
OURS = {"pair_state", "remote_cursor", "remote_status", "remote_objects", schema.VERSION_TABLE}
BASE = {
    "recordings",
    "uploads",
    "storage_remotes",
    "system_config",
    "devices",
    "microphone_profiles",
}


def _tables(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_upgrade_empty_database_creates_tables_and_indexes(empty_db_url: str) -> None:
    schema.upgrade(empty_db_url)
    assert _tables(empty_db_url) >= BASE | OURS
    eng = create_engine(empty_db_url)
    try:
        indexes = {i["name"] for i in inspect(eng).get_indexes("uploads")}
        assert {
            "uq_uploads_success_pair",
            "uq_uploads_attempt_key",
            "ix_uploads_remote_slug",
        } <= indexes
        assert schema.schema_is_current(eng)
    finally:
        eng.dispose()


def test_second_upgrade_is_a_no_op(empty_db_url: str) -> None:
    schema.upgrade(empty_db_url)
    before = _tables(empty_db_url)
    schema.upgrade(empty_db_url)
    assert _tables(empty_db_url) == before


def test_seed_era_database_is_upgraded_in_place(empty_db_url: str) -> None:
    eng = create_engine(empty_db_url)
    try:
        with eng.begin() as conn:
            conn.execute(text(SEED_ERA_DDL.read_text()))
            conn.execute(
                text(
                    "INSERT INTO devices(name, serial_number, model, config) VALUES ('mic','s','m','{}');"
                    "INSERT INTO storage_remotes(slug,type,name,config) VALUES ('nc','webdav','NC','{}');"
                    "INSERT INTO recordings(time,sensor_id,file_raw,duration,sample_rate,filesize_raw,"
                    " upload_info) VALUES (now(),'mic','mic/data/raw/a.wav',10,48000,1,'{}');"
                    "INSERT INTO uploads(recording_id,remote_slug,attempt_at,filename,size,success)"
                    " SELECT id,'nc',now(),'a.flac',1,true FROM recordings;"
                )
            )
        before = _tables(empty_db_url)
        schema.upgrade(empty_db_url)
        after = _tables(empty_db_url)
        assert after - before == OURS
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM uploads")).scalar_one() == 1
            cols = {c["name"] for c in inspect(conn).get_columns("uploads")}
        assert {"remote_path", "duration_s", "error_kind", "attempt_key"} <= cols
    finally:
        eng.dispose()


def test_v08_database_is_refused_with_instructions(empty_db_url: str) -> None:
    eng = create_engine(empty_db_url)
    try:
        with eng.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE uploads (id BIGSERIAL PRIMARY KEY, recording_id BIGINT NOT NULL,"
                    " attempt_at TIMESTAMPTZ NOT NULL, filename TEXT NOT NULL, remote_path TEXT,"
                    " size BIGINT NOT NULL, success BOOLEAN NOT NULL, error_message TEXT)"
                )
            )
        with pytest.raises(IncompatibleDatabase, match="remote_slug"):
            schema.upgrade(empty_db_url)
        assert schema.VERSION_TABLE not in _tables(empty_db_url)
    finally:
        eng.dispose()


def test_outdated_schema_is_reported(empty_db_url: str) -> None:
    schema.upgrade(empty_db_url, "0001")
    eng = create_engine(empty_db_url)
    try:
        assert not schema.schema_is_current(eng)
        with pytest.raises(SchemaOutdated, match="db upgrade"):
            schema.require_current_schema(eng)
    finally:
        eng.dispose()
