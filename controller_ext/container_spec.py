"""The container contract of one uploader worker: :class:`Tier2ServiceSpec` (upstream's shape,
contract §6.1, plus an optional network mode and the command) and :func:`build_uploader_spec`,
the only place that knows an uploader container's name, labels, environment, mounts and limits.

The evaluator calls the factory once per running remote each cycle; the container manager and
the process backend turn a spec into a container or a process. ``config_hash`` covers everything
but the labels, so any change an operator makes to the environment below (image, limits,
mounts, database, Redis, key) recreates the worker on the next cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import PurePosixPath
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from uploader.local_roots import check_local_target
from uploader.secrets import KEY_ENV
from uploader.settings import DatabaseSettings

LABEL_PREFIX = "io.silvasonic."
LABEL_TIER = "io.silvasonic.tier"
LABEL_OWNER = "io.silvasonic.owner"
LABEL_SERVICE = "io.silvasonic.service"
LABEL_DEVICE_ID = "io.silvasonic.device_id"
LABEL_CONFIG_HASH = "io.silvasonic.config_hash"

OWNER = "controller"
SERVICE = "uploader"
NAME_PREFIX = "silvasonic-uploader-"

# Inside the container (contract §1.1: the seed proposes /workspace/recorder, read-only).
CONTAINER_WORKSPACE = "/workspace/recorder"
CONTAINER_KEYS_DIR = "/etc/silvasonic/keys"
# Tier-2 unified health port (contract §7); with host networking each worker needs its own.
HOST_MODE_PORT_SPAN = 1000
# Controller variables a worker should see the same way (log format for the LogForwarder).
PASSTHROUGH_ENV = (
    "SILVASONIC_DEVELOPMENT_MODE",
    "SILVASONIC_LOG_LEVEL",
    "SILVASONIC_HEARTBEAT_INTERVAL_S",
    "TZ",
)


class RestartPolicy(BaseModel):
    """Podman's restart policy; ``on-failure`` with 5 retries as upstream (ADR-0013)."""

    model_config = ConfigDict(frozen=True)

    name: str = "on-failure"
    max_retry_count: int = 5


class MountSpec(BaseModel):
    """A bind mount. ``controller_source`` is the source as the controller sees it, used only
    to create a missing read-write folder before the container starts."""

    model_config = ConfigDict(frozen=True)

    source: str
    target: str
    read_only: bool = False
    controller_source: str | None = None


class Tier2ServiceSpec(BaseModel):
    """Everything needed to run one Tier-2 container, backend-neutral.

    ``environment`` holds secrets (database password, encryption key): it is left out of
    ``repr`` and must never be logged.
    """

    model_config = ConfigDict(frozen=True)

    image: str
    name: str
    network: str
    network_mode: str | None = None  # e.g. "host"; None = bridge on ``network``
    command: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict, repr=False)
    labels: dict[str, str] = Field(default_factory=dict)
    mounts: list[MountSpec] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    group_add: list[str] = Field(default_factory=list)
    privileged: bool = False
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    memory_limit: str
    cpu_limit: float
    oom_score_adj: int
    # time a worker gets on stop to hand in-flight work back to its queue (design.md §6)
    stop_timeout_s: int = 30

    @property
    def config_hash(self) -> str:
        """First 12 hex digits of sha256 over the spec without its labels (upstream's rule),
        keys sorted so the hash does not depend on dict order."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"labels"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def device_id(self) -> str | None:
        return self.labels.get(LABEL_DEVICE_ID)

    @property
    def service(self) -> str | None:
        return self.labels.get(LABEL_SERVICE)

    def with_hash_label(self) -> Tier2ServiceSpec:
        """The same spec with ``io.silvasonic.config_hash`` set (what factories return)."""
        return self.model_copy(
            update={"labels": {**self.labels, LABEL_CONFIG_HASH: self.config_hash}}
        )

    def to_podman_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for podman-py ``containers.create``.

        Read-only mounts use mode ``"ro"`` (``"ro,z"`` makes podman-py fail with a 500, contract
        §6.1); read-write mounts ``"z"`` so SELinux hosts relabel them, as upstream does.
        """
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "environment": dict(self.environment),
            "labels": dict(self.labels),
            "volumes": {
                m.source: {"bind": m.target, "mode": "ro" if m.read_only else "z"}
                for m in self.mounts
            },
            "privileged": self.privileged,
            "restart_policy": {
                "Name": self.restart_policy.name,
                "MaximumRetryCount": self.restart_policy.max_retry_count,
            },
            "mem_limit": self.memory_limit,
            "cpu_quota": round(self.cpu_limit * 100_000),
            "oom_score_adj": self.oom_score_adj,
            "stop_timeout": self.stop_timeout_s,
            "detach": True,
        }
        if self.command:
            kwargs["command"] = list(self.command)
        if self.network_mode:
            kwargs["network_mode"] = self.network_mode
        else:
            kwargs["networks"] = {self.network: {}}
            kwargs["network_mode"] = "bridge"
        if self.devices:
            kwargs["devices"] = list(self.devices)
        if self.group_add:
            kwargs["group_add"] = list(self.group_add)
        return kwargs


class UploaderEnvConfig(BaseSettings):
    """The controller's environment for uploader containers (prefix ``SILVASONIC_``).

    Build it at call time, never at import: an operator's change to the environment, or a test's,
    must be seen by the next factory call. The database connection comes from
    :class:`uploader.settings.DatabaseSettings` (``SILVASONIC_DATABASE_URL`` or the
    ``POSTGRES_*``/``SILVASONIC_DB_*`` variables): the view of the database the controller has,
    which on the Silvasonic network is also the containers' view.
    """

    model_config = SettingsConfigDict(env_prefix="SILVASONIC_", extra="ignore")

    uploader_image: str = "localhost/silvasonic_uploader:latest"
    uploader_memory_limit: str = "256m"
    uploader_cpu_limit: float = Field(default=0.5, gt=0)
    uploader_oom_score_adj: int = Field(default=250, ge=-999, le=1000)
    uploader_restart_max_retries: int = Field(default=5, ge=0)
    uploader_stop_timeout_s: int = Field(default=30, ge=1)
    uploader_health_port: int = Field(default=9500, ge=1, le=65535)
    # host path of the folder holding sftp keys, mounted read-only at CONTAINER_KEYS_DIR
    uploader_keys_path: str | None = None
    # more read-only bind mounts, "host:container[:ro|rw]" separated by commas
    uploader_extra_mounts: str = ""
    network: str = "silvasonic-net"
    network_mode: str | None = None
    # host path of the Silvasonic workspace (bind source); the recorders write <it>/recorder
    workspace_path: str
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    encryption_key: SecretStr | None = None  # SILVASONIC_ENCRYPTION_KEY, passed on when set

    def extra_mounts(self) -> list[MountSpec]:
        """Parse ``uploader_extra_mounts``; raises ValueError naming the bad entry."""
        mounts: list[MountSpec] = []
        for entry in filter(None, (e.strip() for e in self.uploader_extra_mounts.split(","))):
            parts = entry.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(
                    f"SILVASONIC_UPLOADER_EXTRA_MOUNTS entry {entry!r}: use host:container[:ro|rw]"
                )
            source, target = parts[0], parts[1]
            if not (source.startswith("/") and target.startswith("/")):
                raise ValueError(
                    f"SILVASONIC_UPLOADER_EXTRA_MOUNTS entry {entry!r}: both paths must be absolute"
                )
            read_only = len(parts) == 2 or parts[2] == "ro"
            mounts.append(MountSpec(source=source, target=target, read_only=read_only))
        return mounts


class RemoteLike(Protocol):
    """What the factory needs of a remote (``uploader.active.RemoteRef`` or the ORM row)."""

    @property
    def slug(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def target_path(self) -> str | None: ...


def container_name(slug: str) -> str:
    return f"{NAME_PREFIX}{slug}"


def host_mode_health_port(slug: str, base: int, taken: set[int]) -> int:
    """A health port for ``slug`` when workers share the host's network namespace.

    Derived from the slug (so adding a remote does not move the others' ports, which would
    change their config hash and recreate them), probing upwards past ports already taken.
    """
    port = base + zlib.crc32(slug.encode()) % HOST_MODE_PORT_SPAN
    while port in taken or port > 65535:
        port = base if port > 65535 else port + 1
    taken.add(port)
    return port


def _database_env() -> dict[str, str]:
    url = make_url(DatabaseSettings().url)
    host, port = url.host or "localhost", str(url.port or 5432)
    return {
        "SILVASONIC_DB_HOST": host,
        "SILVASONIC_DB_PORT": port,
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": port,
        "POSTGRES_USER": url.username or "",
        "POSTGRES_PASSWORD": url.password if isinstance(url.password, str) else "",
        "POSTGRES_DB": url.database or "",
    }


def _local_folder_mount(remote: RemoteLike, env: UploaderEnvConfig) -> MountSpec:
    """A ``local`` remote writes into its ``target_path`` on this machine: mounted read-write at
    the same path, so the worker uses the path stored in the database unchanged. Only below an
    allowed root, never a system folder or the workspace (uploader/local_roots.py): the CLI
    checks it too, but a row may have been written by other means."""
    folder = check_local_target(
        remote.slug,
        remote.target_path,
        workspaces=[env.workspace_path, CONTAINER_WORKSPACE],
    )
    return MountSpec(source=folder, target=folder, read_only=False, controller_source=folder)


def build_uploader_spec(
    remote: RemoteLike,
    env: UploaderEnvConfig | None = None,
    *,
    health_port: int | None = None,
    environ: dict[str, str] | None = None,
) -> Tier2ServiceSpec:
    """The spec of the worker for ``remote`` (seed Phase 2, contract "must match" 6 and 7).

    ``env`` defaults to a fresh :class:`UploaderEnvConfig`; ``environ`` (default ``os.environ``)
    supplies the pass-through variables. Raises :class:`RemoteConfigInvalid` for a remote that
    cannot be given a container (a ``local`` remote without an absolute folder) and ValueError
    for an unusable ``SILVASONIC_UPLOADER_EXTRA_MOUNTS``.
    """
    env = env or UploaderEnvConfig()  # workspace_path comes from the environment
    environ = dict(os.environ) if environ is None else environ
    slug = remote.slug
    port = health_port if health_port is not None else env.uploader_health_port
    environment: dict[str, str] = {
        "SILVASONIC_STORAGE_REMOTE_SLUG": slug,
        "SILVASONIC_INSTANCE_ID": slug,
        "SILVASONIC_REDIS_URL": env.redis_url.get_secret_value(),
        **_database_env(),
        "SILVASONIC_HEALTH_PORT": str(port),
        "SILVASONIC_RECORDER_WORKSPACE": CONTAINER_WORKSPACE,
    }
    key = env.encryption_key.get_secret_value() if env.encryption_key else ""
    if key.strip():
        environment[KEY_ENV] = key
    mounts = [
        MountSpec(
            source=str(PurePosixPath(env.workspace_path) / "recorder"),
            target=CONTAINER_WORKSPACE,
            read_only=True,
        )
    ]
    if remote.type == "local":
        mounts.append(_local_folder_mount(remote, env))
    if env.uploader_keys_path:
        mounts.append(
            MountSpec(source=env.uploader_keys_path, target=CONTAINER_KEYS_DIR, read_only=True)
        )
        environment["SILVASONIC_KEYS_DIR"] = CONTAINER_KEYS_DIR
    mounts.extend(env.extra_mounts())
    for name in PASSTHROUGH_ENV:
        if name in environ:
            environment[name] = environ[name]
    spec = Tier2ServiceSpec(
        image=env.uploader_image,
        name=container_name(slug),
        network=env.network,
        network_mode=env.network_mode or None,
        command=["silvasonic-uploader", "worker", "--remote", slug],
        environment=environment,
        labels={
            LABEL_TIER: "2",
            LABEL_OWNER: OWNER,
            LABEL_SERVICE: SERVICE,
            LABEL_DEVICE_ID: slug,
        },
        mounts=mounts,
        restart_policy=RestartPolicy(max_retry_count=env.uploader_restart_max_retries),
        memory_limit=env.uploader_memory_limit,
        cpu_limit=env.uploader_cpu_limit,
        oom_score_adj=env.uploader_oom_score_adj,
        stop_timeout_s=env.uploader_stop_timeout_s,
    )
    return spec.with_hash_label()
