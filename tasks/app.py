"""The Celery app. Configured only from ``celeryconfig`` (the environment) and
``beat_schedule``; ``celery -A tasks worker|beat|inspect …`` finds it here."""

from __future__ import annotations

from celery import Celery

import beat_schedule

app = Celery("silvasonic_uploader", include=["tasks.pipeline", "tasks.dispatch"])
app.config_from_object("celeryconfig")
app.conf.beat_schedule = beat_schedule.SCHEDULE

from tasks import worker_steps  # noqa: E402  (signals and the health/heartbeat bootstep)

worker_steps.install(app)
