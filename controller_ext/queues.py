"""The Redis keys of a remote's queue ``upload.<slug>``, and their removal when the remote's
worker is retired for good (deactivated, deleted, beyond ``max_uploaders``).

Plain redis-py, no Celery (controller_ext never imports it). The key names are kombu's Redis
transport layout (kombu 5.7, read from a real broker's keys): the list ``upload.<slug>``,
one list per priority ``upload.<slug>\\x06\\x16<prio>``, and the binding sets
``_kombu.binding.upload.<slug>`` and ``_kombu.binding_permanent.upload.<slug>``. Dropping the
messages loses nothing: the database is the record, and their leases expire and are claimed
again should the remote return.
"""

from __future__ import annotations

from typing import Any

import redis

from celeryconfig import upload_queue

PRIORITY_SEPARATOR = "\x06\x16"


def queue_name(slug: str) -> str:
    """The queue's name comes from ``celeryconfig`` (stdlib only), the one place that knows it."""
    return upload_queue(slug)


def queue_keys(slug: str) -> list[str]:
    """The fixed key names of queue ``upload.<slug>`` (priority lists are found by SCAN)."""
    name = queue_name(slug)
    return [name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}"]


def _priority_lists(client: redis.Redis[Any], slug: str) -> list[str | bytes]:
    # slugs are [a-z0-9-] (uploader.remotes.config), so the name holds no glob characters
    return list(client.scan_iter(match=f"{queue_name(slug)}{PRIORITY_SEPARATOR}*", count=100))


def queued_messages(client: redis.Redis[Any], slug: str) -> int:
    """Messages waiting in queue ``upload.<slug>``, over every priority list (the encodes wait
    in a list of their own, celeryconfig.STEP_PRIORITY)."""
    return sum(int(client.llen(key)) for key in [queue_name(slug), *_priority_lists(client, slug)])


def purge_queue_keys(client: redis.Redis[Any], slug: str) -> int:
    """Delete every key of queue ``upload.<slug>``; returns how many existed."""
    keys: list[str | bytes] = [*queue_keys(slug), *_priority_lists(client, slug)]
    return int(client.delete(*keys))
