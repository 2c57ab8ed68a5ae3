"""Every Celery setting, read from the environment (stdlib only; why, in
docs/design/0005-celery.md and docs/celery.md). Check what a process would use with
``python -m celeryconfig`` (secrets masked).

The only setting that carries a secret is ``broker_url`` (the Redis password), which Celery
masks in ``celery report``, ``inspect conf`` and Flower. No other URL is a setting: redbeat's is
set inside the beat process only (tasks/beat_scheduler.py).
"""

from __future__ import annotations

import os
import re


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


# -- broker --------------------------------------------------------------------------------
broker_url = os.environ.get("SILVASONIC_REDIS_URL", "redis://localhost:6379/0")
# PostgreSQL is the record; a Redis result backend would only cost memory (and result gets
# were seen to hang: docs/design/0005-celery.md).
result_backend = None
task_ignore_result = True

# Redelivery after a crash comes after the visibility timeout (VT). VT must exceed the hard
# time limit; retry countdowns (ETA messages, held unacked) must stay far below it.
VISIBILITY_TIMEOUT_S = _int("SILVASONIC_VISIBILITY_TIMEOUT_S", 2 * 3600)
TASK_TIME_LIMIT_S = _int("SILVASONIC_TASK_TIME_LIMIT_S", 30 * 60)
# the soft limit leaves the task time to clean up (kill rclone/ffmpeg, audit) before the hard kill
TASK_SOFT_TIME_LIMIT_S = TASK_TIME_LIMIT_S - min(30, TASK_TIME_LIMIT_S // 5)
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_S,
    "socket_keepalive": True,
    "socket_timeout": 30,  # a silent Redis must not hang a worker forever
    "socket_connect_timeout": 5,
    # Never let redis-py retry (and so reconnect) inside kombu's connections: with retries on,
    # a read on kombu's pub/sub connection (the remote-control mailbox) that hits a Redis
    # restart reconnects silently to a connection without subscriptions, then blocks forever
    # (redis-py reads pub/sub with no socket timeout) and the worker's event loop with it.
    # Without retries the error reaches kombu and Celery reconnects the whole consumer.
    "retry_on_timeout": False,
    "health_check_interval": 25,
    # kombu 5.7: how often unacked messages older than VT are restored (default ~100 s)
    "unacked_restore_interval": _int("SILVASONIC_UNACKED_RESTORE_INTERVAL_S", 10),
    "unacked_restore_throttle": 1,
    # kombu's Redis transport keeps one list per step and serves the lower number first
    # (0 is the most urgent); two steps are all the pipeline uses (see STEP_PRIORITY below)
    "priority_steps": [0, 6],
}
# survive Redis starting later or restarting: reconnect forever (6.0 reads only this setting)
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
# on broker loss a running late-ack task would be redelivered anyway: kill it, never run twice
worker_cancel_long_running_tasks_on_connection_loss = True

# -- acknowledgement and retries -------------------------------------------------------------
task_acks_late = True  # ack after the step: a crash redelivers, every step is idempotent
task_reject_on_worker_lost = True  # a killed pool child requeues its message …
task_retry_on_worker_lost = True  # … as a retry (5.7), so max_retries bounds poison loops
task_acks_on_failure = True  # failures are audited by the errback; do not requeue them
task_acks_on_timeout = True  # an always-slow file must not loop forever
task_time_limit = TASK_TIME_LIMIT_S
task_soft_time_limit = TASK_SOFT_TIME_LIMIT_S
# connection-level retries: exponential backoff with full jitter, capped far below VT and at
# the poll interval, for about an hour in all (a probe pair keeps knocking on a remote that is
# down; the dispatcher sends a new probe when a chain gives up)
uploader_retry_backoff_s = _float("SILVASONIC_RETRY_BACKOFF_S", 5.0)
uploader_retry_backoff_max_s = _float("SILVASONIC_RETRY_BACKOFF_MAX_S", 60.0)
uploader_max_retries = _int("SILVASONIC_MAX_RETRIES", 90)
# a claimed pair's lease: longer than queue wait + time limit + backoff; every step renews it
uploader_lease_s = _int("SILVASONIC_LEASE_S", 2 * 3600)

# -- worker ----------------------------------------------------------------------------------
worker_pool = "prefork"  # only prefork enforces time limits and requeues on child death
worker_concurrency = 1  # one upload at a time per remote: the link is the bottleneck
worker_prefetch_multiplier = 1  # reserved = executing; nothing ages past VT behind an upload
worker_max_memory_per_child = _int("SILVASONIC_MAX_MEMORY_PER_CHILD_KB", 150_000)
# SIGTERM (REMAP_SIGTERM=SIGQUIT, set by the worker command) returns in-flight work within this
worker_soft_shutdown_timeout = _float("SILVASONIC_SOFT_SHUTDOWN_TIMEOUT_S", 8.0)
worker_enable_soft_shutdown_on_idle = True
# Task events, what Flower shows, are off unless SILVASONIC_TASK_EVENTS=1: they cost a busy
# worker ~4-8 ms CPU per 10 s pair (its main process's CPU nearly halves; bench/README.md),
# and nobody reads them on a station without Flower. Flower switches them on at run time
# (its enable_events, every 5 s), so its dashboard fills within seconds of its start
# (tests/integration/test_task_events.py). The worker and control-worker commands pass no
# --task-events flag: this setting decides.
worker_send_task_events = _bool("SILVASONIC_TASK_EVENTS", False)
task_send_sent_event = worker_send_task_events
worker_redirect_stdouts = False  # our structlog lines go to stdout as they are
worker_hijack_root_logger = False

# -- routing ---------------------------------------------------------------------------------
CONTROL_QUEUE = "uploader.control"
UPLOAD_QUEUE_PREFIX = "upload."


def upload_queue(remote_slug: str) -> str:
    """The one place that names a remote's queue (the controller purges it by this name)."""
    return f"{UPLOAD_QUEUE_PREFIX}{remote_slug}"


#: Depth-first draining. A remote's queue holds the encodes of a whole batch; the upload and
#: audit that an encode publishes would wait behind all of them (FIFO), so the worker would
#: encode the batch before auditing its first pair: a batch of FLACs in the temp folder, and
#: the success row (the Janitor's signal) a batch late. Redis serves the lower priority number
#: first, so a pair's later steps and its errback overtake the waiting encodes: one pair at a
#: time runs encode → upload → audit. Messages without a priority (older ones) count as 0.
STEP_PRIORITY = {"encode": 6, "upload": 0, "audit": 0, "record_failure": 0}

task_create_missing_queues = True  # upload.<slug> queues exist as soon as a chain is sent
task_routes = {
    "uploader.dispatch_pending": {"queue": CONTROL_QUEUE},
    "uploader.request_topup": {"queue": CONTROL_QUEUE},
}
timezone = "UTC"
enable_utc = True

# -- beat (celery-redbeat) -------------------------------------------------------------------
beat_scheduler = "tasks.beat_scheduler:Scheduler"


def scheduler_redis_url() -> str:
    """Where redbeat keeps its schedule and lock. Deliberately not a setting here: Celery does
    not mask it in ``inspect conf`` or Flower, so only the beat process sets it
    (tasks/beat_scheduler.py)."""
    return os.environ.get("SILVASONIC_REDBEAT_REDIS_URL") or broker_url


redbeat_key_prefix = "silvasonic:redbeat:"
# a standby beat takes over within this after the leader dies; beat ticks well inside it
redbeat_lock_timeout = _int("SILVASONIC_REDBEAT_LOCK_TIMEOUT_S", 30)
beat_max_loop_interval = 5
DISPATCH_TICK_S = _float("SILVASONIC_DISPATCH_TICK_S", 5.0)


def _masked(value: object) -> object:
    if isinstance(value, str):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", value)
    return value


if __name__ == "__main__":
    for name, value in sorted(globals().items()):
        if name.startswith("_") or not (name.islower() or name.isupper()):
            continue
        if callable(value) or type(value).__name__ == "module":
            continue
        print(f"{name} = {_masked(value)!r}")  # noqa: T201
