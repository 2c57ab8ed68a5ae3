"""A tiny process supervisor: run child commands, restart one that exits (with backoff),
stop them all on SIGTERM/SIGINT and exit 0. Used by ``beat`` (the scheduler exits when Redis
loses its lock) and by ``run``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

import structlog

from uploader.rclone.process_group import spawn

log = structlog.get_logger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child up this long is healthy again: backoff resets


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    restart_at: float = 0.0
    restarts: int = 0

    def start(self) -> None:
        # its own process group (a group kill reaches its pool children) and killed by the
        # kernel if the supervisor dies, so a kill -9 of the supervisor leaves no orphan
        self.proc = spawn(self.argv, {**os.environ, **(self.env or {})}, stdout=None, stderr=None)
        self.started_at = time.monotonic()
        log.info("supervisor.child_started", child=self.name, pid=self.proc.pid)


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)
    stop_timeout_s: float = 20.0
    _stopping: bool = False

    def add(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        child = Child(name, argv, env)
        self.children.append(child)
        return child

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def run(self, *, poll_s: float = 0.5) -> int:
        """Block until SIGTERM/SIGINT; returns the exit code (0 after an orderly stop)."""
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        for child in self.children:
            child.start()
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                self._tend(child, now)
            time.sleep(poll_s)
        self.stop_all()
        return 0

    def _tend(self, child: Child, now: float) -> None:
        if child.proc is None:
            if now >= child.restart_at:
                child.restarts += 1
                child.start()
            return
        code = child.proc.poll()
        if code is None:
            if now - child.started_at > STABLE_AFTER_S:
                child.backoff_s = BACKOFF_START_S
            return
        log.warning(
            "supervisor.child_exited", child=child.name, code=code, restart_in_s=child.backoff_s
        )
        child.proc = None
        child.restart_at = now + child.backoff_s
        child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)

    def stop_all(self) -> None:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("supervisor.child_killed", child=child.name)
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        log.info("supervisor.stopped", children=len(self.children))
