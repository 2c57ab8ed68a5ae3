"""Shared fixtures: real services (tests/fixtures/services.py), factories (tests/factories.py),
and one plugin module per kind of protocol server or process under test."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator

import pytest
import structlog

from uploader import log_limiter
from uploader.ops.logs import PER_TASK_LOGGERS, StdlibHandler

# local remotes of the tests write below the system temp dir (tmp_path), which a station would
# never allow (uploader/remotes/local_roots.py); processes the tests start inherit it
TEST_LOCAL_REMOTE_ROOTS = f"/mnt:/media:/srv:{tempfile.gettempdir()}"
os.environ.setdefault("SILVASONIC_LOCAL_REMOTE_ROOTS", TEST_LOCAL_REMOTE_ROOTS)

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
    """Commands under test configure logging for their process (structlog, and a handler on
    the root logger that writes to the command's stream); undo it after each test so log
    assertions elsewhere see the defaults and nothing writes to a closed stream."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in PER_TASK_LOGGERS)]
    levels = [lg.level for lg in loggers]
    log_limiter.clear()  # each test sees its failures logged as news
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)
    logging.captureWarnings(False)
