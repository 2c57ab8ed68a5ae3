"""``silvasonic-uploader beat``: the dispatcher — the beat scheduler (celery-redbeat: one
leader, a second ``beat`` waits as hot standby) plus an embedded worker consuming only
``uploader.control``, both supervised (the scheduler exits when Redis loses its lock, the
control worker when its broker consumer is stuck; the supervisor restarts either)."""

from __future__ import annotations

import sys

import click

from celeryconfig import CONTROL_QUEUE
from silvasonic_uploader.cli.supervisor import Supervisor
from silvasonic_uploader.cli.worker import _check_schema, loglevel_option
from uploader.ops.logs import SERVICE_ENV, celery_banner_options, configure_logging


def dispatcher_commands(loglevel: str = "INFO") -> dict[str, list[str]]:
    celery = [sys.executable, "-m", "celery", "-A", "tasks", *celery_banner_options()]
    return {
        "scheduler": [
            *celery, "beat", "--scheduler", "tasks.beat_scheduler:Scheduler",
            "--loglevel", loglevel,
        ],
        "control-worker": [
            *celery, "worker", "--queues", CONTROL_QUEUE, "--hostname", "uploader-control@%h",
            "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "--loglevel", loglevel,
        ],
    }  # fmt: skip


@click.command()
@loglevel_option
def beat(loglevel: str) -> None:
    """Run the dispatcher (scheduler + control worker) until SIGTERM."""
    configure_logging("uploader-beat")
    _check_schema()
    supervisor = Supervisor()
    for name, argv in dispatcher_commands(loglevel).items():
        env = {"REMAP_SIGTERM": "SIGQUIT", SERVICE_ENV: f"uploader-{name}"}
        if name == "control-worker":
            # it has no /healthy and no Controller: a consumer stuck after a broker error ends
            # the process, and this supervisor starts a new one (tasks/worker_steps.py)
            env["SILVASONIC_EXIT_ON_CONSUMER_STALL"] = "1"
        supervisor.add(name, argv, env=env)
    sys.exit(supervisor.run())
