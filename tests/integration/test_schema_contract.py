"""The tables that ``db upgrade`` builds on an empty database, read back from PostgreSQL's own
catalogue and compared with the SEED-ERA contract (tests/schema_contract.py): what upstream's
Indexer, Janitor and web UI will meet when they share our database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from tests.schema_contract import (
    SEED_ERA_INDEXES,
    SEED_ERA_TABLES,
    UPLOADS_OURS,
    Col,
    normalise_default,
    normalise_where,
)


@pytest.fixture
def migrated(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def _columns(engine: Engine, table: str) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT column_name, data_type, is_nullable, column_default, is_identity,"
                " identity_generation FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = :t"
            ),
            {"t": table},
        ).mappings()
        return {str(r["column_name"]): dict(r) for r in rows}


def _expected(table: str) -> dict[str, Col]:
    expected = dict(SEED_ERA_TABLES[table])
    if table == "uploads":
        expected |= UPLOADS_OURS
    return expected


@pytest.mark.parametrize("table", sorted(SEED_ERA_TABLES))
def test_migrated_table_matches_contract(migrated: Engine, table: str) -> None:
    actual = _columns(migrated, table)
    expected = _expected(table)
    assert set(actual) == set(expected)

    insp = inspect(migrated)
    pk = set(insp.get_pk_constraint(table)["constrained_columns"])
    fks = {
        fk["constrained_columns"][0]: f"{fk['referred_table']}.{fk['referred_columns'][0]}"
        for fk in insp.get_foreign_keys(table)
    }
    on_delete = [fk["options"].get("ondelete") for fk in insp.get_foreign_keys(table)]
    unique = {
        u["column_names"][0]
        for u in insp.get_unique_constraints(table)
        if len(u["column_names"]) == 1
    }
    for name, want in expected.items():
        got = actual[name]
        where = f"{table}.{name}"
        assert got["data_type"] == want.type, where
        assert (got["is_nullable"] == "YES") is want.nullable, where
        assert normalise_default(got["column_default"]) == want.default, where  # type: ignore[arg-type]
        assert (got["is_identity"] == "YES") is want.identity, where
        if want.identity:
            assert got["identity_generation"] == "BY DEFAULT", where
        assert (name in pk) is want.pk, where
        assert fks.get(name) == want.fk, where
        assert (name in unique) is want.unique, where
    assert all(action is None for action in on_delete), f"{table}: upstream has no ON DELETE"


def test_migrated_database_has_the_seed_era_indexes(migrated: Engine) -> None:
    insp = inspect(migrated)
    for name, (table, columns, where) in SEED_ERA_INDEXES.items():
        found = {i["name"]: i for i in insp.get_indexes(table)}
        assert name in found, name
        assert tuple(found[name]["column_names"]) == columns, name
        got_where = found[name].get("dialect_options", {}).get("postgresql_where")
        assert normalise_where(got_where) == normalise_where(where), name


def test_upload_info_default_lets_a_head_era_indexer_insert(migrated: Engine) -> None:
    """Upstream dropped ``upload_info`` after SEED-ERA; an Indexer that no longer names it must
    still be able to insert into a database we created (upstream's DEFAULT '{}')."""
    with migrated.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO devices (name, serial_number, model, config)"
                " VALUES ('mic', 's1', 'm', '{}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO recordings (time, sensor_id, file_raw, duration, sample_rate,"
                " filesize_raw) VALUES (now(), 'mic', 'mic/data/raw/a.wav', 10, 48000, 1)"
            )
        )
        row = conn.execute(
            text("SELECT upload_info, analysis_state, uploaded, local_deleted FROM recordings")
        ).one()
    assert tuple(row) == ({}, {}, False, False)
