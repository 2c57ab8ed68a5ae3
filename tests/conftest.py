"""Shared fixtures: real services (tests/fixtures/services.py), factories (tests/factories.py),
and one plugin module per kind of protocol server or process under test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.remote_servers",
    "tests.fixtures.stack",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test's folder names its marker, so a suite can be chosen with -m."""
    for item in items:
        path = str(item.fspath)
        for marker in ("unit", "integration", "system", "smoke"):
            if f"/tests/{marker}/" in path:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Commands under test configure structlog for their process; undo it after each test so
    log assertions elsewhere see structlog's defaults."""
    yield
    structlog.reset_defaults()
