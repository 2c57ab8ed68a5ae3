"""``silvasonic-uploader``: the command line, at the edge of the system.

Each command lives in its own module and is imported only when it runs, so ``--help`` stays
fast and commands that need Celery import it inside themselves.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from uploader.file_variables import FileVariableError, apply_file_variables

# name -> (module, attribute, one-line help shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "silvasonic_uploader.cli.demo",
        "demo",
        "Run a demo station on this machine: synthetic audio, two remotes.",
    ),
    "run": (
        "silvasonic_uploader.cli.run",
        "run",
        "Run the whole service on this machine (embedded defaults).",
    ),
    "worker": ("silvasonic_uploader.cli.worker", "worker", "Run the Celery worker for one remote."),
    "beat": (
        "silvasonic_uploader.cli.beat",
        "beat",
        "Run the dispatcher: beat scheduler plus the control worker.",
    ),
    "controller": (
        "silvasonic_uploader.cli.controller",
        "controller",
        "Run the reconcile loop (one worker per remote).",
    ),
    "status": (
        "silvasonic_uploader.cli.status",
        "status",
        "Show per-remote progress and what holds the Janitor back.",
    ),
    "remotes": (
        "silvasonic_uploader.cli.remotes",
        "remotes",
        "List, add, change, (de)activate and remove remotes.",
    ),
    "parked": ("silvasonic_uploader.cli.parked", "parked", "List parked pairs or retry them."),
    "db": ("silvasonic_uploader.cli.db", "db", "Database schema: upgrade, check."),
    "secrets": ("silvasonic_uploader.cli.secrets", "secrets", "Encryption key helpers."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._available(name))

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not self._available(cmd_name):
            return None
        command: Any = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="silvasonic-uploader")
def main() -> None:
    """silvasonic-uploader: every raw recording, as lossless FLAC, on every active remote.

    Settings come from the environment (SILVASONIC_DATABASE_URL or POSTGRES_*,
    SILVASONIC_REDIS_URL, SILVASONIC_RECORDER_WORKSPACE) and from the station database
    (system_config, storage_remotes). See docs/ for the operator guide.
    """


def entry() -> None:
    """The ``silvasonic-uploader`` console script: secrets given as files become variables
    before any module reads the environment (uploader/file_variables.py), then the CLI."""
    try:
        apply_file_variables()
    except FileVariableError as exc:
        click.echo(f"silvasonic-uploader: {exc}", err=True)
        sys.exit(64)  # EX_USAGE, as the image's entrypoint
    main()
