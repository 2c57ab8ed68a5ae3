"""The uploader container contract (docs/design/0012-upstream.md §3, docs/controller.md §2)."""

from __future__ import annotations

import json
import os
import re

import pytest

from controller_ext.container_spec import (
    CONTAINER_WORKSPACE,
    LABEL_CONFIG_HASH,
    MountSpec,
    Tier2ServiceSpec,
    TmpfsSpec,
    UploaderEnvConfig,
    build_uploader_spec,
    host_mode_health_port,
    secret_owner,
)
from uploader.completion.active import RemoteRef
from uploader.errors import RemoteConfigInvalid

WORKSPACE = "/srv/silvasonic"


@pytest.fixture(autouse=True)
def controller_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller environment with nothing inherited from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(("SILVASONIC_", "POSTGRES_")) and not name.startswith(
            "SILVASONIC_TEST_"
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SILVASONIC_WORKSPACE_PATH", WORKSPACE)
    monkeypatch.setenv("SILVASONIC_DB_HOST", "database")
    monkeypatch.setenv("POSTGRES_PASSWORD", "pw")
    monkeypatch.setenv("SILVASONIC_REDIS_URL", "redis://redis:6379/0")


def remote(
    slug: str = "nextcloud-main", type: str = "webdav", target: str | None = None
) -> RemoteRef:
    return RemoteRef(slug=slug, type=type, name=slug.title(), target_path=target)


def test_uploader_spec_from_remote() -> None:
    spec = build_uploader_spec(remote())

    assert spec.image == "localhost/silvasonic_uploader:latest"
    assert spec.network == "silvasonic-net"
    assert spec.network_mode is None
    assert spec.command == ["silvasonic-uploader", "worker", "--remote", "nextcloud-main"]
    assert spec.restart_policy.name == "on-failure"
    assert spec.restart_policy.max_retry_count == 5
    assert spec.labels[LABEL_CONFIG_HASH] == spec.config_hash
    assert spec.environment["SILVASONIC_HEALTH_PORT"] == "9500"
    assert spec.environment["SILVASONIC_RECORDER_WORKSPACE"] == CONTAINER_WORKSPACE


def test_uploader_name_format() -> None:
    assert build_uploader_spec(remote("s3-eu")).name == "silvasonic-uploader-s3-eu"


def test_uploader_labels() -> None:
    labels = build_uploader_spec(remote("s3-eu")).labels

    assert labels == {
        "io.silvasonic.tier": "2",
        "io.silvasonic.owner": "controller",
        "io.silvasonic.service": "uploader",
        "io.silvasonic.device_id": "s3-eu",
        "io.silvasonic.config_hash": labels["io.silvasonic.config_hash"],
    }
    assert len(labels["io.silvasonic.config_hash"]) == 12


def test_uploader_readonly_mounts() -> None:
    spec = build_uploader_spec(remote())

    assert spec.mounts == [
        MountSpec(source=f"{WORKSPACE}/recorder", target="/workspace/recorder", read_only=True)
    ]
    # podman mode "ro", never "ro,z" (podman-py turns that into a 500, docs/design/0012-upstream.md §3)
    volumes = spec.to_podman_kwargs()["volumes"]
    assert volumes == {f"{WORKSPACE}/recorder": {"bind": "/workspace/recorder", "mode": "ro"}}


def test_uploader_resource_limits() -> None:
    spec = build_uploader_spec(remote())
    kwargs = spec.to_podman_kwargs()

    assert (spec.memory_limit, spec.cpu_limit, spec.oom_score_adj) == ("256m", 0.5, 250)
    assert (kwargs["mem_limit"], kwargs["cpu_quota"], kwargs["oom_score_adj"]) == (
        "256m",
        50_000,
        250,
    )


def test_uploader_no_privileged_no_devices() -> None:
    spec = build_uploader_spec(remote())
    kwargs = spec.to_podman_kwargs()

    assert spec.privileged is False
    assert spec.devices == []
    assert spec.group_add == []
    assert kwargs["privileged"] is False
    assert "devices" not in kwargs and "group_add" not in kwargs


def test_uploader_db_env_vars() -> None:
    spec = build_uploader_spec(remote())
    env = spec.environment

    assert env["SILVASONIC_DB_HOST"] == env["POSTGRES_HOST"] == "database"
    assert env["SILVASONIC_DB_PORT"] == env["POSTGRES_PORT"] == "5432"
    assert env["POSTGRES_USER"] == "silvasonic"
    assert env["POSTGRES_DB"] == "silvasonic"
    # the password and the Redis URL are secrets: files in the container, not values
    assert "POSTGRES_PASSWORD" not in env and "SILVASONIC_REDIS_URL" not in env
    assert spec.secrets["POSTGRES_PASSWORD"] == "pw"
    assert spec.secrets["SILVASONIC_REDIS_URL"] == "redis://redis:6379/0"


def test_uploader_db_env_vars_follow_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_DATABASE_URL", "postgresql://station:s3cret@db.lan:6543/silva")

    spec = build_uploader_spec(remote())
    env = spec.environment

    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("db.lan", "6543")
    assert (env["SILVASONIC_DB_HOST"], env["SILVASONIC_DB_PORT"]) == ("db.lan", "6543")
    assert (env["POSTGRES_USER"], spec.secrets["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "station",
        "s3cret",
        "silva",
    )


def test_uploader_env_slug() -> None:
    env = build_uploader_spec(remote("sftp-home")).environment

    assert env["SILVASONIC_STORAGE_REMOTE_SLUG"] == "sftp-home"
    assert env["SILVASONIC_INSTANCE_ID"] == "sftp-home"


def test_encryption_key_passed_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "SILVASONIC_ENCRYPTION_KEY" not in build_uploader_spec(remote()).secrets

    monkeypatch.setenv("SILVASONIC_ENCRYPTION_KEY", "k" * 43 + "=")

    spec = build_uploader_spec(remote())
    assert spec.secrets["SILVASONIC_ENCRYPTION_KEY"] == "k" * 43 + "="
    assert "SILVASONIC_ENCRYPTION_KEY" not in spec.environment


def test_a_worker_container_runs_unprivileged_with_secrets_as_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given
    monkeypatch.setenv("SILVASONIC_ENCRYPTION_KEY", "k" * 43 + "=")
    monkeypatch.setenv("SILVASONIC_UPLOADER_MEMORY_LIMIT", "1g")
    monkeypatch.setenv("SILVASONIC_UPLOADER_TEMP_SIZE", "768m")
    spec = build_uploader_spec(remote())
    # when
    kwargs = spec.to_podman_kwargs()
    # then: non-root, no capabilities, no privilege gain, read-only root with a sized tmpfs
    assert kwargs["user"] == "10001:10001"
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["no_new_privileges"] is True
    assert kwargs["read_only"] is True
    assert kwargs["mounts"] == [
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp", "size": "768m", "mode": "1777"},
        {"type": "tmpfs", "source": "tmpfs", "target": "/run/secrets", "size": "1m",
         "mode": "0755"},
    ]  # fmt: skip
    # no secret value anywhere in what Podman is given; each one a secret file instead
    flat = json.dumps(kwargs, default=str)
    for value in ("pw", "redis://redis:6379/0", "k" * 43 + "="):
        assert f'"{value}"' not in flat
    files = {k: v for k, v in kwargs["environment"].items() if k.endswith("_FILE")}
    assert files == {
        "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        "SILVASONIC_REDIS_URL_FILE": "/run/secrets/silvasonic_redis_url",
        "SILVASONIC_ENCRYPTION_KEY_FILE": "/run/secrets/silvasonic_encryption_key",
    }
    assert {s["target"] for s in kwargs["secrets"]} == {
        "postgres_password", "silvasonic_redis_url", "silvasonic_encryption_key"
    }  # fmt: skip
    assert all((s["uid"], s["gid"], s["mode"]) == (10001, 10001, 0o400) for s in kwargs["secrets"])
    assert "pw" not in repr(spec) and "k" * 43 not in repr(spec)


def test_a_new_secret_value_is_a_new_secret_and_a_new_config_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = build_uploader_spec(remote())
    monkeypatch.setenv("SILVASONIC_ENCRYPTION_KEY", "k" * 43 + "=")
    keyed = build_uploader_spec(remote())
    monkeypatch.setenv("SILVASONIC_ENCRYPTION_KEY", "j" * 43 + "=")
    rekeyed = build_uploader_spec(remote())

    assert len({before.config_hash, keyed.config_hash, rekeyed.config_hash}) == 3
    name = "SILVASONIC_ENCRYPTION_KEY"
    assert keyed.secret_name(name) != rekeyed.secret_name(name)
    assert keyed.secret_name(name).startswith(f"{keyed.name}.")
    assert "k" * 43 not in keyed.labels[LABEL_CONFIG_HASH]


def test_the_worker_user_and_temp_size_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_UPLOADER_USER", "0:0")
    with pytest.raises(ValueError):
        build_uploader_spec(remote())
    monkeypatch.setenv("SILVASONIC_UPLOADER_USER", "1000:1000")
    monkeypatch.setenv("SILVASONIC_UPLOADER_TEMP_SIZE", "lots")
    with pytest.raises(ValueError):
        build_uploader_spec(remote())


def temp_mount(spec: Tier2ServiceSpec) -> TmpfsSpec:
    [tmp] = [t for t in spec.tmpfs if t.target == "/tmp"]
    return tmp


def test_the_temp_tmpfs_fits_inside_the_memory_limit_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the tmpfs is RAM charged to the container: the limit must also hold the worker itself
    default = build_uploader_spec(remote())
    monkeypatch.setenv("SILVASONIC_UPLOADER_MEMORY_LIMIT", "1g")
    larger = build_uploader_spec(remote())

    assert (default.memory_limit, temp_mount(default).size) == ("256m", "64m")
    assert (larger.memory_limit, temp_mount(larger).size) == ("1g", "832m")
    assert larger.config_hash != default.config_hash


def test_a_temp_tmpfs_larger_than_the_memory_limit_allows_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SILVASONIC_UPLOADER_TEMP_SIZE", "512m")  # with the default 256m limit

    with pytest.raises(ValueError, match="SILVASONIC_UPLOADER_MEMORY_LIMIT to at least 704m"):
        build_uploader_spec(remote())

    monkeypatch.setenv("SILVASONIC_UPLOADER_MEMORY_LIMIT", "704m")
    assert temp_mount(build_uploader_spec(remote())).size == "512m"


def test_environment_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    before = build_uploader_spec(remote())
    monkeypatch.setenv("SILVASONIC_UPLOADER_MEMORY_LIMIT", "384m")
    monkeypatch.setenv("SILVASONIC_UPLOADER_IMAGE", "localhost/silvasonic_uploader:next")

    after = build_uploader_spec(remote())

    assert (after.memory_limit, after.image) == ("384m", "localhost/silvasonic_uploader:next")
    assert after.config_hash != before.config_hash


def test_config_hash_ignores_labels_but_not_environment() -> None:
    spec = build_uploader_spec(remote())
    relabelled = spec.model_copy(update={"labels": {**spec.labels, "extra": "x"}})
    other_env = spec.model_copy(update={"environment": {**spec.environment, "TZ": "UTC"}})

    assert relabelled.config_hash == spec.config_hash
    assert other_env.config_hash != spec.config_hash
    assert build_uploader_spec(remote()).config_hash == spec.config_hash  # deterministic


def test_local_remote_folder_mounted_read_write() -> None:
    spec = build_uploader_spec(remote("usb-disk", "local", "/media/usb/archive"))

    assert (
        MountSpec(
            source="/media/usb/archive",
            target="/media/usb/archive",
            read_only=False,
            controller_source="/media/usb/archive",
        )
        in spec.mounts
    )
    assert spec.to_podman_kwargs()["volumes"]["/media/usb/archive"]["mode"] == "z"


def test_local_remote_folder_is_part_of_the_hash() -> None:
    a = build_uploader_spec(remote("usb-disk", "local", "/media/usb/a"))
    b = build_uploader_spec(remote("usb-disk", "local", "/media/usb/b"))

    assert a.config_hash != b.config_hash


@pytest.mark.parametrize("target", [None, "", "relative/folder"])
def test_local_remote_without_absolute_folder_is_refused(target: str | None) -> None:
    with pytest.raises(RemoteConfigInvalid, match="absolute"):
        build_uploader_spec(remote("usb-disk", "local", target))


def test_secrets_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_ENCRYPTION_KEY", "secret-key-value")

    spec = build_uploader_spec(remote())

    assert "secret-key-value" not in repr(spec)
    assert "pw" not in repr(spec).replace("pwd", "")


def test_network_mode_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_NETWORK_MODE", "host")

    kwargs = build_uploader_spec(remote()).to_podman_kwargs()

    assert kwargs["network_mode"] == "host"
    assert "networks" not in kwargs


def test_bridge_network_by_default() -> None:
    kwargs = build_uploader_spec(remote()).to_podman_kwargs()

    assert kwargs["networks"] == {"silvasonic-net": {}}
    assert kwargs["network_mode"] == "bridge"
    assert kwargs["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 5}


def test_extra_and_keys_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_UPLOADER_KEYS_PATH", "/srv/keys")
    monkeypatch.setenv(
        "SILVASONIC_UPLOADER_EXTRA_MOUNTS", "/etc/ssl/certs:/etc/ssl/certs, /a:/b:rw"
    )

    spec = build_uploader_spec(remote())

    assert spec.environment["SILVASONIC_KEYS_DIR"] == "/etc/silvasonic/keys"
    assert spec.mounts[1:] == [
        MountSpec(source="/srv/keys", target="/etc/silvasonic/keys", read_only=True),
        MountSpec(source="/etc/ssl/certs", target="/etc/ssl/certs", read_only=True),
        MountSpec(source="/a", target="/b", read_only=False),
    ]


@pytest.mark.parametrize("entry", ["/a", "a:/b", "/a:/b:rx", "/a:/b:ro:x"])
def test_bad_extra_mount_is_refused(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    monkeypatch.setenv("SILVASONIC_UPLOADER_EXTRA_MOUNTS", entry)

    with pytest.raises(ValueError, match="SILVASONIC_UPLOADER_EXTRA_MOUNTS"):
        build_uploader_spec(remote())


def test_workspace_path_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SILVASONIC_WORKSPACE_PATH")

    with pytest.raises(ValueError, match="workspace_path"):
        UploaderEnvConfig()


def test_host_mode_health_ports_are_distinct_and_stable() -> None:
    taken: set[int] = set()
    ports = [host_mode_health_port(s, 9500, taken) for s in ("a", "b", "c", "d")]

    assert len(set(ports)) == 4
    assert all(9500 <= p < 10500 for p in ports)
    # a remote's port depends on its slug, not on which other remotes exist
    assert host_mode_health_port("c", 9500, set()) == ports[2]


def test_host_mode_health_port_probes_past_a_collision() -> None:
    first = host_mode_health_port("a", 9500, set())

    assert host_mode_health_port("a", 9500, {first}) == first + 1


def test_spec_is_frozen() -> None:
    spec = build_uploader_spec(remote())

    with pytest.raises(ValueError):
        spec.memory_limit = "1g"  # type: ignore[misc]
    assert isinstance(spec, Tier2ServiceSpec)


@pytest.mark.parametrize("slug", ["usb", "nextcloud-main", "a" * 40])
def test_secret_names_fit_podmans_64_characters_and_start_with_their_owner(
    monkeypatch: pytest.MonkeyPatch, slug: str
) -> None:
    # Podman refuses longer names ("only 64 [a-zA-Z0-9-_.] characters allowed"): with the
    # encryption key set, a slug of 6 characters or more got no worker at all
    monkeypatch.setenv("SILVASONIC_ENCRYPTION_KEY", "k" * 43 + "=")
    spec = build_uploader_spec(remote(slug))
    names = [spec.secret_name(variable) for variable in spec.secrets]

    assert len(names) == 3 and len(set(names)) == 3
    assert all(
        len(n) <= 64 and re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*[a-zA-Z0-9]", n) for n in names
    )
    assert all(n.startswith(f"{secret_owner(spec.name)}.") for n in names)
    other = build_uploader_spec(remote(slug[:-1]))  # a slug that is a prefix of this one
    assert not any(n.startswith(f"{secret_owner(other.name)}.") for n in names)


def test_short_names_keep_the_readable_secret_name() -> None:
    spec = build_uploader_spec(remote("usb"))
    assert spec.secret_name("POSTGRES_PASSWORD").startswith(
        "silvasonic-uploader-usb.postgres_password."
    )
    assert secret_owner(spec.name) == spec.name
