"""``HealthMonitor`` status rules and a real ``HealthServer`` on 127.0.0.1 (docs/design/0012-upstream.md §4):
200 while every required component is healthy, 503 otherwise, 404 elsewhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from uploader.ops.health import HealthMonitor, HealthServer


@pytest.fixture
def monitor() -> HealthMonitor:
    return HealthMonitor()


@pytest.fixture
def server(monitor: HealthMonitor) -> Iterator[HealthServer]:
    srv = HealthServer(monitor, port=0, host="127.0.0.1")
    srv.start()
    yield srv
    srv.stop()


def _get(server: HealthServer, path: str) -> tuple[int, dict[str, Any] | None]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, None


# -- status rules -------------------------------------------------------------------------------


def test_starts_healthy_with_an_init_component(monitor: HealthMonitor) -> None:
    assert monitor.snapshot() == {
        "status": "ok",
        "live": True,
        "components": {"init": {"healthy": True, "details": "starting up", "required": True}},
    }


def test_unhealthy_required_component_is_an_error(monitor: HealthMonitor) -> None:
    monitor.update_status("database", False, "connection refused")
    snap = monitor.snapshot()
    assert snap["status"] == "error"
    assert snap["components"]["database"] == {
        "healthy": False,
        "details": "connection refused",
        "required": True,
    }


def test_unhealthy_optional_component_is_still_ok(monitor: HealthMonitor) -> None:
    # a remote that is down is reported, not fatal (docs/design/0011-runtime.md)
    monitor.update_status("remote", False, {"state": "unavailable"}, required=False)
    snap = monitor.snapshot()
    assert snap["status"] == "ok"
    assert snap["components"]["remote"]["required"] is False
    assert snap["components"]["remote"]["details"] == {"state": "unavailable"}


def test_recovery_and_removal(monitor: HealthMonitor) -> None:
    monitor.update_status("database", False)
    monitor.update_status("database", True, "ok")
    assert monitor.snapshot()["status"] == "ok"
    monitor.update_status("broker", False)
    monitor.remove("broker")
    monitor.remove("never-added")
    assert monitor.snapshot()["status"] == "ok"
    assert "broker" not in monitor.snapshot()["components"]


def test_snapshot_is_a_copy(monitor: HealthMonitor) -> None:
    snap = monitor.snapshot()
    snap["components"]["init"]["healthy"] = False
    assert monitor.snapshot()["status"] == "ok"


# -- the HTTP server ----------------------------------------------------------------------------


def test_healthy_returns_200_and_the_snapshot(server: HealthServer, monitor: HealthMonitor) -> None:
    monitor.update_status("remote", False, "down", required=False)
    status, body = _get(server, "/healthy")
    assert status == 200
    assert body == monitor.snapshot()


def test_unhealthy_returns_503_with_the_body(server: HealthServer, monitor: HealthMonitor) -> None:
    monitor.update_status("database", False, "connection refused")
    status, body = _get(server, "/healthy")
    assert status == 503
    assert body is not None and body["status"] == "error"
    assert body["components"]["database"]["details"] == "connection refused"


def test_server_follows_changes(server: HealthServer, monitor: HealthMonitor) -> None:
    monitor.update_status("database", False)
    assert _get(server, "/healthy")[0] == 503
    monitor.update_status("database", True)
    assert _get(server, "/healthy")[0] == 200


def test_query_string_is_ignored(server: HealthServer) -> None:
    assert _get(server, "/healthy?probe=podman")[0] == 200


@pytest.mark.parametrize("path", ["/", "/health", "/healthy/x", "/metrics"])
def test_other_paths_are_404(server: HealthServer, path: str) -> None:
    assert _get(server, path)[0] == 404


def test_port_zero_picks_a_free_port(server: HealthServer) -> None:
    assert server.port > 0
