"""The container contract of one uploader worker: :class:`Tier2ServiceSpec` (upstream's shape,
docs/design/0012-upstream.md §3, plus an optional network mode and the command) and
:func:`build_uploader_spec`, the only place that knows an uploader container's name, labels,
environment, mounts and limits.

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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from controller_ext.temp_budget import worker_temp_size
from uploader.remotes.local_roots import check_local_target
from uploader.remotes.secrets import KEY_ENV
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

# Inside the container, read-only (docs/design/0012-upstream.md §3).
CONTAINER_WORKSPACE = "/workspace/recorder"
CONTAINER_KEYS_DIR = "/etc/silvasonic/keys"
# where Podman mounts a container's secrets (the image's entrypoint and the CLI read NAME_FILE)
SECRETS_DIR = "/run/secrets"
# the worker's only writable folder (read-only root): its default SILVASONIC_TEMP_DIR
# (/tmp/silvasonic/<slug>, FLACs in flight) and whatever else wants a temp file
CONTAINER_TEMP = "/tmp"
# the image's unprivileged user (Containerfile); the recorder contract: docs/controller.md §2
DEFAULT_WORKER_USER = "10001:10001"
# Tier-2 unified health port (docs/design/0012-upstream.md §4); with host networking each
# worker needs its own.
HOST_MODE_PORT_SPAN = 1000
# Controller variables a worker should see the same way (log format for the LogForwarder).
PASSTHROUGH_ENV = (
    "SILVASONIC_DEVELOPMENT_MODE",
    "SILVASONIC_LOG_LEVEL",
    "SILVASONIC_HEARTBEAT_INTERVAL_S",
    "SILVASONIC_HEALTH_HOST",
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


class TmpfsSpec(BaseModel):
    """A tmpfs mount: the only writable place of a worker with a read-only root filesystem."""

    model_config = ConfigDict(frozen=True)

    target: str
    size: str
    mode: str = "1777"


# Podman refuses a secret name longer than this ("only 64 [a-zA-Z0-9-_.] characters allowed")
SECRET_NAME_MAX = 64
# the longest container name used as it is in front of its secrets' names; longer ones are
# shortened with a digest (a 40-character slug makes a 60-character container name)
_SECRET_OWNER_MAX = 40


def secret_owner(container: str) -> str:
    """What every Podman secret of ``container`` is named after (the part before the first
    ``.``): the container's name, or for a name over 40 characters its first 31 and a digest
    of the whole, so that 23 characters of value digest still fit in Podman's 64."""
    if len(container) <= _SECRET_OWNER_MAX:
        return container
    return f"{container[:31]}-{hashlib.sha256(container.encode()).hexdigest()[:8]}"


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
    # variables whose values are secrets: a container gets each as a file (a Podman secret,
    # NAME_FILE in its environment), never as a value `podman inspect` would show; a local
    # process gets them in its environment
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)
    labels: dict[str, str] = Field(default_factory=dict)
    mounts: list[MountSpec] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    group_add: list[str] = Field(default_factory=list)
    privileged: bool = False
    # least privilege (docs/controller.md §2): who the process runs as, what it may not do
    user: str | None = None
    cap_drop: list[str] = Field(default_factory=list)
    no_new_privileges: bool = False
    read_only_rootfs: bool = False
    tmpfs: list[TmpfsSpec] = Field(default_factory=list)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    memory_limit: str
    cpu_limit: float
    oom_score_adj: int
    # time a worker gets on stop to hand in-flight work back to its queue
    # (docs/design/0005-celery.md)
    stop_timeout_s: int = 30

    @property
    def config_hash(self) -> str:
        """First 12 hex digits of sha256 over the spec without its labels (upstream's rule),
        keys sorted so the hash does not depend on dict order. A changed secret changes it
        too; only this digest of the whole spec reaches the label, never a value."""
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

    def secret_name(self, variable: str) -> str:
        """The Podman secret holding ``variable``'s value for this container: named by a digest
        of the value, so a new value is a new secret and a running container's is never
        rewritten under it.

        ``<container>.<variable>.<digest>`` where that fits Podman's 64 characters; else
        ``<secret_owner>.<longer digest>`` (the digest covers the variable too). A slug may
        have 40 characters, so the readable form alone would refuse every worker whose slug is
        longer than 5 characters once an encryption key is set. The prefix before the first
        ``.`` is always :func:`secret_owner`, which is how the container's secrets are found
        again when it is removed."""
        digest = hashlib.sha256(
            f"{self.name}|{variable}|{self.secrets[variable]}".encode()
        ).hexdigest()
        readable = f"{self.name}.{variable.lower()}.{digest[:12]}"
        if len(readable) <= SECRET_NAME_MAX:
            return readable
        owner = secret_owner(self.name)
        return f"{owner}.{digest[: SECRET_NAME_MAX - len(owner) - 1]}"

    def to_podman_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for podman-py ``containers.create``; the Podman secrets named by
        :meth:`secret_name` must exist (the container manager creates them).

        Read-only mounts use mode ``"ro"`` (``"ro,z"`` makes podman-py fail with a 500, contract
        §6.1); read-write mounts ``"z"`` so SELinux hosts relabel them, as upstream does.
        """
        environment = dict(self.environment)
        secrets: list[dict[str, Any]] = []
        uid, _, gid = (self.user or "0:0").partition(":")
        for variable in sorted(self.secrets):
            target = variable.lower()
            environment[f"{variable}_FILE"] = f"{SECRETS_DIR}/{target}"
            secrets.append(
                {
                    "source": self.secret_name(variable),
                    "target": target,
                    "uid": int(uid) if uid.isdigit() else 0,
                    "gid": int(gid) if gid.isdigit() else 0,
                    "mode": 0o400,
                }
            )
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "environment": environment,
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
        if secrets:
            kwargs["secrets"] = secrets
        if self.user:
            kwargs["user"] = self.user
        if self.cap_drop:
            kwargs["cap_drop"] = list(self.cap_drop)
        if self.no_new_privileges:
            kwargs["no_new_privileges"] = True
        if self.read_only_rootfs:
            kwargs["read_only"] = True
            # tmpfs on /run, /var/tmp and /dev/shm, as `podman run --read-only` does by default
            kwargs["read_write_tmpfs"] = True
        if self.tmpfs:
            kwargs["mounts"] = [
                {"type": "tmpfs", "source": "tmpfs", "target": t.target, "size": t.size,
                 "mode": t.mode}
                for t in self.tmpfs
            ]  # fmt: skip
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
    # uid:gid the worker runs as; it must be able to read the recordings (docs/controller.md §2)
    uploader_user: str = Field(default=DEFAULT_WORKER_USER, pattern=r"^[1-9][0-9]*:[0-9]+$")
    # the tmpfs holding the worker's FLACs in flight: RAM inside the memory limit, so by default
    # the limit minus what the worker itself takes (controller_ext/temp_budget.py)
    uploader_temp_size: str | None = None
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

    @model_validator(mode="after")
    def _temp_fits_in_memory(self) -> UploaderEnvConfig:
        """Refuse a temp tmpfs that could grow into an OOM kill of the worker (temp_budget)."""
        self.temp_size()
        return self

    def temp_size(self) -> str:
        """The size of the worker's temp tmpfs (``SILVASONIC_UPLOADER_TEMP_SIZE`` or derived)."""
        return worker_temp_size(self.uploader_memory_limit, self.uploader_temp_size)

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
    """What the factory needs of a remote (``uploader.completion.active.RemoteRef`` or the ORM
    row)."""

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
    allowed root, never a system folder or the workspace (uploader/remotes/local_roots.py): the CLI
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
    database = _database_env()
    environment: dict[str, str] = {
        "SILVASONIC_STORAGE_REMOTE_SLUG": slug,
        "SILVASONIC_INSTANCE_ID": slug,
        **{k: v for k, v in database.items() if k != "POSTGRES_PASSWORD"},
        "SILVASONIC_HEALTH_PORT": str(port),
        "SILVASONIC_RECORDER_WORKSPACE": CONTAINER_WORKSPACE,
    }
    secrets = {
        "SILVASONIC_REDIS_URL": env.redis_url.get_secret_value(),
        "POSTGRES_PASSWORD": database["POSTGRES_PASSWORD"],
    }
    key = env.encryption_key.get_secret_value() if env.encryption_key else ""
    if key.strip():
        secrets[KEY_ENV] = key
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
        secrets={k: v for k, v in secrets.items() if v},
        user=env.uploader_user,
        cap_drop=["ALL"],
        no_new_privileges=True,
        read_only_rootfs=True,
        tmpfs=[
            TmpfsSpec(target=CONTAINER_TEMP, size=env.temp_size()),
            # the secrets' mount points: a read-only root cannot hold them (Podman 4.3)
            TmpfsSpec(target=SECRETS_DIR, size="1m", mode="0755"),
        ],
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
