"""The beat scheduler: celery-redbeat's, told its Redis URL only inside the beat process.

Celery masks the password of ``broker_url`` wherever it prints configuration (``celery
inspect conf``, Flower's worker pages and ``/api/workers``), but not that of
``redbeat_redis_url``. So that setting is not in ``celeryconfig``, which every worker loads:
this scheduler sets it on its own app just before redbeat reads it. Workers never need it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from redbeat import RedBeatScheduler

from celeryconfig import scheduler_redis_url


class Scheduler(RedBeatScheduler):
    """``celery beat --scheduler tasks.beat_scheduler:Scheduler``."""

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        app.conf.redbeat_redis_url = scheduler_redis_url()
        super().__init__(app, *args, **kwargs)
