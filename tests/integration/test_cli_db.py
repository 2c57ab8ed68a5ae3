"""``silvasonic-uploader db upgrade`` / ``db check`` against a real, empty PostgreSQL database,
with the connection taken from the environment as a station would give it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from silvasonic_uploader.cli.main import main
from uploader.db import schema

DB_ENV = (
    "SILVASONIC_DATABASE_URL",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "SILVASONIC_DB_HOST",
    "SILVASONIC_DB_PORT",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in DB_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _tables(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_db_check_on_an_empty_database_says_what_to_do(
    env: pytest.MonkeyPatch, empty_db_url: str
) -> None:
    env.setenv("SILVASONIC_DATABASE_URL", empty_db_url)
    result = CliRunner().invoke(main, ["db", "check"])
    assert result.exit_code == 1
    assert "run `silvasonic-uploader db upgrade`" in result.output


def test_db_upgrade_then_check(env: pytest.MonkeyPatch, empty_db_url: str) -> None:
    env.setenv("SILVASONIC_DATABASE_URL", empty_db_url)
    runner = CliRunner()

    first = runner.invoke(main, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    head = schema.head_revision()
    assert f"schema at {head} (head {head})" in first.output
    assert {"recordings", "uploads", "storage_remotes", "pair_state"} <= _tables(empty_db_url)

    again = runner.invoke(main, ["db", "upgrade"])
    assert again.exit_code == 0, again.output
    assert f"schema at {head}" in again.output

    check = runner.invoke(main, ["db", "check"])
    assert check.exit_code == 0, check.output
    assert "schema is current" in check.output


def test_db_upgrade_from_postgres_variables(env: pytest.MonkeyPatch, empty_db_url: str) -> None:
    # the Controller injects POSTGRES_* and both host spellings, no URL (docs/design/0012-upstream.md §2)
    url = make_url(empty_db_url)
    env.setenv("POSTGRES_USER", url.username or "postgres")
    env.setenv("POSTGRES_PASSWORD", url.password or "unused-with-trust-auth")
    env.setenv("POSTGRES_DB", url.database or "")
    env.setenv("POSTGRES_HOST", "host-that-does-not-exist.invalid")
    env.setenv("POSTGRES_PORT", "1")
    env.setenv("SILVASONIC_DB_HOST", url.host or "127.0.0.1")
    env.setenv("SILVASONIC_DB_PORT", str(url.port or 5432))

    result = CliRunner().invoke(main, ["db", "upgrade"])

    assert result.exit_code == 0, result.output
    assert "uploads" in _tables(empty_db_url)


def test_db_upgrade_refuses_a_v08_database(env: pytest.MonkeyPatch, empty_db_url: str) -> None:
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
    finally:
        eng.dispose()
    env.setenv("SILVASONIC_DATABASE_URL", empty_db_url)

    result = CliRunner().invoke(main, ["db", "upgrade"])

    assert result.exit_code == 1
    assert "remote_slug" in result.output and "db upgrade" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
