"""Settings: the process environment (pydantic-settings) and the station's database-held
settings (``system_config`` keys ``uploader`` and ``system``).

Nothing here is instantiated at import time: each process builds what it needs and passes it
into domain functions. The database-held settings are reread every cycle
(docs/design/0011-runtime.md), so an operator's change applies without a restart. Defaults here
must equal ``config/defaults.yml``.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from uploader.errors import SettingsInvalid

UPLOADER_KEY = "uploader"
SYSTEM_KEY = "system"


class UploaderSettings(BaseModel):
    """``system_config['uploader']``: the seed's fields plus our additive ones."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    enabled: bool = True
    poll_interval: int = Field(default=30, ge=1, le=3600)
    bandwidth_limit: str = "1M"
    schedule_start_hour: int | None = Field(default=None, ge=0, le=23)
    schedule_end_hour: int | None = Field(default=None, ge=0, le=23)
    batch_size: int = Field(default=50, ge=1, le=1000)
    # ours (docs/design/0007-failure-kinds.md): parking of pairs whose file keeps failing
    max_file_attempts: int = Field(default=3, ge=1, le=100)
    park_window_hours: int = Field(default=24, ge=1, le=24 * 365)

    @field_validator("bandwidth_limit")
    @classmethod
    def _rclone_grammar(cls, value: str) -> str:
        """rclone's own ``--bwlimit`` grammar (``uploader.rclone.limits``), checked when the
        settings are read: a value rclone would refuse pauses uploading with one clear
        message in ``status``, instead of failing every pair at the remote."""
        from uploader.rclone.limits import parse_bwlimit

        try:
            parse_bwlimit(value)
        except SettingsInvalid:
            raise ValueError(
                "not a value rclone's --bwlimit accepts (e.g. '1M', '500k', 'off', "
                "'08:00,512k 19:00,off')"
            ) from None
        return value


class SystemSettings(BaseModel):
    """``system_config['system']`` (SEED-ERA fields)."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    latitude: float = 53.55
    longitude: float = 9.99
    max_recorders: int = 5
    max_uploaders: int = Field(default=3, ge=0)
    station_name: str = "Silvasonic MVP"
    auto_enrollment: bool = True


class StationSettings(BaseModel):
    """Both keys as one snapshot, read in one query."""

    uploader: UploaderSettings
    system: SystemSettings


def _parse(model: type[BaseModel], key: str, raw: Any) -> Any:
    if raw is None:
        return model()
    if not isinstance(raw, dict):
        raise SettingsInvalid(
            key, "(whole value)", f"expected a JSON object, got {type(raw).__name__}"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(whole value)"
        raise SettingsInvalid(key, field, first["msg"]) from None


def load_station_settings(session: Session) -> StationSettings:
    """Read ``uploader`` and ``system`` from ``system_config``.

    A missing key or field takes its default; an invalid field raises :class:`SettingsInvalid`
    naming the key and field (never the value, which could be anything an operator typed).
    """
    from uploader.db.models import SystemConfig

    result = session.execute(
        select(SystemConfig.key, SystemConfig.value).where(
            SystemConfig.key.in_([UPLOADER_KEY, SYSTEM_KEY])
        )
    )
    # not dict(result): a Result has .keys() (its column names), so dict() takes it for a mapping
    rows: dict[str, Any] = {key: value for key, value in result}
    return StationSettings(
        uploader=_parse(UploaderSettings, UPLOADER_KEY, rows.get(UPLOADER_KEY)),
        system=_parse(SystemSettings, SYSTEM_KEY, rows.get(SYSTEM_KEY)),
    )


class DatabaseSettings(BaseSettings):
    """Where PostgreSQL is. ``SILVASONIC_DATABASE_URL`` wins; otherwise the URL is built from
    upstream's variables, accepting both the SEED-ERA (``POSTGRES_HOST/PORT``) and the HEAD
    (``SILVASONIC_DB_HOST/PORT``) spellings (docs/design/0012-upstream.md §2)."""

    # no populate_by_name: it makes pydantic-settings also read an env variable named like the
    # field (a stray lower-case `host` or `port` would redirect the connection)
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SILVASONIC_DATABASE_URL")
    )
    user: str = Field(default="silvasonic", validation_alias=AliasChoices("POSTGRES_USER"))
    password: SecretStr = Field(
        default=SecretStr("silvasonic"), validation_alias=AliasChoices("POSTGRES_PASSWORD")
    )
    db: str = Field(default="silvasonic", validation_alias=AliasChoices("POSTGRES_DB"))
    host: str = Field(
        default="localhost", validation_alias=AliasChoices("SILVASONIC_DB_HOST", "POSTGRES_HOST")
    )
    port: int = Field(
        default=5432, validation_alias=AliasChoices("SILVASONIC_DB_PORT", "POSTGRES_PORT")
    )

    @property
    def url(self) -> str:
        """A SQLAlchemy URL for psycopg2 (contains the password: never log it)."""
        if self.database_url is not None:
            return normalise_database_url(self.database_url.get_secret_value())
        pw = quote(self.password.get_secret_value(), safe="")
        user = quote(self.user, safe="")
        return f"postgresql+psycopg2://{user}:{pw}@{self.host}:{self.port}/{self.db}"


def normalise_database_url(url: str) -> str:
    """Accept ``postgres://``, ``postgresql://`` and ``+asyncpg`` URLs; we speak psycopg2."""
    for prefix in (
        "postgresql+asyncpg://",
        "postgresql+psycopg://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


class UploaderServiceSettings(BaseSettings):
    """A worker's environment (the seed's Phase 1 ``UploaderServiceSettings``)."""

    # no populate_by_name: it would also read variables named like the fields (`redis_url`)
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    redis_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"),
        validation_alias=AliasChoices("SILVASONIC_REDIS_URL"),
    )
    instance_id: str | None = Field(default=None, validation_alias="SILVASONIC_INSTANCE_ID")
    storage_remote_slug: str | None = Field(
        default=None, validation_alias="SILVASONIC_STORAGE_REMOTE_SLUG"
    )
    recorder_workspace: str = Field(
        default="/workspace/recorder", validation_alias="SILVASONIC_RECORDER_WORKSPACE"
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, validation_alias="SILVASONIC_HEARTBEAT_INTERVAL_S"
    )
    health_port: int = Field(
        default=9500, ge=0, le=65535, validation_alias="SILVASONIC_HEALTH_PORT"
    )
    # /healthy tells remote state, error text and pending counts: only the worker's own network
    # namespace hears it (Podman's HEALTHCHECK runs inside the container; the controller reads
    # heartbeats from Redis). 0.0.0.0 only where something outside must poll it.
    health_host: IPvAnyAddress = Field(
        default=IPv4Address("127.0.0.1"), validation_alias="SILVASONIC_HEALTH_HOST"
    )
    # a worker whose broker consumer is stuck this long turns /healthy 503 (consumer_watch.py);
    # above Celery's 30 s reconnect back-off and the 30 s socket timeout, so a live consumer
    # never counts as stuck
    consumer_stall_s: float = Field(
        default=60.0, gt=0, validation_alias="SILVASONIC_CONSUMER_STALL_S"
    )
    # set by `beat` for its control worker, which has no /healthy and no Controller: a stuck
    # consumer ends the process and the dispatcher's supervisor starts a new one
    exit_on_consumer_stall: bool = Field(
        default=False, validation_alias="SILVASONIC_EXIT_ON_CONSUMER_STALL"
    )

    @property
    def effective_instance_id(self) -> str:
        """Upstream's convention: the uploader's instance id is the remote slug."""
        return self.instance_id or self.storage_remote_slug or "uploader"
