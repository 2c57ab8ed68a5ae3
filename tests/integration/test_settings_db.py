"""The system_config loader against real PostgreSQL: JSONB in, settings out, changes seen on
the next read (docs/design/0011-runtime.md: settings apply without a restart)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.factories import set_config
from uploader.errors import SettingsInvalid
from uploader.settings import SystemSettings, UploaderSettings, load_station_settings


def test_settings_loaded_from_db(session: Session) -> None:
    # given
    set_config(session, "uploader", {"poll_interval": 60, "schedule_start_hour": 22})
    set_config(session, "system", {"station_name": "Forest 7", "max_uploaders": 1})
    set_config(session, "processor", {"janitor_interval_seconds": "not ours to judge"})
    session.commit()
    # when
    loaded = load_station_settings(session)
    # then
    assert loaded.uploader.poll_interval == 60
    assert loaded.uploader.schedule_start_hour == 22
    assert loaded.uploader.batch_size == 50  # missing field -> default
    assert loaded.system.station_name == "Forest 7"
    assert loaded.system.max_uploaders == 1


def test_empty_system_config_gives_defaults(session: Session) -> None:
    loaded = load_station_settings(session)
    assert loaded.uploader == UploaderSettings()
    assert loaded.system == SystemSettings()


def test_json_null_row_gives_defaults(session: Session) -> None:
    session.execute(text("INSERT INTO system_config (key, value) VALUES ('uploader', 'null')"))
    session.commit()
    assert load_station_settings(session).uploader == UploaderSettings()


def test_a_change_is_seen_on_the_next_read(session: Session) -> None:
    set_config(session, "uploader", {"enabled": True})
    session.commit()
    assert load_station_settings(session).uploader.enabled is True
    set_config(session, "uploader", {"enabled": False})
    session.commit()
    assert load_station_settings(session).uploader.enabled is False


def test_invalid_stored_field_names_key_and_field_not_the_value(session: Session) -> None:
    set_config(session, "uploader", {"poll_interval": "secret-looking-value-123"})
    session.commit()
    with pytest.raises(SettingsInvalid) as info:
        load_station_settings(session)
    assert (info.value.key, info.value.field) == ("uploader", "poll_interval")
    assert "secret-looking-value-123" not in str(info.value)
