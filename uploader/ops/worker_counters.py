"""Per-remote worker counters in Redis (``uploaded_count``, ``failed_count``, bytes,
``last_upload_at``): written by the prefork child that runs the tasks, read by the parent's
heartbeat, so they must not live in the child's memory (docs/design/0011-runtime.md).
Best effort: a Redis hiccup loses a count, never an upload (the audit table is the record)."""

from __future__ import annotations

import time
from typing import Any

import redis
import structlog

KEY = "silvasonic:uploader:counters:{slug}"
log = structlog.get_logger(__name__)


def record_success(client: redis.Redis[Any], slug: str, size_bytes: int) -> None:
    try:
        pipe = client.pipeline()
        key = KEY.format(slug=slug)
        pipe.hincrby(key, "uploaded_count", 1)
        pipe.hincrby(key, "bytes", size_bytes)
        pipe.hset(key, "last_upload_at", f"{time.time():.3f}")
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("counters.update_failed", remote=slug, error=type(exc).__name__)


def record_failure(client: redis.Redis[Any], slug: str) -> None:
    try:
        client.hincrby(KEY.format(slug=slug), "failed_count", 1)
    except redis.RedisError as exc:
        log.warning("counters.update_failed", remote=slug, error=type(exc).__name__)


def read(client: redis.Redis[Any], slug: str) -> dict[str, Any]:
    try:
        raw = client.hgetall(KEY.format(slug=slug))
    except redis.RedisError:
        raw = {}
    values = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    last = values.get("last_upload_at")
    return {
        "uploaded_count": int(values.get("uploaded_count", 0)),
        "failed_count": int(values.get("failed_count", 0)),
        "bytes_uploaded": int(values.get("bytes", 0)),
        "last_upload_at": float(last) if last is not None else None,
    }
