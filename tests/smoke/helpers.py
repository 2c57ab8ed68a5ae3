"""What the smoke tests share: the console script as a user runs it, an environment without
any of our settings, and a sweep that finds (and, in teardown, kills) every process a
``run``/``demo`` started for a data folder — so a failing test leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import TEST_LOCAL_REMOTE_ROOTS
from tests.fixtures.stack import wait_until

# the console script of this environment (.venv/bin/silvasonic-uploader), a black box
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "silvasonic-uploader")


def bare_env(**more: str) -> dict[str, str]:
    """Our environment without any SILVASONIC_*/POSTGRES_*/FLOWER_* variable (no database or
    Redis URL: the command must find its own), plus ``more``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SILVASONIC_", "POSTGRES_", "FLOWER_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["SILVASONIC_LOCAL_REMOTE_ROOTS"] = TEST_LOCAL_REMOTE_ROOTS  # tmp_path remotes
    env.update(more)
    return env


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [CONSOLE_SCRIPT, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )


def wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    def seen() -> bool:
        if proc.poll() is not None:
            return text in log.read_text(errors="replace")
        return log.exists() and text in log.read_text(errors="replace")

    return wait_until(seen, timeout_s, 0.5) and proc.poll() is None


def stop(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int | None, float]:
    """SIGTERM; the exit code and how long it took (None: still running after ``timeout_s``)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - began


def read_env_file(data_dir: Path) -> dict[str, str]:
    lines = (data_dir / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _proc_text(pid: int, name: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b"\n").decode("utf-8", "replace")


def all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            yield int(entry.name)


def _recorded_pids(data_dir: Path) -> set[int]:
    """Pids the run itself noted: Redis/WebDAV (run-state.json), PostgreSQL, the workers."""
    pids: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((data_dir / "run-state.json").read_text())
        pids |= {int(pid) for pid, _ in (state.get("pids") or {}).values()}
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids.add(int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0]))
    for path in (data_dir / "workers").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.add(int(json.loads(path.read_text())["pid"]))
    return pids


def processes_of(data_dir: Path) -> list[int]:
    """Live processes started for ``data_dir``: it is in their command line or environment
    (beat, controller, workers, Flower, PostgreSQL, WebDAV), or the run recorded them."""
    needle = str(data_dir)
    found = []
    recorded = _recorded_pids(data_dir)
    for pid in all_pids():
        status = _proc_text(pid, "stat")
        if not status or status.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            continue
        if (
            pid in recorded
            or needle in _proc_text(pid, "cmdline")
            or needle in _proc_text(pid, "environ")
        ):
            found.append(pid)
    return found


def kill_all_of(data_dir: Path) -> None:
    """Teardown: SIGKILL every process (group) started for ``data_dir``."""
    for _ in range(3):
        pids = processes_of(data_dir)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def cmdlines_containing(secret: str) -> list[str]:
    """Every process command line on this machine that contains ``secret``."""
    hits = []
    for pid in all_pids():
        cmdline = _proc_text(pid, "cmdline")
        if secret in cmdline:
            hits.append(f"{pid}: {cmdline.replace(chr(10), ' ')}")
    return hits
