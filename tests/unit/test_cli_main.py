"""The command line's front door: ``--help`` lists the commands that exist (without importing
them), ``--version``, unknown commands, the options of ``demo``/``run`` and the ``secrets``
helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from silvasonic_uploader.cli import main as cli_main
from silvasonic_uploader.cli.main import COMMANDS, main
from uploader.remotes.secrets import KEY_ENV, decrypt_value, generate_key

REPO = Path(__file__).resolve().parents[2]
# commands whose modules exist since the foundation and the service skeleton
PRESENT = {"db", "demo", "secrets", "worker", "beat"}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _listed(help_text: str) -> dict[str, str]:
    section = help_text.split("Commands:", 1)[1]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and line.startswith("  ") and not line.startswith("    "):
            rows[parts[0]] = parts[1]
    return rows


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = _listed(result.output)
    assert set(listed) >= PRESENT
    assert set(listed) <= set(COMMANDS)
    for name in listed:
        assert listed[name].split()[0] == COMMANDS[name][2].split()[0]


def test_help_hides_commands_whose_module_is_not_there(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        cli_main.COMMANDS, "ghost", ("silvasonic_uploader.cli.no_such_module", "ghost", "Boo.")
    )
    assert "ghost" not in _listed(runner.invoke(main, ["--help"]).output)
    result = runner.invoke(main, ["ghost"])
    assert result.exit_code == 2
    assert "No such command 'ghost'" in result.output


def test_help_does_not_import_celery_or_the_commands() -> None:
    # a fresh interpreter: --help must stay fast on a Raspberry Pi
    probe = (
        "import sys\n"
        "from silvasonic_uploader.cli.main import main\n"
        "try:\n"
        "    main(['--help'], standalone_mode=False)\n"
        "finally:\n"
        "    loaded = sorted(m for m in sys.modules if m == 'celery' or m.startswith('silvasonic_uploader.cli.'))\n"
        "    print('LOADED', loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED ['silvasonic_uploader.cli.main']" in out.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "0.6.0" in result.output


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("demo", {"--recordings", "--data-dir", "--timeout", "--flower"}),
        ("run", {"--data-dir", "--flower", "--flower-port"}),
    ],
)
def test_demo_and_run_help(runner: CliRunner, command: str, options: set[str]) -> None:
    # only --help: the commands themselves start servers (tests/smoke/test_run_demo.py)
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert all(option in result.output for option in options)


def test_db_help_lists_upgrade_and_check(runner: CliRunner) -> None:
    result = runner.invoke(main, ["db", "--help"])
    assert result.exit_code == 0
    assert {"upgrade", "check"} <= set(_listed(result.output))


def test_secrets_generate_key_and_encrypt(runner: CliRunner) -> None:
    generated = runner.invoke(main, ["secrets", "generate-key"])
    assert generated.exit_code == 0
    key = generated.output.strip()
    assert generate_key() != key and len(key) == 44

    encrypted = runner.invoke(main, ["secrets", "encrypt"], input="hunter2\n", env={KEY_ENV: key})
    assert encrypted.exit_code == 0, encrypted.output
    token = encrypted.output.strip()
    assert token.startswith("enc:") and "hunter2" not in token
    assert decrypt_value(token, key) == "hunter2"


def test_secrets_encrypt_without_key_fails_clearly(runner: CliRunner) -> None:
    result = runner.invoke(main, ["secrets", "encrypt"], input="hunter2\n", env={KEY_ENV: ""})
    assert result.exit_code == 1
    assert f"{KEY_ENV} is not set" in result.output
    assert "hunter2" not in result.output
