"""The beat entries. Only one: the dispatcher's tick. Each message expires after one tick, so a
dispatcher that was down does not find a backlog of stale dispatches when it comes back."""

from __future__ import annotations

from typing import Any

import celeryconfig

SCHEDULE: dict[str, dict[str, Any]] = {
    "uploader-dispatch": {
        "task": "uploader.dispatch_pending",
        "schedule": celeryconfig.DISPATCH_TICK_S,
        "options": {"queue": celeryconfig.CONTROL_QUEUE, "expires": celeryconfig.DISPATCH_TICK_S},
    },
}
