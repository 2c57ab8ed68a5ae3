"""Flower for ``run --flower``: generated credentials in a 0600 file, everything else in
Flower's environment (``FLOWER_*``), so no secret ever appears on a command line
(docs/design/0008-least-privilege.md). Bound to 127.0.0.1, read-only (Flower ≥ 2.1
``read_only``: no shutdown, revoke, pool or rate-limit operations from the web page or the API)."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

FLOWER_USER = "silvasonic"
DEFAULT_PORT = 5555
CREDENTIALS_FILE = "flower-credentials"
# token_urlsafe never yields ':' or ',' (Flower splits FLOWER_BASIC_AUTH on both)
PASSWORD_BYTES = 24


@dataclass(frozen=True)
class FlowerCredentials:
    user: str
    password: str

    @property
    def basic_auth(self) -> str:
        """The value of ``FLOWER_BASIC_AUTH``."""
        return f"{self.user}:{self.password}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(wanted: int) -> int:
    """``wanted`` when it is free on 127.0.0.1 (0: any free port), else a free one."""
    if wanted and _port_free(wanted):
        return wanted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(path: Path) -> FlowerCredentials | None:
    try:
        fields = dict(
            line.split("=", 1)
            for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
    except OSError:
        return None
    user, password = fields.get("user", "").strip(), fields.get("password", "").strip()
    if not user or not password or any(c in password + user for c in ":,"):
        return None
    return FlowerCredentials(user, password)


def write_credentials(path: Path, url: str) -> FlowerCredentials:
    """Keep the credentials already in ``path`` (an operator's bookmark keeps working),
    generate them when there are none; (re)write the file with mode 0600 and the URL."""
    creds = _read(path) or FlowerCredentials(FLOWER_USER, secrets.token_urlsafe(PASSWORD_BYTES))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "# Flower of `silvasonic-uploader run` (read-only, 127.0.0.1 only). Keep private.\n"
            f"url={url}\nuser={creds.user}\npassword={creds.password}\n"
        )
    os.chmod(tmp, 0o600)  # also when the umask or an older file said otherwise
    os.replace(tmp, path)
    return creds


def flower_argv() -> list[str]:
    """No option on the command line carries anything sensitive; all of it is in the env."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "flower"]


def flower_env(creds: FlowerCredentials, port: int, state_dir: Path) -> dict[str, str]:
    """Flower reads every ``FLOWER_<OPTION>`` variable (flower/command.py)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return {
        "FLOWER_BASIC_AUTH": creds.basic_auth,
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(port),
        "FLOWER_READ_ONLY": "true",
        # a stable cookie secret per data dir would need a file too; a fresh one per start
        # only logs browsers out on restart
        "FLOWER_COOKIE_SECRET": secrets.token_urlsafe(32),
        "FLOWER_PERSISTENT": "true",
        "FLOWER_DB": str(state_dir / "flower.db"),
        "FLOWER_STATE_SAVE_INTERVAL": "60000",
        "FLOWER_PURGE_OFFLINE_WORKERS": "600",
    }
