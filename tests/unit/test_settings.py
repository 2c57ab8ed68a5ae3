"""Settings: defaults equal config/defaults.yml, the system_config loader (with a fake session
that returns rows; the real-database version is tests/integration/test_settings_db.py), the
database URL from the environment, and a worker's environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings
from sqlalchemy import Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import Session

import uploader.settings as settings_module
from uploader.errors import SettingsInvalid
from uploader.settings import (
    DatabaseSettings,
    StationSettings,
    SystemSettings,
    UploaderServiceSettings,
    UploaderSettings,
    load_station_settings,
    normalise_database_url,
)

DEFAULTS_YML = Path(__file__).resolve().parents[2] / "config" / "defaults.yml"
SECRET_LOOKING = "secret-looking-value-123"

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
SERVICE_ENV = (
    "SILVASONIC_REDIS_URL",
    "SILVASONIC_INSTANCE_ID",
    "SILVASONIC_STORAGE_REMOTE_SLUG",
    "SILVASONIC_RECORDER_WORKSPACE",
    "SILVASONIC_HEARTBEAT_INTERVAL_S",
    "SILVASONIC_HEALTH_PORT",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No database or service variable from the developer's shell leaks into a test."""
    for name in (*DB_ENV, *SERVICE_ENV):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


class _FakeSession:
    """Answers the loader's one query with the given ``system_config`` rows."""

    def __init__(self, rows: dict[str, Any]) -> None:
        self.rows = rows
        self.queries = 0

    def execute(self, _statement: object) -> Result[Any]:
        # a real SQLAlchemy Result (a hand-made stand-in once hid a bug: dict(result) treats
        # a Result as a mapping because it has .keys())
        self.queries += 1
        return IteratorResult(SimpleResultMetaData(["key", "value"]), iter(self.rows.items()))


def _load(rows: dict[str, Any]) -> StationSettings:
    return load_station_settings(cast(Session, _FakeSession(rows)))


def _defaults_yml() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULTS_YML.read_text())
    assert isinstance(data, dict)
    return data


# -- defaults ----------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    """The seed's test: UploaderSettings/SystemSettings defaults, as the seed and issue list them."""
    up = UploaderSettings()
    assert up.enabled is True
    assert up.poll_interval == 30
    assert up.bandwidth_limit == "1M"
    assert up.schedule_start_hour is None
    assert up.schedule_end_hour is None
    assert up.batch_size == 50
    assert up.max_file_attempts == 3
    assert up.park_window_hours == 24
    system = SystemSettings()
    assert system.max_uploaders == 3
    assert system.station_name == "Silvasonic MVP"
    assert (system.latitude, system.longitude) == (53.55, 9.99)
    assert system.max_recorders == 5
    assert system.auto_enrollment is True


@pytest.mark.parametrize(
    ("key", "model"), [("uploader", UploaderSettings), ("system", SystemSettings)]
)
def test_defaults_equal_defaults_yml(key: str, model: type[BaseModel]) -> None:
    # every field on both sides, same values: the Controller seeds from the YAML
    assert model().model_dump() == _defaults_yml()[key]


def test_defaults_yml_has_only_the_keys_we_read() -> None:
    assert set(_defaults_yml()) == {"uploader", "system"}


def test_nothing_is_instantiated_at_import_time() -> None:
    made = [
        name
        for name, value in vars(settings_module).items()
        if isinstance(value, (BaseModel, BaseSettings))
    ]
    assert made == []


# -- the system_config loader -------------------------------------------------------------------


def test_settings_loaded_from_db() -> None:
    """The seed's test: values stored in system_config win over the defaults."""
    loaded = _load(
        {
            "uploader": {
                "enabled": False,
                "poll_interval": 60,
                "bandwidth_limit": "500k",
                "schedule_start_hour": 22,
                "schedule_end_hour": 6,
                "batch_size": 10,
            },
            "system": {"station_name": "Forest 7", "max_uploaders": 2},
        }
    )
    assert loaded.uploader.enabled is False
    assert loaded.uploader.poll_interval == 60
    assert loaded.uploader.bandwidth_limit == "500k"
    assert (loaded.uploader.schedule_start_hour, loaded.uploader.schedule_end_hour) == (22, 6)
    assert loaded.uploader.batch_size == 10
    assert loaded.system.station_name == "Forest 7"
    assert loaded.system.max_uploaders == 2


def test_missing_keys_give_the_defaults() -> None:
    loaded = _load({})
    assert loaded.uploader == UploaderSettings()
    assert loaded.system == SystemSettings()


def test_json_null_value_gives_the_defaults() -> None:
    assert _load({"uploader": None}).uploader == UploaderSettings()


def test_missing_field_takes_its_default() -> None:
    loaded = _load({"uploader": {"poll_interval": 90}, "system": {"max_uploaders": 1}})
    assert loaded.uploader.poll_interval == 90
    assert loaded.uploader.model_dump(exclude={"poll_interval"}) == UploaderSettings().model_dump(
        exclude={"poll_interval"}
    )
    assert loaded.system.station_name == "Silvasonic MVP"


def test_unknown_fields_are_ignored() -> None:
    # the Controller's seeder materialises whatever its schema has; a field we do not know
    # (HEAD's remote_config, a later version's field) must not stop the uploader
    loaded = _load({"uploader": {"remote_config": {"x": 1}, "poll_interval": 45}})
    assert loaded.uploader.poll_interval == 45


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("uploader", {"poll_interval": SECRET_LOOKING}, "poll_interval"),
        ("uploader", {"enabled": SECRET_LOOKING}, "enabled"),
        ("uploader", {"schedule_start_hour": 24}, "schedule_start_hour"),
        ("uploader", {"batch_size": 0}, "batch_size"),
        ("uploader", {"bandwidth_limit": ["1M"]}, "bandwidth_limit"),
        ("system", {"max_uploaders": -1}, "max_uploaders"),
        ("system", {"station_name": {"nested": SECRET_LOOKING}}, "station_name"),
    ],
)
def test_invalid_field_names_key_and_field_never_the_value(
    key: str, value: dict[str, Any], field: str
) -> None:
    with pytest.raises(SettingsInvalid) as info:
        _load({key: value})
    err = info.value
    assert (err.key, err.field) == (key, field)
    assert repr(key) in str(err) and repr(field) in str(err)
    assert SECRET_LOOKING not in str(err)
    assert SECRET_LOOKING not in repr(err)
    assert SECRET_LOOKING not in err.reason
    # the pydantic error is suppressed, and would not carry the input either
    assert err.__cause__ is None and err.__suppress_context__
    assert SECRET_LOOKING not in str(err.__context__)


@pytest.mark.parametrize("raw", [[1, 2], SECRET_LOOKING, 42])
def test_non_object_value_is_invalid_as_a_whole(raw: object) -> None:
    with pytest.raises(SettingsInvalid) as info:
        _load({"uploader": raw})
    assert info.value.field == "(whole value)"
    assert SECRET_LOOKING not in str(info.value)


def test_loader_reads_both_keys_in_one_query() -> None:
    fake = _FakeSession({})
    load_station_settings(cast(Session, fake))
    assert fake.queries == 1


# -- DatabaseSettings ---------------------------------------------------------------------------


def test_database_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert DatabaseSettings().url == (
        "postgresql+psycopg2://silvasonic:silvasonic@localhost:5432/silvasonic"
    )


def test_database_url_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SILVASONIC_DATABASE_URL", "postgresql://u:p@db.example:6543/station")
    clean_env.setenv("POSTGRES_HOST", "elsewhere")
    clean_env.setenv("SILVASONIC_DB_HOST", "elsewhere-too")
    clean_env.setenv("POSTGRES_PASSWORD", "other")
    assert DatabaseSettings().url == "postgresql+psycopg2://u:p@db.example:6543/station"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:1/d", "postgresql+psycopg2://u:p@h:1/d"),
        ("postgresql://u:p@h:1/d", "postgresql+psycopg2://u:p@h:1/d"),
        ("postgresql+asyncpg://u:p@h:1/d", "postgresql+psycopg2://u:p@h:1/d"),
        ("postgresql+psycopg://u:p@h:1/d", "postgresql+psycopg2://u:p@h:1/d"),
        ("postgresql+psycopg2://u:p@h:1/d", "postgresql+psycopg2://u:p@h:1/d"),
    ],
)
def test_database_url_is_normalised_to_psycopg2(
    clean_env: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    assert normalise_database_url(given) == expected
    clean_env.setenv("SILVASONIC_DATABASE_URL", given)
    assert DatabaseSettings().url == expected


def test_url_built_from_postgres_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POSTGRES_USER", "station")
    clean_env.setenv("POSTGRES_PASSWORD", "pw")
    clean_env.setenv("POSTGRES_DB", "silva")
    clean_env.setenv("POSTGRES_HOST", "database")
    clean_env.setenv("POSTGRES_PORT", "5433")
    assert DatabaseSettings().url == "postgresql+psycopg2://station:pw@database:5433/silva"


def test_head_spelling_is_read(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SILVASONIC_DB_HOST", "database")
    clean_env.setenv("SILVASONIC_DB_PORT", "5434")
    s = DatabaseSettings()
    assert (s.host, s.port) == ("database", 5434)


def test_head_spelling_wins_when_both_are_set(clean_env: pytest.MonkeyPatch) -> None:
    # the Controller injects both spellings (docs/design/0012-upstream.md §2); HEAD's is the current one
    clean_env.setenv("POSTGRES_HOST", "seed-host")
    clean_env.setenv("POSTGRES_PORT", "1111")
    clean_env.setenv("SILVASONIC_DB_HOST", "head-host")
    clean_env.setenv("SILVASONIC_DB_PORT", "2222")
    s = DatabaseSettings()
    assert (s.host, s.port) == ("head-host", 2222)
    assert "@head-host:2222/" in s.url


def test_password_and_user_are_url_quoted(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POSTGRES_USER", "a@b")
    clean_env.setenv("POSTGRES_PASSWORD", "p@ss:w/rd%?#")
    assert DatabaseSettings().url == (
        "postgresql+psycopg2://a%40b:p%40ss%3Aw%2Frd%25%3F%23@localhost:5432/silvasonic"
    )


@pytest.mark.parametrize("name", ["host", "port", "password", "database_url", "db"])
def test_only_the_documented_variable_names_are_read(
    clean_env: pytest.MonkeyPatch, name: str
) -> None:
    # case-sensitive and alias-only: a stray lower-case `host`/`port` in a container's
    # environment must not redirect the database connection
    clean_env.setenv(name, "9" if name == "port" else "postgresql://evil:evil@evil:1/evil")
    assert DatabaseSettings().url == (
        "postgresql+psycopg2://silvasonic:silvasonic@localhost:5432/silvasonic"
    )


def test_repr_never_shows_the_password(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POSTGRES_PASSWORD", SECRET_LOOKING)
    assert SECRET_LOOKING not in repr(DatabaseSettings())
    assert SECRET_LOOKING not in str(DatabaseSettings())
    clean_env.setenv("SILVASONIC_DATABASE_URL", f"postgresql://u:{SECRET_LOOKING}@h/d")
    assert SECRET_LOOKING not in repr(DatabaseSettings())
    assert SECRET_LOOKING in DatabaseSettings().url  # the URL itself does carry it


# -- UploaderServiceSettings --------------------------------------------------------------------


def test_service_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = UploaderServiceSettings()
    assert s.redis_url.get_secret_value() == "redis://localhost:6379/0"
    assert s.instance_id is None
    assert s.storage_remote_slug is None
    assert s.recorder_workspace == "/workspace/recorder"
    assert s.heartbeat_interval_s == 10.0
    assert s.health_port == 9500


def test_service_settings_read_their_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SILVASONIC_REDIS_URL", "redis://redis:6379/3")
    clean_env.setenv("SILVASONIC_INSTANCE_ID", "nas")
    clean_env.setenv("SILVASONIC_STORAGE_REMOTE_SLUG", "nextcloud-main")
    clean_env.setenv("SILVASONIC_RECORDER_WORKSPACE", "/data/recorder")
    clean_env.setenv("SILVASONIC_HEARTBEAT_INTERVAL_S", "2.5")
    clean_env.setenv("SILVASONIC_HEALTH_PORT", "9600")
    s = UploaderServiceSettings()
    assert s.redis_url.get_secret_value() == "redis://redis:6379/3"
    assert (s.instance_id, s.storage_remote_slug) == ("nas", "nextcloud-main")
    assert s.recorder_workspace == "/data/recorder"
    assert s.heartbeat_interval_s == 2.5
    assert s.health_port == 9600


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SILVASONIC_HEARTBEAT_INTERVAL_S", "0"),
        ("SILVASONIC_HEALTH_PORT", "70000"),
        ("SILVASONIC_HEALTH_PORT", "-1"),
    ],
)
def test_service_settings_refuse_impossible_values(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError):
        UploaderServiceSettings()


def test_service_settings_repr_hides_the_redis_password(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SILVASONIC_REDIS_URL", f"redis://:{SECRET_LOOKING}@redis:6379/0")
    assert SECRET_LOOKING not in repr(UploaderServiceSettings())


@pytest.mark.parametrize(
    ("instance_id", "slug", "expected"),
    [
        ("explicit", "nextcloud-main", "explicit"),
        (None, "nextcloud-main", "nextcloud-main"),
        (None, None, "uploader"),
    ],
)
def test_effective_instance_id(
    clean_env: pytest.MonkeyPatch, instance_id: str | None, slug: str | None, expected: str
) -> None:
    # upstream convention: an uploader's instance id is its remote slug (docs/design/0012-upstream.md §4)
    if instance_id is not None:
        clean_env.setenv("SILVASONIC_INSTANCE_ID", instance_id)
    if slug is not None:
        clean_env.setenv("SILVASONIC_STORAGE_REMOTE_SLUG", slug)
    assert UploaderServiceSettings().effective_instance_id == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("redis_url", "redis://evil:1/0"), ("health_port", "1"), ("instance_id", "evil")],
)
def test_service_settings_read_only_the_documented_names(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    assert UploaderServiceSettings() == UploaderServiceSettings.model_construct(
        **{k: f.default for k, f in UploaderServiceSettings.model_fields.items()}
    )
