"""Secrets given as files: for each variable ``NAME`` below, ``NAME_FILE`` names a file whose
content (trailing newlines dropped) becomes ``NAME``.

Worker containers get their database password, Redis URL and encryption key this way (Podman secrets
under /run/secrets, docs/controller.md §2), so ``podman inspect`` shows no value; compose services
do the same with compose secrets. The image's entrypoint (docker-entrypoint.sh) applies the same
rule for commands that are not ours (Flower); every ``silvasonic-uploader`` command applies it
itself at start (``silvasonic_uploader.cli.main.entry``), so it holds however the process was
started.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# keep equal to FILE_VARIABLES in docker-entrypoint.sh (a unit test compares them)
FILE_VARIABLES = (
    "POSTGRES_PASSWORD",
    "SILVASONIC_DATABASE_URL",
    "SILVASONIC_REDIS_URL",
    "SILVASONIC_ENCRYPTION_KEY",
    "FLOWER_BASIC_AUTH",
)


class FileVariableError(Exception):
    """A ``NAME_FILE`` that cannot be used; the message says what to do."""


def apply_file_variables(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Turn every ``NAME_FILE`` into ``NAME`` (and drop ``NAME_FILE``); returns the names set."""
    env = os.environ if environ is None else environ
    applied: list[str] = []
    for name in FILE_VARIABLES:
        path = env.get(f"{name}_FILE", "")
        if not path:
            continue
        if env.get(name):
            raise FileVariableError(f"both {name} and {name}_FILE are set; keep one of them")
        try:
            value = Path(path).read_text().rstrip("\n")
        except OSError as exc:
            raise FileVariableError(
                f"{name}_FILE names {path}, which cannot be read ({exc.strerror or exc}); is the "
                f"secret mounted, and readable by this user?"
            ) from None
        env[name] = value
        del env[f"{name}_FILE"]
        applied.append(name)
    return applied
