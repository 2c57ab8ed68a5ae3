"""``silvasonic-uploader controller``: the reconcile loop that runs one worker per running
remote (docs/controller.md). Never run it beside the upstream Silvasonic Controller."""

from __future__ import annotations

from typing import Any

import click

from controller_ext.service import ControllerSettings, run_controller
from uploader.ops.logs import configure_logging


@click.command()
@click.option(
    "--backend",
    type=click.Choice(["auto", "podman", "process"]),
    default=None,
    help="Podman containers or local processes (default: SILVASONIC_CONTROLLER_BACKEND, auto).",
)
@click.option(
    "--interval",
    type=float,
    default=None,
    help="Seconds between reconcile cycles (default: SILVASONIC_RECONCILE_INTERVAL_S, 5).",
)
@click.option("--once", is_flag=True, help="Run one cycle and exit (1 if it failed).")
def controller(backend: str | None, interval: float | None, once: bool) -> None:
    """Run the reconcile loop: one worker per running remote, adopted across restarts.

    Workers are left running when the controller exits. A nudge
    (PUBLISH silvasonic:nudge reconcile) runs a cycle at once.
    """
    configure_logging("controller")
    overrides: dict[str, Any] = {}
    if backend is not None:
        overrides["controller_backend"] = backend
    if interval is not None:
        overrides["reconcile_interval_s"] = interval
    settings = ControllerSettings(**overrides)
    raise SystemExit(run_controller(settings, once=once))
