"""The station stack's contract, read from compose.yml with pyyaml (podman-compose is not run
here): the services, Redis as a broker that loses nothing, Flower's credentials never on a
command line, the managed build template, the controller's socket, no secret in the file (they
are secret files mounted under /run/secrets), and every published port on 127.0.0.1 unless
configured."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller_ext.container_spec import UploaderEnvConfig
from controller_ext.temp_budget import worker_temp_size

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/silvasonic_uploader:latest"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"(PASSWORD|PASS|SECRET|KEY|TOKEN|AUTH)(_FILE)?$", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so a test can read it"
    return {str(k): str(v) for k, v in env.items()}


def command_text(service: dict[str, Any]) -> str:
    parts = [service.get("command") or [], service.get("entrypoint") or []]
    return " ".join(" ".join(p) if isinstance(p, list) else str(p) for p in parts)


def test_the_stack_has_its_services(services: dict[str, Any]) -> None:
    assert set(services) == {
        "database",
        "db-upgrade",
        "redis",
        "uploader-beat",
        "flower",
        "controller",
        "uploader",
        "cli",
    }
    assert services["database"]["image"].startswith("docker.io/library/postgres:")
    assert services["redis"]["image"].startswith("docker.io/library/redis:")
    for name in ("db-upgrade", "uploader-beat", "flower", "controller", "uploader", "cli"):
        assert services[name]["image"] == IMAGE


def test_no_pod_the_workers_join_the_shared_network(compose: dict[str, Any]) -> None:
    assert compose["x-podman"]["in_pod"] is False
    assert compose["networks"]["silvasonic-net"]["name"] == "${SILVASONIC_NETWORK:-silvasonic-net}"
    for name, service in compose["services"].items():
        if name != "uploader":
            assert service["networks"] == ["silvasonic-net"], name


def test_db_upgrade_runs_once(services: dict[str, Any]) -> None:
    upgrade = services["db-upgrade"]
    assert upgrade["command"] == ["db", "upgrade"]
    assert upgrade["restart"] == "no"
    assert upgrade["depends_on"]["database"]["condition"] == "service_healthy"


def test_redis_never_evicts_and_keeps_an_append_only_file(services: dict[str, Any]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in command
    assert "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_the_dispatcher_is_restarted_on_exit(services: dict[str, Any]) -> None:
    beat = services["uploader-beat"]
    assert beat["command"] == ["beat"]
    assert beat["restart"] == "always"
    assert beat["depends_on"]["db-upgrade"]["condition"] == "service_completed_successfully"


def test_flower_credentials_come_from_the_environment_never_the_command_line(
    services: dict[str, Any],
) -> None:
    flower = services["flower"]
    command = command_text(flower)
    assert flower["command"] == ["celery", "-A", "tasks", "flower"]
    assert "auth" not in command.lower() and "password" not in command.lower()
    env = env_of(flower)
    assert "FLOWER_BASIC_AUTH" not in env  # `environment:` becomes `podman create -e …`
    assert env["FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert flower["secrets"] == ["flower_basic_auth", "redis_url"]
    assert env["FLOWER_READ_ONLY"] == "true"
    assert env["FLOWER_PERSISTENT"] == "true"
    state_dir = env["FLOWER_DB"].rsplit("/", 1)[0]
    assert any(v.endswith(f":{state_dir}") for v in flower["volumes"])


def test_published_ports_bind_to_localhost_unless_configured(services: dict[str, Any]) -> None:
    published = [(name, str(p)) for name, s in services.items() for p in s.get("ports", [])]
    assert [name for name, _ in published] == ["flower"]
    for _, port in published:
        host = port.split(":")[0] if not port.startswith("${") else port.split("}")[0] + "}"
        if host.startswith("${"):
            match = VARIABLE.fullmatch(host)
            assert match is not None and match["op"] == ":-"
            host = match["arg"]
        assert host == "127.0.0.1", port
    assert "${FLOWER_BIND_ADDRESS:-127.0.0.1}" in published[0][1]


def test_the_controller_gets_the_container_socket(services: dict[str, Any]) -> None:
    controller = services["controller"]
    assert controller["command"] == ["controller"]
    assert controller["restart"] == "always"
    env = env_of(controller)
    assert env["SILVASONIC_CONTAINER_SOCKET"] == "/var/run/container.sock"
    assert env["SILVASONIC_CONTROLLER_BACKEND"] == "podman"
    assert env["SILVASONIC_UPLOADER_IMAGE"] == IMAGE
    assert any(str(v).endswith(":/var/run/container.sock") for v in controller["volumes"])
    assert not controller.get("privileged", False)


def test_as_shipped_a_workers_temp_tmpfs_fits_inside_its_memory_limit(
    services: dict[str, Any],
) -> None:
    # the tmpfs is RAM in that limit: one that does not fit ends in an OOM kill, not disk full
    def default(value: str) -> str:
        match = VARIABLE.fullmatch(value)
        return match["arg"] if match is not None and match["op"] == ":-" else value

    compose_defaults = {k: default(v) for k, v in env_of(services["controller"]).items()}
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    memory_default = str(UploaderEnvConfig.model_fields["uploader_memory_limit"].default)
    for source in (compose_defaults, example):
        memory = source.get("SILVASONIC_UPLOADER_MEMORY_LIMIT", memory_default)
        worker_temp_size(memory, source.get("SILVASONIC_UPLOADER_TEMP_SIZE"))  # raises if not


def test_the_worker_image_is_a_build_template_under_the_managed_profile(
    services: dict[str, Any],
) -> None:
    template = services["uploader"]
    assert template["profiles"] == ["managed"]
    assert template["build"] == {"context": ".", "dockerfile": "Containerfile"}
    assert "command" not in template and "ports" not in template
    assert services["cli"]["profiles"] == ["tools"]  # on demand: `run --rm cli status`
    for name, service in services.items():
        if name not in ("uploader", "cli"):
            assert "profiles" not in service, f"{name} must run with a plain `up`"


def test_uploader_processes_find_postgres_and_redis(services: dict[str, Any]) -> None:
    for name in ("db-upgrade", "uploader-beat", "controller", "cli"):
        env = env_of(services[name])
        assert env["SILVASONIC_DB_HOST"] == env["POSTGRES_HOST"] == "database"
        assert env["SILVASONIC_REDIS_URL_FILE"] == "/run/secrets/redis_url"
        assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert env["SILVASONIC_ENCRYPTION_KEY_FILE"] == "/run/secrets/encryption_key"
        assert services[name]["secrets"] == ["postgres_password", "redis_url", "encryption_key"]
    database = env_of(services["database"])
    assert database["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert env_of(services["flower"])["SILVASONIC_REDIS_URL_FILE"] == "/run/secrets/redis_url"
    assert "redis_url" in services["flower"]["secrets"]


def test_redis_asks_for_a_password_that_is_on_no_command_line(services: dict[str, Any]) -> None:
    redis = services["redis"]
    script = redis["command"][-1]
    assert redis["command"][:2] == ["sh", "-c"] and script.startswith("exec redis-server - ")
    assert "requirepass $$(cat /run/secrets/redis_password)" in script  # on stdin, not argv
    assert redis["secrets"] == ["redis_password"] and redis["user"] == "redis"
    check = " ".join(redis["healthcheck"]["test"])
    assert 'REDISCLI_AUTH="$$(cat /run/secrets/redis_password)" redis-cli ping' in check


def test_images_are_pinned_to_a_patch_release(services: dict[str, Any]) -> None:
    for name in ("database", "redis"):
        tag = services[name]["image"].rsplit(":", 1)[1]
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?-bookworm", tag), f"{name}: {tag}"


def test_every_uploader_service_drops_privileges(services: dict[str, Any]) -> None:
    for name in ("db-upgrade", "uploader-beat", "flower", "controller", "cli"):
        service = services[name]
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges" in service["security_opt"], name
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        # the image's unprivileged user, except the controller (the Podman socket)
        assert service.get("user") == ("0:0" if name == "controller" else None), name
    assert services["redis"]["cap_drop"] == ["ALL"]


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    for name, service in compose["services"].items():
        for key, value in env_of(service).items():
            if not SECRET_NAME.search(key):
                continue
            # only a path to a mounted secret file, never a value (not even via ${…}: podman-
            # compose would put it on podman's command line as -e NAME=value)
            assert key.endswith("_FILE"), f"{name}.{key}"
            secret = value.removeprefix("/run/secrets/")
            assert value == f"/run/secrets/{secret}", f"{name}.{key}"
            assert secret in service["secrets"], f"{name} does not mount {secret}"
    for secret, spec in declared.items():
        assert spec == {"file": f"${{SILVASONIC_SECRETS_DIR:-./secrets}}/{secret}"}


def test_every_variable_is_documented_in_env_example() -> None:
    used = {m["name"] for m in VARIABLE.finditer((ROOT / "compose.yml").read_text())}
    example = (ROOT / ".env.example").read_text()
    lines = example.splitlines()
    documented = {}
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            name = line.split("=", 1)[0]
            documented[name] = line.split("=", 1)[1]
            assert lines[i - 1].startswith("#"), f"{name} needs a comment saying what it is"
    assert used <= set(documented), used - set(documented)


def test_env_example_holds_no_secret() -> None:
    example = (ROOT / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if "=" in line and line[0] != "#"
    )
    assert not [name for name in values if SECRET_NAME.search(name)]
    assert "CHANGE-ME" in values["SILVASONIC_WORKSPACE_PATH"]
    # how to create each secret file is spelled out
    for secret in ("postgres_password", "redis_password", "redis_url", "flower_basic_auth",
                   "encryption_key"):  # fmt: skip
        assert f"> secrets/{secret}" in example
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and "/secrets/" in ignored
