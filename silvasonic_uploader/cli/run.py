"""``silvasonic-uploader run``: the whole service on one machine, supervised.

PostgreSQL and Redis come from :class:`silvasonic_uploader.cli.local_run.LocalRun` (embedded from
the wheels unless URLs are set); then the dispatcher (``beat``), the controller with the process
backend (one worker per running remote) and, with ``--flower``, Flower run under
:class:`silvasonic_uploader.cli.supervisor.Supervisor`, each logging to its own file. SIGINT or
SIGTERM stops everything in order and loses nothing: workers hand in-flight work back to the queue,
leases expire, PostgreSQL holds the record. ``demo`` runs the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import structlog

from silvasonic_uploader.cli import flower
from silvasonic_uploader.cli.local_run import WORKER_STOP_TIMEOUT_S, DataDir, LocalRun
from silvasonic_uploader.cli.supervisor import Child, Supervisor
from silvasonic_uploader.cli.worker import loglevel_option
from uploader.ops.logs import configure_logging
from uploader.rclone.process_group import spawn

log = structlog.get_logger("run")

DEFAULT_DATA_DIR = Path(".silvasonic")


@dataclass
class LoggedChild(Child):
    """A supervised child whose output goes to its own log file, not to our terminal."""

    log_path: Path | None = None

    def start(self) -> None:
        assert self.log_path is not None
        with self.log_path.open("ab") as out:
            self.proc = spawn(
                self.argv, {**os.environ, **(self.env or {})}, stdout=out, stderr=subprocess.STDOUT
            )
        self.started_at = time.monotonic()
        log.info("supervisor.child_started", child=self.name, pid=self.proc.pid)


@dataclass
class RunSupervisor(Supervisor):
    """Stops in the order that loses nothing and takes one soft-shutdown period, not two:
    first the controller (so it restarts no worker), then the workers together with the
    remaining children (each returns its in-flight task to the queue)."""

    stop_workers: Callable[[], None] | None = None
    announce: Callable[[], None] | None = None

    def stop_all(self) -> None:
        if self.announce is not None:
            self.announce()
        for child in self.children:
            if child.name == "controller" and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()
        workers = threading.Thread(target=self.stop_workers or (lambda: None), daemon=True)
        workers.start()
        super().stop_all()
        workers.join(WORKER_STOP_TIMEOUT_S + 10)


def build_supervisor(local: LocalRun, loglevel: str = "INFO") -> RunSupervisor:
    """beat, the controller and (with a Flower port) Flower, with the run's environment."""
    cli = [sys.executable, "-m", "silvasonic_uploader"]
    env = local.child_env()
    sup = RunSupervisor(
        stop_workers=local.stop_workers,
        announce=lambda: local.echo(
            "stopping: workers hand in-flight work back to the queue (a few seconds) …"
        ),
    )
    commands: dict[str, tuple[list[str], Mapping[str, str]]] = {
        "beat": ([*cli, "beat", "--loglevel", loglevel], env),
        "controller": ([*cli, "controller", "--backend", "process"], env),
    }
    if local.flower_port is not None:
        port = flower.choose_port(local.flower_port)
        local.flower_url = f"http://127.0.0.1:{port}"
        creds = flower.write_credentials(local.data.credentials, local.flower_url)
        flower_env = {**env, **flower.flower_env(creds, port, local.data.flower)}
        commands["flower"] = (flower.flower_argv(), flower_env)
    for name, (argv, child_env) in commands.items():
        sup.children.append(
            LoggedChild(name, argv, child_env, log_path=local.data.logs / f"{name}.log")
        )
    return sup


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Our own structlog lines (supervisor events) into ``path``: the terminal is for people."""
    configure_logging("run")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=fh))
        yield


def supervise(local: LocalRun, sup: RunSupervisor) -> int:
    """Block in the supervisor until SIGINT/SIGTERM; then everything stops in order."""
    try:
        code = sup.run()
    except KeyboardInterrupt:  # a signal between our handler and the supervisor's
        sup.stop_all()
        code = 0
    return code


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where embedded PostgreSQL/Redis keep their data, and the workspace, logs, workers.",
)
@click.option("--flower", "with_flower", is_flag=True, help="Also run Flower (read-only, local).")
@click.option(
    "--flower-port",
    type=int,
    default=flower.DEFAULT_PORT,
    show_default=True,
    help="Flower's port on 127.0.0.1 (another free port when taken; 0: any).",
)
@loglevel_option
def run(data_dir: Path, with_flower: bool, flower_port: int, loglevel: str) -> None:
    """Run the whole service on this machine until Ctrl-C (or SIGTERM).

    Without SILVASONIC_DATABASE_URL (or POSTGRES_HOST/SILVASONIC_DB_HOST) and
    SILVASONIC_REDIS_URL it starts PostgreSQL and Redis from the installed wheels, keeping
    their data in --data-dir, so a second `run` continues where the first stopped.
    """
    data = DataDir(data_dir.resolve())
    data.root.mkdir(parents=True, exist_ok=True)
    with logs_to(data.root / "logs" / "run.log"):
        click.echo("silvasonic-uploader run")
        try:
            with LocalRun(data, flower_port=flower_port if with_flower else None) as local:
                sup = build_supervisor(local, loglevel)
                for line in local.banner():
                    click.echo(line)
                click.echo("Running. Ctrl-C stops everything (nothing is lost).")
                code = supervise(local, sup)
        except KeyboardInterrupt:
            click.echo("interrupted during start-up; stopped")
            sys.exit(130)
    click.echo("stopped")
    sys.exit(code)
