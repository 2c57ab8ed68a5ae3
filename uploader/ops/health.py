"""``/healthy`` as upstream's ``HealthMonitor`` serves it (docs/design/0012-upstream.md §4): 200
when every required component is healthy, 503 otherwise, JSON body
``{"status", "live", "components": {name: {"healthy", "details", "required"}}}``.

A remote that is down or misconfigured is reported with ``required=False``: the worker is
healthy while it can do its job, and a 503 would make the Controller recreate a healthy worker
in a loop (docs/design/0011-runtime.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Component:
    healthy: bool
    details: Any = ""
    required: bool = True


Check = Callable[[], Component]


class HealthMonitor:
    """Thread-safe component registry; the HTTP server and the heartbeat both read it.

    A component is either set (``update_status``) or, when its truth changes by itself with
    time (a consumer that went silent), a *check* evaluated at every snapshot, so ``/healthy``
    is never staler than the question asked of it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, Component] = {"init": Component(True, "starting up")}
        self._checks: dict[str, Check] = {}

    def update_status(
        self, component: str, is_healthy: bool, details: Any = "", *, required: bool = True
    ) -> None:
        with self._lock:
            self._components[component] = Component(is_healthy, details, required)

    def register_check(self, component: str, check: Check) -> None:
        """Evaluate ``check`` at every snapshot; it must be quick and must not raise."""
        with self._lock:
            self._checks[component] = check

    def remove(self, component: str) -> None:
        with self._lock:
            self._components.pop(component, None)
            self._checks.pop(component, None)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            current = dict(self._components)
            checks = list(self._checks.items())
        for name, check in checks:  # outside the lock: a check may take its own locks
            current[name] = check()
        components = {
            name: {"healthy": c.healthy, "details": c.details, "required": c.required}
            for name, c in current.items()
        }
        ok = all(c.healthy for c in current.values() if c.required)
        return {"status": "ok" if ok else "error", "live": True, "components": components}


class HealthServer:
    """``GET /healthy`` on a daemon thread; other paths 404."""

    def __init__(self, monitor: HealthMonitor, port: int, host: str = "127.0.0.1") -> None:
        self.monitor = monitor
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/healthy":
                    self.send_error(404)
                    return
                body = outer.monitor.snapshot()
                data = json.dumps(body).encode()
                self.send_response(200 if body["status"] == "ok" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
