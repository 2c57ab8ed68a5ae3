"""What the end-to-end benches share: private PostgreSQL and Redis from the wheels, a WebDAV
server, a station seeded in bulk, the real worker and dispatcher as subprocesses, and the CPU
time and PSS of process trees read from /proc.

Not a bench itself (``throughput.py`` and ``memory.py`` use it). Every process started here is
stopped by :class:`Harness.close`, also on failure; nothing touches the machine's own
PostgreSQL or Redis.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import soundfile as sf
from sqlalchemy import Engine, create_engine, text

from bench.encode import field_audio
from silvasonic_uploader.cli.local_servers import LocalPostgres, LocalRedis, free_port
from uploader.db import schema
from uploader.rclone.client import find_rclone_binary

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "silvasonic_uploader"]
SENSOR = "bench-mic-01"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Production timings (celeryconfig's defaults), except the dispatch tick and poll interval,
# which only decide how soon the first batch of a run is claimed: the measurement starts at
# that claim, so they shorten the bench without changing the per-pair figure.
SERVICE_ENV = {
    "SILVASONIC_DEVELOPMENT_MODE": "false",
    "SILVASONIC_DISPATCH_TICK_S": "1",
    "SILVASONIC_HEARTBEAT_INTERVAL_S": "10",
    "PYTHONUNBUFFERED": "1",
}


def wait_until(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


# -- /proc ---------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pids(roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    kids = _children_map()
    out: list[int] = []
    todo = [r for r in roots if Path(f"/proc/{r}").exists()]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(roots: Iterable[int]) -> float:
    """user+sys of a process tree, including its reaped children (cutime/cstime): the delta
    between two reads is the CPU the tree used, as long as its processes live on."""
    total = 0
    for pid in tree_pids(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the ")": state=0 … utime=11 stime=12 cutime=13 cstime=14
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def cpu_by_role(roots: Iterable[int], role: Callable[[int, str], str]) -> dict[str, float]:
    """user+sys seconds of a process tree, summed per role (``role(pid, cmdline)``), so a run can
    say which process costs what (the Celery parent, the pool child, rclone, PostgreSQL …)."""
    out: dict[str, float] = {}
    for pid in tree_pids(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = role(pid, cmdline(pid))
        out[name] = out.get(name, 0.0) + sum(int(x) for x in fields[11:15]) / CLK_TCK
    return out


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# -- audio ---------------------------------------------------------------------------------


def make_wavs(folder: Path, n: int, seconds: float, rate: int, distinct: int = 4) -> list[Path]:
    """``n`` WAVs (16-bit mono field-like audio), hard links to ``distinct`` different ones:
    encoding costs the same whatever the content repeats, and generating 384 kHz audio is slow."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for k in range(min(distinct, n)):
        path = folder / f"_src{k}.wav"
        sf.write(str(path), field_audio(seconds, rate, seed=k + 1), rate, subtype="PCM_16")
        sources.append(path)
    out = []
    for i in range(n):
        path = folder / f"rec{i:05d}.wav"
        os.link(sources[i % len(sources)], path)
        out.append(path)
    return out


# -- servers -------------------------------------------------------------------------------


@dataclass
class WebDav:
    """``rclone serve webdav`` on 127.0.0.1 with a user and password (through its env)."""

    root: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    user: str = "bench"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    proc: subprocess.Popen[bytes] | None = None

    def config(self, **extra: str) -> dict[str, str]:
        return {"url": f"http://127.0.0.1:{self.port}", "user": self.user,
                "pass": self.password, **extra}  # fmt: skip

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
               "RCLONE_CONFIG": "/notfound", "RCLONE_USER": self.user,
               "RCLONE_PASS": self.password}  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [find_rclone_binary(), "serve", "webdav", str(self.root),
                 "--addr", f"127.0.0.1:{self.port}"],
                env=env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        if not wait_until(self._listening, 15, 0.02):
            raise RuntimeError(f"rclone serve webdav did not start; see {self.log_path}")

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        wait_until(lambda: not self._listening(), 5, 0.02)


@dataclass
class Service:
    """One ``silvasonic-uploader`` command as a subprocess in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Harness:
    """Private servers, one database, the service processes; :meth:`close` stops them all."""

    def __init__(self, prefix: str = "bench-") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        # our own folder: as root the embedded servers run as their own user, which must be able to
        # pass through it to their data folders (silvasonic_uploader/cli/local_servers.py); 0711
        # lists nothing to other users
        os.chmod(self.tmp, 0o711)
        self.workspace = self.tmp / "workspace"
        self.workspace.mkdir()
        self.temp_root = self.tmp / "flac-tmp"
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        # fsync off, as in the tests and the benches' earlier figures: both sides of a
        # comparison share the server (a station's own PostgreSQL keeps fsync on)
        self.pg = LocalPostgres(self.tmp / "pg" / "data", durable=False)
        self.redis = LocalRedis(self.tmp / "redis")
        self.services: dict[str, Service] = {}
        self.webdavs: list[WebDav] = []
        self.engine: Engine | None = None
        self.db_url = ""
        self.env: dict[str, str] = {}

    # life cycle
    def start(self, service_env: dict[str, str] | None = None) -> None:
        self.pg.start()
        self.redis.start()
        self.db_url = self.pg.url("silvasonic")
        conn = self.pg.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE silvasonic")
        conn.close()
        schema.upgrade(self.db_url)
        self.engine = create_engine(self.db_url, pool_size=2)
        self.env = {
            **os.environ,
            **SERVICE_ENV,
            "SILVASONIC_DATABASE_URL": self.db_url,
            "SILVASONIC_REDIS_URL": self.redis.url(0),
            "SILVASONIC_RECORDER_WORKSPACE": str(self.workspace),
            "SILVASONIC_TEMP_DIR": str(self.temp_root),
            **(service_env or {}),
        }

    def close(self, *, keep: bool = False) -> None:
        """Stop every process started here; remove the temp folder unless ``keep``. A second
        Ctrl-C must not cut the clean-up short (it would leave servers behind): ignored here."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._close(keep)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _close(self, keep: bool) -> None:
        for service in list(self.services.values()):
            service.stop(signal.SIGKILL)
        self.services.clear()
        for dav in self.webdavs:
            dav.stop()
        if self.engine is not None:
            self.engine.dispose()
        self.redis.kill()
        self.pg.kill()
        if keep:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def webdav(self) -> WebDav:
        k = len(self.webdavs)
        dav = WebDav(self.tmp / f"dav{k}", self.logs / f"dav{k}.log")
        dav.start()
        self.webdavs.append(dav)
        return dav

    def spawn(self, name: str, argv: Sequence[str], **env: str) -> Service:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv), env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=REPO,
            )  # fmt: skip
        service = Service(name, proc, log_path)
        self.services[name] = service
        return service

    def start_worker(self, slug: str, **env: str) -> Service:
        port = free_port()
        service = self.spawn(
            f"worker-{slug}",
            [*CLI, "worker", "--remote", slug, "--loglevel", "WARNING"],
            SILVASONIC_HEALTH_PORT=str(port),
            **env,
        )
        if not wait_until(lambda: _health_ok(port) or service.proc.poll() is not None, 60):
            raise RuntimeError(f"worker {slug} did not become healthy; see {service.log_path}")
        if service.proc.poll() is not None:
            raise RuntimeError(f"worker {slug} exited; see {service.log_path}")
        return service

    def start_dispatcher(self, **env: str) -> Service:
        return self.spawn("beat", [*CLI, "beat", "--loglevel", "WARNING"], **env)

    # the database
    def sql(self, statement: str, **params: Any) -> Any:
        assert self.engine is not None
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.scalar() if result.returns_rows else None

    def seed_station(self, uploader: dict[str, Any]) -> None:
        import json

        assert self.engine is not None
        with self.engine.begin() as conn:
            for key, value in (
                ("uploader", uploader),
                ("system", {"station_name": "Silvasonic Bench", "max_uploaders": 3}),
            ):
                conn.execute(
                    text("INSERT INTO system_config (key, value) VALUES (:k, CAST(:v AS jsonb)) "
                         "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"),
                    {"k": key, "v": json.dumps(value)},
                )  # fmt: skip
            conn.execute(
                text("INSERT INTO devices (name, serial_number, model, config, workspace_name) "
                     "VALUES (:n, :n, 'bench', '{}'::jsonb, :n) ON CONFLICT DO NOTHING"),
                {"n": SENSOR},
            )  # fmt: skip

    def set_uploader(self, **fields: Any) -> None:
        import json

        self.sql(
            "UPDATE system_config SET value = value || CAST(:v AS jsonb) WHERE key = 'uploader'",
            v=json.dumps(fields),
        )

    def add_remote(
        self, slug: str, type_: str, config: dict[str, Any], target_path: str | None,
        *, active: bool = True,
    ) -> None:  # fmt: skip
        import json

        self.sql(
            "INSERT INTO storage_remotes (slug, type, name, config, is_active, target_path, "
            "created_at) VALUES (:s, :t, :s, CAST(:c AS jsonb), :a, :p, now())",
            s=slug, t=type_, c=json.dumps(config), a=active, p=target_path,
        )  # fmt: skip

    def add_recordings(self, wavs: Sequence[Path], rate: int, seconds: float) -> list[int]:
        """One row per WAV (which must lie inside the workspace), in one transaction."""
        assert self.engine is not None
        base = datetime(2026, 5, 1, tzinfo=UTC)
        offset = int(self.sql("SELECT count(*) FROM recordings") or 0)
        rows = [
            {
                "time": base + timedelta(seconds=10 * (offset + i)),
                "file_raw": str(wav.relative_to(self.workspace)),
                "size": wav.stat().st_size,
                "rate": rate,
                "dur": seconds,
                "sensor": SENSOR,
            }
            for i, wav in enumerate(wavs)
        ]
        with self.engine.begin() as conn:
            ids = [
                int(conn.execute(
                    text("INSERT INTO recordings (time, sensor_id, file_raw, duration, "
                         "sample_rate, filesize_raw) VALUES (:time, :sensor, :file_raw, :dur, "
                         ":rate, :size) RETURNING id"),
                    row,
                ).scalar_one())
                for row in rows
            ]  # fmt: skip
        return ids

    def wait_drained(self, pairs: int, timeout_s: float, every_s: float = 0.2) -> tuple[int, float]:
        """Wait until ``pairs`` success rows exist: (success rows, seconds waited)."""
        t0 = time.monotonic()
        done = 0
        while time.monotonic() - t0 < timeout_s:
            done = int(self.sql("SELECT count(*) FROM uploads WHERE success"))
            if done >= pairs:
                break
            time.sleep(every_s)
        return done, time.monotonic() - t0

    def service_roots(self) -> list[int]:
        return [s.pid for s in self.services.values()]


def _health_ok(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthy", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


_PAGE = os.sysconf("SC_PAGE_SIZE")
_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63


def distinct_kib(pids: Iterable[int]) -> int:
    """Memory of a process tree as its own container would hold it: the resident pages of all
    its processes, each physical page counted once (from /proc/<pid>/pagemap; needs root).

    PSS divides a page shared with a process outside the tree (a library the dispatcher's
    Python maps too, the rclone binary of a WebDAV server on this machine) among all of them,
    so it reads lower here than in a container; this count does not."""
    import struct

    frames: set[int] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
                for line in maps:
                    span = line.split()[0]
                    lo, hi = (int(x, 16) for x in span.split("-"))
                    if lo >= 0xFFFF_FFFF_F000_0000:  # [vsyscall]
                        continue
                    pagemap.seek(lo // _PAGE * 8)
                    raw = pagemap.read((hi - lo) // _PAGE * 8)
                    for (entry,) in struct.iter_unpack("<Q", raw):
                        if entry & _PRESENT:
                            frames.add(entry & _PFN_MASK)
        except OSError:
            continue
    return len(frames) * _PAGE // 1024
