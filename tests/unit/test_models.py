"""The SQLAlchemy models against the SEED-ERA contract (§1.1-1.5): columns, types,
nullability, server defaults, keys, FKs and indexes, compared with tests/schema_contract.py.

The database that migrations build is compared with the same table in
tests/integration/test_schema_contract.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Table, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import TextClause

from tests.schema_contract import (
    SEED_ERA_INDEXES,
    SEED_ERA_TABLES,
    UPLOADS,
    UPLOADS_OURS,
    Col,
    normalise_default,
    normalise_where,
)
from uploader.db import models
from uploader.db.models import Base, Recording, StorageRemote, Upload

PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


def _type(col: Column[object]) -> str:
    return str(col.type.compile(dialect=PG)).lower()


def _server_default(col: Column[object]) -> str | None:
    default = col.server_default
    if default is None:
        return None
    arg = default.arg  # type: ignore[attr-defined]
    sql = arg.text if isinstance(arg, TextClause) else str(arg.compile(dialect=PG))
    return normalise_default(sql)


def _unique_columns(table: Table) -> set[str]:
    single = {
        next(iter(c.columns)).name
        for c in table.constraints
        if isinstance(c, UniqueConstraint) and len(c.columns) == 1
    }
    return single | {c.name for c in table.columns if c.unique}


def _expected_columns(table: str) -> dict[str, Col]:
    expected = dict(SEED_ERA_TABLES[table])
    if table == "uploads":
        expected |= UPLOADS_OURS
    return expected


@pytest.mark.parametrize("table", sorted(SEED_ERA_TABLES))
def test_table_has_exactly_the_contract_columns(table: str) -> None:
    assert set(_table(table).columns.keys()) == set(_expected_columns(table))


@pytest.mark.parametrize(
    ("table", "column"),
    [(t, c) for t in sorted(SEED_ERA_TABLES) for c in sorted(_expected_columns(t))],
)
def test_column_matches_contract(table: str, column: str) -> None:
    want = _expected_columns(table)[column]
    col = _table(table).columns[column]

    assert _type(col) == want.type
    assert col.nullable is want.nullable
    assert _server_default(col) == want.default
    assert col.primary_key is want.pk
    assert {fk.target_fullname for fk in col.foreign_keys} == ({want.fk} if want.fk else set())
    assert (column in _unique_columns(_table(table))) is want.unique


@pytest.mark.parametrize("table", sorted(SEED_ERA_TABLES))
def test_foreign_keys_have_no_on_delete_action(table: str) -> None:
    # docs/design/0012-upstream.md §1: no ON DELETE anywhere; referenced remotes are deactivated, never deleted
    for fk in _table(table).foreign_keys:
        assert fk.ondelete is None, f"{table}.{fk.parent.name}"


def test_identity_primary_keys_autoincrement() -> None:
    for table, columns in SEED_ERA_TABLES.items():
        for name, want in columns.items():
            if want.identity:
                assert _table(table).columns[name].autoincrement is True, f"{table}.{name}"


@pytest.mark.parametrize("index", sorted(SEED_ERA_INDEXES))
def test_seed_era_index_is_declared(index: str) -> None:
    table, columns, where = SEED_ERA_INDEXES[index]
    declared = {str(i.name): i for i in _table(table).indexes}
    assert index in declared
    idx = declared[index]
    assert tuple(c.name for c in idx.columns) == columns
    clause = idx.dialect_options["postgresql"]["where"]
    assert normalise_where(clause.text if clause is not None else None) == normalise_where(where)


def test_uploads_keeps_one_success_row_per_pair_and_destination_and_one_row_per_attempt_key() -> (
    None
):
    indexes = {str(i.name): i for i in _table("uploads").indexes}
    success = indexes["uq_uploads_success_pair"]
    assert success.unique
    assert [str(e) for e in success.expressions] == [
        "uploads.recording_id",
        "uploads.remote_slug",
        "coalesce(destination, '')",
    ]
    assert normalise_where(success.dialect_options["postgresql"]["where"].text) == "success"
    attempt = indexes["uq_uploads_attempt_key"]
    assert attempt.unique
    assert [c.name for c in attempt.columns] == ["attempt_key"]


def test_upload_and_storage_remote_live_in_the_uploader_module() -> None:
    # the seed's Phase 1 prerequisite: both in uploader/db/models/uploader.py
    assert Upload.__module__ == "uploader.db.models.uploader"
    assert StorageRemote.__module__ == "uploader.db.models.uploader"
    assert models.Upload is Upload and models.StorageRemote is StorageRemote


def test_python_side_defaults_for_columns_without_a_server_default() -> None:
    # SEED-ERA ORM: storage_remotes.config and recordings.upload_info default to {} in Python
    for col in (StorageRemote.__table__.c.config, Recording.__table__.c.upload_info):
        assert col.default is not None and col.default.is_callable
        assert col.default.arg(None) == {}
    assert UPLOADS["attempt_at"].default is None
    assert Upload.__table__.c.attempt_at.default is None
